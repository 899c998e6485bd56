"""MES order service: one code base, two pools (operator UI, public API)."""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from flask import Flask, jsonify, redirect, url_for
from werkzeug.middleware.proxy_fix import ProxyFix

from .config import Settings
from .consistency import WriteTracker
from .errors import register_error_handlers
from .extensions import csrf, limiter, login_manager
from .key_cache import KeyCache
from .logs import configure_logging, init_request_logging
from .metrics import init_metrics
from .redis_client import Breaker, guarded_pool, make_redis
from .stale_status import CacheSettler, trace_status_writes
from .status_cache import StatusCache
from .tracing import init_tracing
from .reconnect import ReconnectingFlask
from .security_headers import init_security_headers
from .web import RowIdConverter, init_db


def create_app(settings: Settings | None = None, *, clock: Callable[[], float] = time.time) -> Flask:
    """Build the app for the pools named in settings (MES_POOLS): the table of contents of the service.
    `clock` (seconds since the epoch) is what session lifetimes are measured by; tests move it."""
    cfg = settings or Settings.from_env()
    pool = "+".join(cfg.pools)
    app = ReconnectingFlask(__name__)
    app.config.update(
        SECRET_KEY=cfg.secret_key,
        MAX_CONTENT_LENGTH=cfg.max_body_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=cfg.session_cookie_secure,
        SESSION_COOKIE_NAME=f"mes_{'_'.join(cfg.pools)}_session",
        # Flask refuses a cookie signed longer ago than this: a backstop under the operator session's
        # own idle and absolute limits (mes.operator.sessions), which are checked first.
        PERMANENT_SESSION_LIFETIME=timedelta(hours=cfg.session_lifetime_hours),
        RATELIMIT_STORAGE_URI=cfg.redis_url or "memory://",
        # Redis down must not turn into 5xx: count in memory until it is back (each process against its
        # share of the budget, mes.extensions.budget).
        RATELIMIT_SWALLOW_ERRORS=True,
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        # Two O(1) scripts per request (a weighted pair of counters) instead of moving-window's list of
        # one timestamp per request; bursts at a window edge stay bounded, unlike fixed-window, and
        # HAProxy's stick tables cap every key's rate before the app anyway.
        RATELIMIT_STRATEGY="sliding-window-counter",
        RATELIMIT_KEY_PREFIX="mes",
        WTF_CSRF_TIME_LIMIT=None,  # valid for the session: operators leave pages open for hours
        JSON_SORT_KEYS=False,
    )
    app.extensions["mes_settings"] = cfg
    app.extensions["mes_clock"] = clock
    # One breaker for every Redis client of this process: a failure seen by one spares the others.
    app.extensions["mes_redis_breaker"] = breaker = Breaker(cfg.redis_cooldown)
    if cfg.redis_url:
        # Counters under mes:limits:, beside the app's other keys: its Redis user may touch mes:* only.
        app.config["RATELIMIT_STORAGE_OPTIONS"] = {
            "connection_pool": guarded_pool(cfg.redis_url, timeout=cfg.redis_timeout, breaker=breaker),
            "key_prefix": "mes:limits"}
    if cfg.trusted_proxies:
        # The client's address for login throttling and logs, as HAProxy saw it.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=cfg.trusted_proxies, x_proto=cfg.trusted_proxies)
    app.url_map.converters["id"] = RowIdConverter
    configure_logging(cfg.log_level)
    init_db(app, cfg, pool)
    init_caches(app, cfg)
    init_request_logging(app, pool)  # first, so that every later hook and error has a request id
    init_tracing(app, app.extensions["mes_engine"], pool)
    # Before the blueprints: the latency histogram must also time requests that auth or limits refuse.
    app.extensions["mes_metrics"] = init_metrics(app, pool)
    register_blueprints(app, cfg.pools)  # before the limiter: the API authenticates first
    register_extensions(app)
    register_error_handlers(app)
    init_security_headers(app)
    return app


def register_blueprints(app: Flask, pools: tuple[str, ...]) -> None:
    from . import health

    app.register_blueprint(health.bp)
    if "public" in pools:
        from .api import bp as api_bp

        csrf.exempt(api_bp)  # bearer keys, no cookies: CSRF does not apply
        app.register_blueprint(api_bp)
    if "operator" in pools:
        from .operator import bp as operator_bp

        app.register_blueprint(operator_bp)

    @app.get("/")
    def index():
        if "operator" in pools:
            return redirect(url_for("operator.queue"))
        return jsonify(service="mes", api="/api/v1", openapi="/api/v1/openapi.yaml")


def init_caches(app: Flask, cfg: Settings) -> None:
    """The status cache and the read-your-writes tracker share one Redis client (none without REDIS_URL);
    status writes leave a trace in the database until the cache has them; the API key cache is this
    process's own."""
    app.extensions["mes_key_cache"] = KeyCache(ttl=cfg.api_key_cache_seconds)
    breaker = app.extensions["mes_redis_breaker"]
    client = make_redis(cfg.redis_url, timeout=cfg.redis_timeout, breaker=breaker)
    cache = app.extensions["mes_status_cache"] = StatusCache(client, ttl=cfg.status_cache_ttl)
    app.extensions["mes_cache_settler"] = CacheSettler(cache, breaker, interval=cfg.status_cache_settle_seconds)
    if cache.enabled:
        trace_status_writes(app.extensions["mes_sessionmaker"])
    app.extensions["mes_write_tracker"] = WriteTracker(
        client, enabled=cfg.read_your_writes and not cfg.is_sqlite)


def register_extensions(app: Flask) -> None:
    limiter.init_app(app)
    csrf.init_app(app)
    login_manager.init_app(app)
