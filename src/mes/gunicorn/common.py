"""Settings both pools share: JSON logs (no access log: the app logs each request once), multiprocess
Prometheus metrics, worker recycling.

Every value can be moved with an environment variable (GUNICORN_*), which is how the
local stack and the Ansible role render their per-host settings.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from gunicorn import glogging

from mes.logs import FORMAT


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def metrics_dir(pool: str) -> str:
    """Where workers write metric samples; set before any worker imports prometheus_client."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(
        tempfile.gettempdir(), f"mes-{pool.replace(',', '+')}-metrics")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def reset_metrics_dir(path: str) -> None:
    """Samples of a previous run would be added to this one's: start empty."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def child_exit(server, worker) -> None:
    from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)


class AppLogsOnly(glogging.Logger):
    """Gunicorn's logger without its access log: the app writes the one line per request itself
    (src/mes/logs.py), with the request id, the actor and the query string redacted."""

    def access(self, resp, req, environ, request_time):
        return None


LOGCONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    # The app's formatter: JSON, with secrets redacted from gunicorn's own messages too.
    "formatters": {"json": {"()": "mes.logs.RedactingJsonFormatter", **FORMAT}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
    "root": {"handlers": ["stdout"], "level": "INFO"},
    "loggers": {"gunicorn.error": {"handlers": ["stdout"], "level": "INFO", "propagate": False}},
}


def pool_settings(pool: str, *, bind: str, timeout: int, workers: int) -> dict:
    """The module-level names gunicorn reads, for one pool; the pool modules differ only in defaults."""
    metrics = metrics_dir(pool)

    def on_starting(server):
        reset_metrics_dir(metrics)

    return {
        "wsgi_app": f"mes.wsgi:create_pool_app('{pool}')",
        "bind": os.environ.get("GUNICORN_BIND", bind),
        # Sync workers handle one request each: HAProxy's per-server maxconn is this number.
        "workers": env_int("GUNICORN_WORKERS", workers),
        "timeout": env_int("GUNICORN_TIMEOUT", timeout),
        "graceful_timeout": env_int("GUNICORN_GRACEFUL_TIMEOUT", 20),
        "keepalive": env_int("GUNICORN_KEEPALIVE", 5),
        "max_requests": env_int("GUNICORN_MAX_REQUESTS", 5000),
        "max_requests_jitter": env_int("GUNICORN_MAX_REQUESTS", 5000) // 10,
        "proc_name": f"mes-{pool.replace(',', '+')}",
        "pidfile": os.environ.get("GUNICORN_PIDFILE") or None,
        "accesslog": None,
        "logger_class": AppLogsOnly,  # one line per request: the app's
        "logconfig_dict": LOGCONFIG,
        "raw_env": [f"MES_POOLS={pool}"],
        "on_starting": on_starting,
        "child_exit": child_exit,
    }
