"""JSON logs on stdout: one line per request, with a request id that travels in X-Request-ID, and
on every line written during a request its trace id and span id (mes.tracing).

Every line goes through `RedactingJsonFormatter`, so no secret reaches a log whatever logger wrote it
(ours, gunicorn's, werkzeug's, a traceback). Health probes and metric scrapes are logged only when they
fail or are slow: HAProxy and Prometheus poll every instance every few seconds, which would bury the
requests that matter.
"""
from __future__ import annotations

import logging
import re
import sys
import time
import uuid

from flask import Flask, Response, g, request
from pythonjsonlogger.json import JsonFormatter

from .redact import redact_query, redact_value
from .tracing import current_ids

log = logging.getLogger("mes.request")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PROBE_ENDPOINTS = frozenset({"health.live", "health.ready", "prometheus_metrics"})
SLOW_PROBE_MS = 1000.0  # a probe slower than this is worth a line: the instance is struggling
FORMAT = {"fmt": "{asctime}{levelname}{name}{message}", "style": "{",
          "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"}}


class RedactingJsonFormatter(JsonFormatter):
    """python-json-logger's formatter, with every field (message, extras, exc_info) redacted."""

    def add_fields(self, log_data, record, message_dict):
        super().add_fields(log_data, record, message_dict)
        # The trace of the request in progress (mes.tracing): a log line, the request's spans and its
        # SQL statements share one trace id, and HAProxy's line names it too.
        ids = current_ids()
        if ids is not None:
            log_data["trace_id"], log_data["span_id"] = ids

    def process_log_record(self, log_data):
        return {key: redact_value(value) for key, value in log_data.items()}


def should_log(endpoint: str | None, status: int, duration_ms: float, slow_ms: float = SLOW_PROBE_MS) -> bool:
    """Every request is logged, except a probe that succeeded in time."""
    if endpoint not in PROBE_ENDPOINTS:
        return True
    return not 200 <= status < 300 or duration_ms >= slow_ms


def configure_logging(level: str) -> None:
    """Route every logger (ours, gunicorn's, SQLAlchemy's warnings) to redacted JSON on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(RedactingJsonFormatter(**FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def init_request_logging(app: Flask, pool: str) -> None:
    @app.before_request
    def _start():
        g.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        # Only well-formed ids are trusted, so a client cannot inject text into our logs.
        g.request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex

    @app.after_request
    def _finish(response: Response) -> Response:
        duration_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers["Server-Timing"] = f"app;dur={duration_ms:.2f}"
        if not should_log(request.endpoint, response.status_code, duration_ms):
            return response
        actor = g.get("actor")
        log.info("request", extra={
            "request_id": g.get("request_id"),
            "pool": pool,
            "method": request.method,
            "rule": request.url_rule.rule if request.url_rule else None,
            "query": redact_query(request.query_string.decode("latin-1")) or None,
            "status": response.status_code,
            "duration_ms": round(duration_ms, 2),
            "client_id": actor.id if actor is not None and actor.kind == "client" else None,
            "operator_id": actor.id if actor is not None and actor.kind == "operator" else None,
            "remote_addr": request.remote_addr,
        })
        return response
