"""One more try of a request's database work when its connection died under it.

Pgpool-II drops the backend connections of its clients when a node is attached or detached (a replica
joins, a failover, a failback). `pool_pre_ping` catches a connection that died while it sat in the pool,
not one that dies between the ping and the next statement. Such a request is run once more on a fresh
connection when repeating it is safe: a read (GET, HEAD), or a write that carries an Idempotency-Key
(a repeat is answered from what the first attempt stored, if it committed). Any other request gets the
error, which errors.py answers with a 503 and Retry-After: the client decides.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, g, request
from sqlalchemy.exc import DBAPIError

from .web import db_session

T = TypeVar("T")
log = logging.getLogger(__name__)


def repeatable() -> bool:
    return request.method in ("GET", "HEAD") or bool(request.headers.get("Idempotency-Key"))


def once_more_if_connection_lost(work: Callable[[], T]) -> T:
    """work(), and once more after a rollback if its connection died. The session stays the same, so
    what it was told before (read from the primary: read-your-writes) still holds for the retry."""
    try:
        return work()
    except DBAPIError as err:
        if not err.connection_invalidated:
            raise
        log.warning("database connection lost; trying once more", extra={"request_id": g.get("request_id")})
        db_session().rollback()
        return work()


class ReconnectingFlask(Flask):
    """Flask whose views are run once more when their database connection died and they are repeatable."""

    def dispatch_request(self):
        if repeatable():
            return once_more_if_connection_lost(super().dispatch_request)
        return super().dispatch_request()
