"""The status-change feed: every committed event exactly once, in an order no late commit can break.

An event's id and time are taken while its transaction runs, not when it commits: the transaction
that took id 10 may commit after the one that took 11, and a reader in between (on a replica, for as
long as it lags) would move its cursor past 10 for good. Waiting a fixed time cannot close that gap.

So the position is (txid, id), txid being the writing transaction's id (`pg_current_xact_id()`,
the column's default), and a read hands out only events below the xmin of its own snapshot
(`pg_snapshot_xmin(pg_current_snapshot())`): every transaction below it has ended and every later
one gets a larger id, so that part of the feed never changes again. Chosen over a sequence stamped
at commit by a single writer because it needs no extra process and no lock on the write path, and
it holds wherever the statement runs: Pgpool-II balances it like any read (both functions are
stable), and a hot standby counts every transaction it has seen a trace of, and every lower id, as
running until it replays its end. Rows and horizon come from one statement, so one snapshot. The
price: the feed waits for the longest running write transaction.

SQLite (dev mode) has one writer at a time, so ids follow commit order; txid is 0 there, no horizon.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Text, cast, func, select, tuple_
from sqlalchemy.orm import Session

from ..domain import actors
from ..domain.actors import Actor
from ..domain.lifecycle import Status
from ..models import Order, OrderEvent, Shipment
from . import cursors
from .orders import Page

Position = tuple[int, int]  # (txid, id)
START: Position = (0, 0)


def cursor_of(event: OrderEvent) -> str:
    return cursors.encode(event.txid, event.id)


def position(after: str | None) -> Position:
    """Where a cursor points. A cursor of the old form (the last event's id) points among the events
    written before transaction ids were kept (txid 0), which were handed out in id order."""
    if not after:
        return START
    try:
        txid, event_id = cursors.decode(after, cursors.row_id, cursors.row_id)
        return txid, event_id
    except cursors.BadCursor:
        (event_id,) = cursors.decode(after, cursors.row_id)
        return 0, event_id


def _horizon(session: Session):
    """The lowest transaction id still running in this statement's snapshot (None: no limit)."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    return cast(cast(func.pg_snapshot_xmin(func.pg_current_snapshot()), Text), BigInteger)


def status_changes(session: Session, actor: Actor, *, after: str | None, limit: int) -> Page:
    """Events after the cursor, up to the visibility horizon; next_cursor is where the last one was
    (or the cursor given, when there is nothing new)."""
    last = position(after)
    stmt = (select(OrderEvent, Order.reference).join(Order, Order.id == OrderEvent.order_id)
            .where(tuple_(OrderEvent.txid, OrderEvent.id) > tuple_(*last)))
    if actor.kind == "client" and actor.scope is actors.Scope.PARTNER:
        stmt = stmt.where(OrderEvent.partner_id == actor.partner_id)
    horizon = _horizon(session)
    if horizon is not None:
        stmt = stmt.where(OrderEvent.txid < horizon)
    rows = list(session.execute(stmt.order_by(OrderEvent.txid, OrderEvent.id).limit(limit)))
    nxt = cursor_of(rows[-1][0]) if rows else cursors.encode(*last)
    return Page(rows, nxt)


def shipments_of_shipping(session: Session, events: list[OrderEvent]) -> dict[int, list[Shipment]]:
    """Event id -> the shipments its order had then, for each change to shipped in a page (those recorded
    with the change: later ones show in the order resource); one query per page."""
    shipping = [e for e in events if (e.kind or "status") == "status" and e.to_status == Status.SHIPPED.value]
    found: dict[int, list[Shipment]] = {e.id: [] for e in shipping}
    if not shipping:
        return found
    rows = list(session.scalars(select(Shipment).where(Shipment.order_id.in_({e.order_id for e in shipping}))
                                .order_by(Shipment.id)))
    for event in shipping:
        found[event.id] = [r for r in rows if r.order_id == event.order_id and r.created_at <= event.created_at]
    return found
