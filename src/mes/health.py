"""Liveness and readiness for the load balancer."""
from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import text

from .extensions import limiter
from .web import db_session

bp = Blueprint("health", __name__, url_prefix="/healthz")
limiter.exempt(bp)


@bp.get("/live")
def live():
    """The process answers; says nothing about its dependencies."""
    return jsonify(status="ok")


@bp.get("/ready")
def ready():
    """Ready when the database answers; HAProxy takes the instance out otherwise."""
    try:
        db_session().execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "do not send me traffic"
        response = jsonify(status="unavailable", database=type(exc).__name__)
        response.status_code = 503
        return response
    return jsonify(status="ok", database="ok")
