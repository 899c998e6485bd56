"""JSON logs on stdout: one line per request, with a request id that travels in X-Request-ID."""
from __future__ import annotations

import logging
import re
import sys
import time
import uuid

from flask import Flask, Response, g, request
from pythonjsonlogger.json import JsonFormatter

log = logging.getLogger("mes.request")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def configure_logging(level: str) -> None:
    """Route every logger (ours, gunicorn's, SQLAlchemy's warnings) to JSON on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                                       rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
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
        actor = g.get("actor")
        log.info("request", extra={
            "request_id": g.get("request_id"),
            "pool": pool,
            "method": request.method,
            "rule": request.url_rule.rule if request.url_rule else None,
            "status": response.status_code,
            "duration_ms": round(duration_ms, 2),
            "client_id": actor.id if actor is not None and actor.kind == "client" else None,
            "operator_id": actor.id if actor is not None and actor.kind == "operator" else None,
            "remote_addr": request.remote_addr,
        })
        return response
