"""The few request-scoped helpers every blueprint uses: settings, the DB session, today's date."""
from __future__ import annotations

from datetime import date

from flask import Flask, current_app, g
from sqlalchemy.orm import Session
from werkzeug.routing import IntegerConverter

from .config import Settings
from .db import make_engine, make_sessionmaker
from .models import utcnow
from .services.webhooks import capture_order_events


def settings() -> Settings:
    return current_app.extensions["mes_settings"]


def init_db(app: Flask, cfg: Settings, pool: str) -> None:
    """One engine per process; a session per request, closed when the request ends."""
    engine = make_engine(cfg.database_url, application_name=cfg.db_application_name or f"mes-{pool}",
                         pool_size=cfg.db_pool_size, max_overflow=cfg.db_max_overflow)
    app.extensions["mes_engine"] = engine
    factory = make_sessionmaker(engine, info={"promise_policy": cfg.promise_policy})
    app.extensions["mes_sessionmaker"] = factory
    capture_order_events(factory)  # every change partners hear of writes its webhooks' outbox

    @app.teardown_appcontext
    def _close_session(_exc):
        session = g.pop("db", None)
        if session is not None:
            session.close()


def db_session() -> Session:
    if "db" not in g:
        g.db = current_app.extensions["mes_sessionmaker"]()
    return g.db


def today() -> date:
    """The factory's calendar is UTC, the same as the stored timestamps."""
    return utcnow().date()


class RowIdConverter(IntegerConverter):
    """`<id:order_id>`: a positive 64-bit id; anything else is a plain 404, never a database error."""

    regex = r"[0-9]+"  # ASCII digits: werkzeug's \d also matches other scripts' digits (`٣`)

    def __init__(self, url_map):
        super().__init__(url_map, min=1, max=2**63 - 1)
