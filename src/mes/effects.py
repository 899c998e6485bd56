"""What follows a committed change, before it is acknowledged: the status cache (write-through),
the read-your-writes marker, and the business metrics. One place, so that the API and the
operator UI cannot drift apart."""
from __future__ import annotations

from flask import current_app, g

from .consistency import WriteTracker
from .domain.lifecycle import Status
from .metrics import business_metrics
from .models import Order
from .reconnect import retry_while_unavailable
from .services.holds import HoldChanged
from .services.orders import StatusChanged
from .stale_status import CacheSettler, entry_of
from .status_cache import StatusCache, StatusEntry
from .web import db_session


def status_cache() -> StatusCache:
    return current_app.extensions["mes_status_cache"]


def cache_settler() -> CacheSettler:
    return current_app.extensions["mes_cache_settler"]


def write_tracker() -> WriteTracker:
    return current_app.extensions["mes_write_tracker"]


def actor_key() -> str:
    return f"{g.actor.kind}:{g.actor.id}"


def cache_entry(order: Order) -> StatusEntry:
    return entry_of(order)


def order_created(body: dict) -> None:
    """`body` is the API's representation of the new order (what the client is answered)."""
    cache_settler().written(db_session(), StatusEntry(
        id=body["id"], partner_id=body["partner_id"], status=body["status"],
        status_version=body["status_version"], updated_at=body["updated_at"]))
    write_tracker().remember(db_session(), actor_key())
    metrics = business_metrics()
    metrics.orders_received.inc()
    metrics.transitions.labels(from_status="none", to_status=Status.RECEIVED.value).inc()


def status_changed(change: StatusChanged) -> None:
    order = change.order
    cache_settler().written(db_session(), cache_entry(order))
    write_tracker().remember(db_session(), actor_key())
    metrics = business_metrics()
    metrics.transitions.labels(from_status=change.previous.value, to_status=order.status).inc()
    if order.status == Status.SHIPPED.value and order.shipped_at is not None:
        metrics.order_shipped(order.created_at, order.shipped_at, order.promised_date)


def hold_changed(change: HoldChanged) -> None:
    """A hold or release is a new version of the order: the cache and the actor's next reads see it."""
    cache_settler().written(db_session(), cache_entry(change.order))
    write_tracker().remember(db_session(), actor_key())


def holder_changed() -> None:
    """A claim or release: no status change, but the actor's next page must show it."""
    write_tracker().remember(db_session(), actor_key())


def route_reads() -> None:
    """Before a request's reads: the primary for an actor whose last write is not replicated yet. It runs
    before the view (and outside the view's retries), and its question to the primary is a read: safe to
    repeat on a fresh connection whatever the request's method."""
    retry_while_unavailable(lambda: write_tracker().route(db_session(), actor_key()))
