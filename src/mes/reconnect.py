"""What a request does when the database is switching nodes.

During a failover or switchover (Patroni promotes a standby, HAProxy's endpoints follow it) and when
Pgpool-II drops its clients' backend connections, the app sees three kinds of errors: a connection
that died under it, a connection that cannot be made (no primary yet), and a node that is no longer
the primary (read-only). `unavailable()` recognises them all. A request that is safe to repeat (a read,
or a write that carries an Idempotency-Key: a repeat is answered from what the first attempt stored,
if it committed) is run again on a fresh connection after a short, bounded backoff. When that does not
help, or the request is not safe to repeat, errors.py answers 503 with Retry-After: the client decides.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, g, request
from sqlalchemy.exc import DBAPIError

from .web import db_session

T = TypeVar("T")
log = logging.getLogger(__name__)

# Pauses before each further attempt (seconds): about 1.5 s in all, so that a request outlives a
# dropped connection or a short switch, but never waits out a whole failover (the client is told to
# come back instead).
BACKOFF = (0.1, 0.4, 1.0)
# What a 503 tells the client: about the time a planned switchover takes, well inside a failover.
RETRY_AFTER_SECONDS = 2
# SQLSTATEs that mean "this node cannot serve you now", not "your request is wrong": connection
# exceptions (08), admin/crash shutdown and "cannot connect now" (57P01-57P03), too many connections
# (53300), read-only transaction on a node that was demoted (25006).
_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03", "53300", "25006")


def unavailable(err: BaseException) -> bool:
    """True when `err` says the database (or this connection to it) is unavailable, not that the
    statement was wrong."""
    if not isinstance(err, DBAPIError):
        return False
    if err.connection_invalidated:
        return True
    code = getattr(err.orig, "pgcode", None)
    if code is None:
        # No SQLSTATE: the failure came from the client library or from Pgpool-II before a backend
        # answered (refused connection, "unable to read data from DB node"): an OperationalError.
        return type(err.orig).__name__ == "OperationalError"
    return code.startswith("08") or code in _UNAVAILABLE_STATES


def repeatable() -> bool:
    return request.method in ("GET", "HEAD") or bool(request.headers.get("Idempotency-Key"))


def retry_while_unavailable(work: Callable[[], T]) -> T:
    """work(), and again after each pause of BACKOFF while the database is unavailable. The session
    stays the same (rolled back in between), so what it was told before (read from the primary:
    read-your-writes) still holds for the next attempt."""
    for pause in (*BACKOFF, None):
        try:
            return work()
        except DBAPIError as err:
            if pause is None or not unavailable(err):
                raise
            log.warning("database unavailable; trying again", extra={"request_id": g.get("request_id"),
                                                                       "retry_in_s": pause})
            db_session().rollback()
            time.sleep(pause)
    raise AssertionError("unreachable")


class ReconnectingFlask(Flask):
    """Flask whose repeatable views are run again while the database is unavailable."""

    def dispatch_request(self):
        if repeatable():
            return retry_while_unavailable(super().dispatch_request)
        return super().dispatch_request()
