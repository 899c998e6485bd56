"""Settings, read once from the environment; one place for every knob of the app.

Without DATABASE_URL the service runs on an embedded SQLite file with in-process
cache and rate-limit storage, so that `make dev` needs nothing else.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from datetime import timedelta

from .domain.forecast import Policy
from .domain.pay import PeriodRule, parse_period_rule
from .domain.webhooks import AddressPolicy, RetryPolicy

POOLS = ("operator", "public")


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _pools(value: str) -> tuple[str, ...]:
    pools = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = set(pools) - set(POOLS)
    if unknown or not pools:
        raise RuntimeError(f"MES_POOLS must name one or more of {POOLS}, got {value!r}")
    return pools


def _stage_days(value: str | None, defaults: dict[str, float]) -> dict[str, float]:
    """`queued=3,in_production=8`: the stages named override the defaults."""
    days = dict(defaults)
    for part in (value or "").split(","):
        if part.strip():
            stage, _, number = part.partition("=")
            if stage.strip() not in days:
                raise RuntimeError(f"MES_STAGE_NORM_DAYS names no stage {stage.strip()!r}; stages: {', '.join(days)}")
            days[stage.strip()] = float(number)
    return days


def _pay_period(value: str) -> str:
    try:
        parse_period_rule(value)
    except ValueError as err:
        raise RuntimeError(f"MES_PAY_PERIOD: {err}") from None
    return value


def _networks(value: str) -> tuple[str, ...]:
    """`127.0.0.1/32,10.1.0.0/16`: networks that webhooks may reach although they are not public."""
    networks = tuple(n.strip() for n in value.split(",") if n.strip())
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise RuntimeError(f"MES_WEBHOOK_ALLOWED_NETWORKS: {net!r} is not a network") from None
    return networks


def _retention_days(value: str, retry_hours: float) -> float:
    """Pruning a delivery that may still be retried would lose it: retention outlasts the retries."""
    days = float(value)
    if days * 24 <= retry_hours:
        raise RuntimeError(f"MES_WEBHOOK_RETENTION_DAYS must be longer than the retries "
                           f"(MES_WEBHOOK_RETRY_HOURS = {retry_hours:g}), got {value}")
    return days


def _retry_hours(value: str) -> float:
    """Partners are promised three days of retries: a shorter setting is a mistake."""
    hours = float(value)
    if hours < 72:
        raise RuntimeError(f"MES_WEBHOOK_RETRY_HOURS must be at least 72 (three days), got {value}")
    return hours


@dataclass
class Settings:
    """Typed view of the environment. Tests build one directly."""

    pools: tuple[str, ...] = POOLS
    database_url: str = "sqlite:///var/mes.db"
    # Migrations run as their own role with DDL rights; the app's role has none.
    migration_database_url: str | None = None
    app_db_role: str | None = None  # granted DML on migrated tables (PostgreSQL)
    # granted SELECT on the few columns the promise's exporter queries read (PostgreSQL; mes.migrate)
    monitor_db_role: str | None = None
    # the CRM's subscription role: SELECT on the published columns (mes.crm_contract; PostgreSQL; mes.migrate)
    crm_replication_role: str | None = None
    db_application_name: str | None = None
    db_pool_size: int = 5
    # Connections a process may open beyond db_pool_size (None: as many again). Pool size + overflow is
    # the most a process ever holds: what the Pgpool-II reserve for operators is sized from.
    db_max_overflow: int | None = None
    redis_url: str | None = None
    # A hung or unreachable Redis costs a request at most this long (connect, or one reply) ...
    redis_timeout: float = 0.25
    # ... and after a failure every Redis client of the process skips Redis this long (mes.redis_client).
    redis_cooldown: float = 2.0
    # Worker processes of the whole pool (instances x workers): while Redis is unreachable each one counts
    # rate limits in its own memory against its share of the budget.
    pool_processes: int = 1
    status_cache_ttl: int = 86400
    # Each process looks for status writes the cache missed (mes.stale_status) at least this often.
    status_cache_settle_seconds: float = 1.0
    # Per worker, API key -> client is remembered this long: a revoked key may work this much longer.
    api_key_cache_seconds: float = 5.0
    # Behind Pgpool-II with replicas: an actor's reads go to the primary until its write is replicated.
    read_your_writes: bool = False
    secret_key: str = field(default_factory=lambda: secrets.token_hex(32))
    promise_lead_days: int = 21
    # An open order is at risk when its projected finish falls within this many days of its promised
    # date, or after it (mes.domain.forecast).
    promise_margin_days: int = 1
    # How often the scheduler refreshes every open order's promise, and relearns the stage norms.
    promise_recompute_seconds: int = 300
    norms_recompute_seconds: int = 6 * 3600
    # Median days per stage until the factory has history of its own (mes.domain.forecast.default_norms).
    stage_norm_days: dict[str, float] = field(default_factory=lambda: {
        "received": 0.5, "queued": 3.0, "in_production": 8.0, "quality_check": 1.5, "packed": 1.5})
    max_body_bytes: int = 64 * 1024
    idempotency_retention_hours: int = 48
    rate_limits: dict[str, str] = field(
        default_factory=lambda: {"standard": "600/minute", "bulk": "3000/minute", "crm": "6000/minute"}
    )
    login_limit: str = "5/minute"
    # An operator's session ends after this long without a request, and this long after logging in
    # whatever happens: a shift, with a break in it.
    session_idle_minutes: float = 30.0
    session_lifetime_hours: float = 12.0
    session_cookie_secure: bool = False
    # Pay periods of the piece-rate ledger (mes.domain.pay.parse_period_rule): weekly, weekly:<first day>,
    # biweekly:<first day>, semimonthly or monthly.
    pay_period: str = "weekly"
    # The operator queue reloads itself this often (0: never), unless someone is typing into it.
    queue_refresh_seconds: int = 60
    log_level: str = "INFO"
    # How many proxies (HAProxy) stand in front and set X-Forwarded-For; 0 when clients connect directly.
    trusted_proxies: int = 0
    # Webhooks (mes.webhook_worker): https only unless allowed; no private, loopback or link-local address
    # unless inside one of these networks (CIDR, comma-separated in MES_WEBHOOK_ALLOWED_NETWORKS).
    webhook_allow_http: bool = False
    webhook_allowed_networks: tuple[str, ...] = ()
    webhook_connect_timeout: float = 3.0
    webhook_read_timeout: float = 10.0
    webhook_excerpt_bytes: int = 4096  # of a response body, kept in the delivery log
    # Retries: a random wait up to min(cap, base * 2^n) (full jitter), until the event is this old.
    webhook_backoff_base_seconds: float = 30.0
    webhook_backoff_cap_seconds: float = 6 * 3600.0
    webhook_retry_hours: float = 72.0
    # After a rotation the previous secret signs too for this long.
    webhook_secret_overlap_hours: float = 24.0
    webhook_batch: int = 20  # deliveries a worker claims at once, and sends at once
    webhook_endpoint_batch: int = 5  # at most this many of them for one endpoint
    # The outbox keeps every event this long (longer than the retries), so that a range can be replayed,
    # then the scheduler prunes finished ones, in batches of this many events, each its own transaction.
    webhook_retention_days: float = 30.0
    webhook_prune_batch: int = 1000
    # A range replay spans at most this many days and queues at most this many deliveries (more: refused).
    webhook_replay_max_days: float = 7.0
    webhook_replay_max_events: int = 10000
    webhook_poll_seconds: float = 1.0  # a worker's pause when nothing is due

    @property
    def idempotency_retention(self) -> timedelta:
        """How long idempotency keys are kept: the setting, but never under a day (retries come later)."""
        return timedelta(hours=max(24, self.idempotency_retention_hours))

    @property
    def promise_policy(self) -> Policy:
        return Policy(margin_days=self.promise_margin_days, default_days=dict(self.stage_norm_days))

    @property
    def pay_period_rule(self) -> PeriodRule:
        return parse_period_rule(self.pay_period)

    @property
    def webhook_address_policy(self) -> AddressPolicy:
        return AddressPolicy(allow_http=self.webhook_allow_http, allowed_networks=self.webhook_allowed_networks)

    @property
    def webhook_retention(self) -> timedelta:
        return timedelta(days=self.webhook_retention_days)

    @property
    def webhook_retry_policy(self) -> RetryPolicy:
        return RetryPolicy(base=timedelta(seconds=self.webhook_backoff_base_seconds),
                           cap=timedelta(seconds=self.webhook_backoff_cap_seconds),
                           give_up_after=timedelta(hours=self.webhook_retry_hours))

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls) -> "Settings":
        defaults = cls()
        limits = dict(defaults.rate_limits)  # tiers beyond these come from MES_RATE_LIMIT_<TIER>
        limits.update({name.removeprefix("MES_RATE_LIMIT_").lower(): value for name, value in os.environ.items()
                       if name.startswith("MES_RATE_LIMIT_") and value})
        secret = _env("SECRET_KEY")
        database_url = _env("DATABASE_URL", defaults.database_url)
        if secret is None and not database_url.startswith("sqlite"):
            # Several gunicorn workers must share one key or sessions break between them.
            raise RuntimeError("SECRET_KEY must be set when DATABASE_URL points to a server")
        retry_hours = _retry_hours(_env("MES_WEBHOOK_RETRY_HOURS", str(defaults.webhook_retry_hours)))
        return cls(
            pools=_pools(_env("MES_POOLS", ",".join(POOLS))),
            database_url=database_url,
            migration_database_url=_env("MIGRATION_DATABASE_URL"),
            app_db_role=_env("MES_APP_DB_ROLE"),
            monitor_db_role=_env("MES_MONITOR_DB_ROLE"),
            crm_replication_role=_env("MES_CRM_REPLICATION_ROLE"),
            db_application_name=_env("MES_DB_APPLICATION_NAME"),
            db_pool_size=int(_env("MES_DB_POOL_SIZE", "5")),
            db_max_overflow=None if _env("MES_DB_MAX_OVERFLOW") is None else int(_env("MES_DB_MAX_OVERFLOW")),
            redis_url=_env("REDIS_URL"),
            redis_timeout=float(_env("MES_REDIS_TIMEOUT", str(defaults.redis_timeout))),
            redis_cooldown=float(_env("MES_REDIS_COOLDOWN", str(defaults.redis_cooldown))),
            pool_processes=int(_env("MES_POOL_PROCESSES", str(defaults.pool_processes))),
            status_cache_ttl=int(_env("MES_STATUS_CACHE_TTL", "86400")),
            status_cache_settle_seconds=float(_env("MES_STATUS_CACHE_SETTLE_SECONDS",
                                                   str(defaults.status_cache_settle_seconds))),
            api_key_cache_seconds=float(_env("MES_API_KEY_CACHE_SECONDS", str(defaults.api_key_cache_seconds))),
            read_your_writes=_env("MES_READ_YOUR_WRITES", "0") == "1",
            secret_key=secret or defaults.secret_key,
            promise_lead_days=int(_env("MES_PROMISE_LEAD_DAYS", "21")),
            promise_margin_days=int(_env("MES_PROMISE_MARGIN_DAYS", str(defaults.promise_margin_days))),
            promise_recompute_seconds=int(_env("MES_PROMISE_RECOMPUTE_SECONDS",
                                               str(defaults.promise_recompute_seconds))),
            norms_recompute_seconds=int(_env("MES_NORMS_RECOMPUTE_SECONDS", str(defaults.norms_recompute_seconds))),
            stage_norm_days=_stage_days(_env("MES_STAGE_NORM_DAYS"), defaults.stage_norm_days),
            max_body_bytes=int(_env("MES_MAX_BODY_BYTES", str(defaults.max_body_bytes))),
            idempotency_retention_hours=int(_env("MES_IDEMPOTENCY_RETENTION_HOURS", "48")),
            rate_limits=limits,
            login_limit=_env("MES_LOGIN_LIMIT", defaults.login_limit),
            session_idle_minutes=float(_env("MES_SESSION_IDLE_MINUTES", str(defaults.session_idle_minutes))),
            session_lifetime_hours=float(_env("MES_SESSION_LIFETIME_HOURS", str(defaults.session_lifetime_hours))),
            session_cookie_secure=_env("MES_SECURE_COOKIES", "0") == "1",
            queue_refresh_seconds=int(_env("MES_QUEUE_REFRESH_SECONDS", str(defaults.queue_refresh_seconds))),
            pay_period=_pay_period(_env("MES_PAY_PERIOD", defaults.pay_period)),
            log_level=_env("LOG_LEVEL", "INFO"),
            trusted_proxies=int(_env("MES_TRUSTED_PROXIES", "0")),
            webhook_allow_http=_env("MES_WEBHOOK_ALLOW_HTTP", "0") == "1",
            webhook_allowed_networks=_networks(_env("MES_WEBHOOK_ALLOWED_NETWORKS", "")),
            webhook_connect_timeout=float(_env("MES_WEBHOOK_CONNECT_TIMEOUT", str(defaults.webhook_connect_timeout))),
            webhook_read_timeout=float(_env("MES_WEBHOOK_READ_TIMEOUT", str(defaults.webhook_read_timeout))),
            webhook_excerpt_bytes=int(_env("MES_WEBHOOK_EXCERPT_BYTES", str(defaults.webhook_excerpt_bytes))),
            webhook_backoff_base_seconds=float(_env("MES_WEBHOOK_BACKOFF_BASE_SECONDS",
                                                    str(defaults.webhook_backoff_base_seconds))),
            webhook_backoff_cap_seconds=float(_env("MES_WEBHOOK_BACKOFF_CAP_SECONDS",
                                                   str(defaults.webhook_backoff_cap_seconds))),
            webhook_retry_hours=retry_hours,
            webhook_secret_overlap_hours=float(_env("MES_WEBHOOK_SECRET_OVERLAP_HOURS",
                                                    str(defaults.webhook_secret_overlap_hours))),
            webhook_batch=int(_env("MES_WEBHOOK_BATCH", str(defaults.webhook_batch))),
            webhook_endpoint_batch=int(_env("MES_WEBHOOK_ENDPOINT_BATCH", str(defaults.webhook_endpoint_batch))),
            webhook_poll_seconds=float(_env("MES_WEBHOOK_POLL_SECONDS", str(defaults.webhook_poll_seconds))),
            webhook_retention_days=_retention_days(_env("MES_WEBHOOK_RETENTION_DAYS",
                                                        str(defaults.webhook_retention_days)), retry_hours),
            webhook_prune_batch=int(_env("MES_WEBHOOK_PRUNE_BATCH", str(defaults.webhook_prune_batch))),
            webhook_replay_max_days=float(_env("MES_WEBHOOK_REPLAY_MAX_DAYS", str(defaults.webhook_replay_max_days))),
            webhook_replay_max_events=int(_env("MES_WEBHOOK_REPLAY_MAX_EVENTS",
                                               str(defaults.webhook_replay_max_events))),
        )
