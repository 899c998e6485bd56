"""The status-change feed: every committed event exactly once, in an order no late commit can break.

An event's id (a sequence) and its time are taken while its transaction runs, not when it commits: a
transaction that took id 10 may commit after the one that took id 11. A reader in between sees 11,
and a cursor at 11 would skip 10 for good. A replica makes the gap as long as its lag, which is why
waiting a fixed time (the old settle window) could not close it.

So the feed's position is (txid, id), where txid is the id of the writing transaction
(`pg_current_xact_id()`, the column's default), and a read hands out only events whose txid lies
below the xmin of its own snapshot (`pg_snapshot_xmin(pg_current_snapshot())`): every transaction
below that horizon has ended, and every transaction that starts later gets a larger id, so the set
of events below it never grows again. The cursor can move past them safely; events above it wait
for a later poll. Why this and not a sequence stamped at commit by one writer: it needs no extra
process or lock on the write path, and it holds wherever the statement runs. Pgpool-II balances it
like any read (both functions are stable, not volatile), and on a hot standby the snapshot counts
every transaction the standby has seen a trace of, and every lower id, as running until it reads
its end in the WAL, so a lagging replica holds events back rather than skipping them. Rows and
horizon come from one statement, hence one snapshot. The price: the feed waits for the longest
running write transaction, and events come grouped by transaction rather than strictly by id.

SQLite (the dev mode) has one writer at a time, so ids are taken in commit order; txid is 0 there
and the horizon is unlimited.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Text, cast, func, select, tuple_
from sqlalchemy.orm import Session

from ..domain import actors
from ..domain.actors import Actor
from ..models import Order, OrderEvent
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
