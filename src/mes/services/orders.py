"""Order use cases: create (idempotent), change status, claim, and the reads behind the queue and the API."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from ..db import begin_write
from ..domain import actors, cancel, inputs
from ..domain.actors import Actor, OrderFacts
from ..domain.errors import AlreadyClaimed, Conflict, Forbidden, NotFound, ReferenceConflict, VersionConflict
from ..domain.forecast import check_late_reason, promise_of
from ..domain.holds import EventKind, HoldState, check_move_while_held, closed
from ..domain.reason_codes import Kind
from ..domain.scan import Scan, like_prefix
from ..domain.lifecycle import OPEN_STATUSES, Status, check_transition
from ..domain.priority import Priority
from ..domain.promises import promised_date
from ..models import FloorEvent, IdempotencyRecord, Operator, Order, OrderEvent, StatusCount, utcnow
from . import answers, cursors, forecast, reason_codes


def facts(order: Order) -> OrderFacts:
    return OrderFacts(status=Status(order.status), partner_id=order.partner_id, holder_id=order.holder_id)


def get_order(session: Session, actor: Actor, order_id: int, *, for_update: bool = False) -> Order:
    """The order if this actor may see it; another partner's order is as missing as a missing one."""
    stmt = select(Order).where(Order.id == order_id)
    if for_update:
        stmt = stmt.with_for_update(of=Order)
    order = session.scalar(stmt)
    if order is None or not actors.sees_order(actor, facts(order)):
        raise NotFound(f"Order {order_id} does not exist.")
    return order


def _bump_counts(session: Session, old: str | None, new: str) -> None:
    if old is not None:
        session.execute(update(StatusCount).where(StatusCount.status == old).values(count=StatusCount.count - 1))
    session.execute(update(StatusCount).where(StatusCount.status == new).values(count=StatusCount.count + 1))


# ----------------------------------------------------------------------------------------------- create
@dataclass
class NewOrder:
    reference: str
    product: str
    material: str
    quantity: int
    notes: str | None = None
    priority: Priority = Priority.NORMAL
    promised_date: date | None = None


@dataclass
class CreateResult:
    status: int
    body: dict
    replayed: bool
    order_id: int


def create_order(session: Session, actor: Actor, new: NewOrder, *, idempotency_key: str, fingerprint: str,
                 lead_days: int, render: Callable[[Order], dict]) -> CreateResult:
    """Create an order once per Idempotency-Key; a retry gets the first answer back.

    The key's row is inserted first, in the same transaction as the order: a concurrent
    request with the same key waits on it (PostgreSQL's unique index, SQLite's write lock)
    and then replays the committed answer instead of creating a second order.
    """
    actors.may_create_orders(actor)
    begin_write(session)
    try:
        earlier = answers.stored(session, actor.id, idempotency_key, fingerprint)
        if earlier is not None:
            return _replayed(earlier)
        record = answers.remember(session, actor.id, idempotency_key, fingerprint)
        try:
            session.flush()
        except IntegrityError:
            session.rollback()  # a concurrent request with this key committed first: replay its answer
            return _replayed(answers.stored(session, actor.id, idempotency_key, fingerprint))
        order = _insert_order(session, actor, new, lead_days)
        body = render(order)
        record.response_status, record.response_body, record.order_id = 201, json.dumps(body), order.id
        session.commit()
        return CreateResult(201, body, False, order.id)
    finally:
        session.rollback()  # no-op after commit; ends the read transaction of a replay or an error


def _insert_order(session: Session, actor: Actor, new: NewOrder, lead_days: int) -> Order:
    now = utcnow()
    order = Order(partner_id=actor.partner_id, reference=new.reference, product=new.product,
                  material=new.material, quantity=new.quantity, notes=new.notes, priority=int(new.priority),
                  promised_date=promised_date(now.date(), lead_days, new.promised_date),
                  status=Status.RECEIVED.value, status_version=1, created_at=now, updated_at=now,
                  stage_entered_at=now, stage_hold_base=0)
    try:
        with session.begin_nested():  # a savepoint, so that a duplicate reference leaves the rest intact
            session.add(order)
            session.flush()
    except IntegrityError:
        existing = session.scalar(select(Order.id).where(Order.partner_id == actor.partner_id,
                                                         Order.reference == new.reference))
        raise ReferenceConflict(f"Reference {new.reference!r} is already used by order {existing}.",
                                existing_order_id=existing) from None
    move = forecast.refresh(session, order, now)
    session.add(forecast.stamp(OrderEvent(order_id=order.id, partner_id=order.partner_id, from_status=None,
                                          to_status=order.status, status_version=1, actor=actor.label,
                                          created_at=now), move))
    _bump_counts(session, None, order.status)
    return order


def _replayed(earlier: answers.Stored | None) -> CreateResult:
    if earlier is None:  # the other request rolled back after we collided: the client may retry
        raise Conflict("A request with this Idempotency-Key was in flight and failed; retry it.")
    return CreateResult(earlier.status, earlier.body, True, earlier.order_id)


def purge_idempotency_keys(session: Session, older_than: timedelta) -> int:
    """Forget keys past their retention (at least 24 h is promised to clients)."""
    cutoff = utcnow() - older_than
    result = session.execute(IdempotencyRecord.__table__.delete().where(IdempotencyRecord.created_at < cutoff))
    session.commit()
    return result.rowcount


# ----------------------------------------------------------------------------------------------- changes
@dataclass
class StatusChanged:
    order: Order
    previous: Status


def change_status(session: Session, actor: Actor, order_id: int, target: Status, *,
                  reason: str | None = None, expected_version: int | None = None,
                  late_reason_id: int | None = None, cancel_reason_id: int | None = None,
                  note: str | None = None,
                  before_commit: Callable[[Order], None] | None = None) -> StatusChanged:
    """Move an order along the lifecycle; the row lock makes concurrent changes queue, and the
    loser sees either the new status (invalid transition) or a newer version (version conflict).
    An operator moving an order at risk or late says why, once per at-risk spell (the late reason);
    a supervisor cancelling one chooses a cancel reason, with an internal `note` (mes.domain.cancel).
    `before_commit` adds its rows to the change's own transaction (the API's idempotency record)."""
    begin_write(session)
    try:
        order = get_order(session, actor, order_id, for_update=True)
        current = Status(order.status)
        if expected_version is not None and order.status_version != expected_version:
            raise VersionConflict(
                f"Order {order_id} changed meanwhile: it is now {current.value!r} (version {order.status_version}).",
                current_status=current.value, status_version=order.status_version)
        check_transition(current, target, reason)
        actors.require_move(actor, facts(order), target)
        hold = state_of(order)
        check_move_while_held(hold, target, order.hold_reason.label if order.hold_reason else None)
        code, text = None, None
        if cancel.reason_owed(actor, target):
            cancel.check_reason_given(cancel_reason_id)
            code = reason_codes.choosable(session, Kind.CANCEL, cancel_reason_id)
            text = cancel.parse_note(note, required=code.requires_note)
        if actor.kind == "operator" and target is not Status.CANCELLED and check_late_reason(
                promise_of(order.promise_status), recorded=order.late_reason_id is not None,
                given=late_reason_id is not None):
            code = reason_codes.choosable(session, Kind.LATE, late_reason_id)
            order.late_reason_id = code.id
        now = utcnow()
        if hold.on_hold:  # a cancelled order is held no more: its hold time stops counting
            end_hold(order, now)
        order.status, order.status_version, order.updated_at = target.value, order.status_version + 1, now
        order.stage_entered_at, order.stage_hold_base = now, order.hold_seconds or 0
        if target is Status.SHIPPED:
            order.shipped_at = now
        if target is Status.DELIVERED:
            order.delivered_at, order.delivered_by = now, actor.label
        if target in (Status.DELIVERED, Status.CANCELLED) and order.holder_id is not None:
            # Nothing is left to do on it: it leaves its holder's work.
            _floor_event(session, order, order.holder_id, actor, "release", now)
            order.holder_id = None
        move = forecast.refresh(session, order, now)
        session.add(forecast.stamp(OrderEvent(
            order_id=order.id, partner_id=order.partner_id, from_status=current.value, to_status=target.value,
            status_version=order.status_version, actor=actor.label,
            operator_id=actor.id if actor.kind == "operator" else None, reason=(reason or "").strip() or None,
            reason_code=code, note=text, created_at=now), move))
        _bump_counts(session, current.value, target.value)
        if before_commit is not None:
            before_commit(order)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return StatusChanged(order, current)


def state_of(order: Order) -> HoldState:
    """The row's hold as the domain rules see it."""
    return HoldState(since=order.hold_since, earlier_seconds=order.hold_seconds or 0)


def end_hold(order: Order, now: datetime) -> None:
    """Close the running hold on the row (a release, or a cancellation that ends it for good)."""
    after = closed(state_of(order), now)
    order.hold_since, order.hold_reason, order.hold_seconds = None, None, after.earlier_seconds


def claim(session: Session, actor: Actor, order_id: int) -> Order:
    """Take an unheld order; of two operators who click at once, exactly one wins."""
    begin_write(session)
    order = get_order(session, actor, order_id)
    if not actors.may_claim(actor, facts(order)) and order.holder_id is None:
        session.rollback()
        raise Forbidden(f"Order {order_id} is {order.status} and cannot be claimed.")
    won = session.execute(
        update(Order).where(Order.id == order_id, Order.holder_id.is_(None),
                            Order.status.in_([s.value for s in OPEN_STATUSES + (Status.SHIPPED,)]))
        .values(holder_id=actor.id)
        .execution_options(synchronize_session=False)
    ).rowcount == 1
    if won:
        _floor_event(session, order, actor.id, actor, "claim", utcnow())
    session.commit()
    session.refresh(order)
    if not won:
        holder = session.get(Operator, order.holder_id) if order.holder_id else None
        who = "you" if order.holder_id == actor.id else (holder.display_name if holder else "someone else")
        raise AlreadyClaimed(f"Order {order_id} is already held by {who}.", holder=who)
    return order


def release(session: Session, actor: Actor, order_id: int) -> Order:
    """Give a held order back to the pool (its holder, or a supervisor)."""
    begin_write(session)
    order = get_order(session, actor, order_id)
    if not actors.may_release(actor, facts(order)):
        session.rollback()
        raise Forbidden(f"Only the holder of order {order_id} or a supervisor may release it.")
    stmt = update(Order).where(Order.id == order_id, Order.holder_id == order.holder_id).values(holder_id=None)
    holder_id = order.holder_id
    done = session.execute(stmt.execution_options(synchronize_session=False)).rowcount == 1
    if done and holder_id is not None:
        _floor_event(session, order, holder_id, actor, "release", utcnow())
    session.commit()
    session.refresh(order)
    if not done:
        raise AlreadyClaimed(f"Order {order_id} changed hands meanwhile.")
    return order


def reassign(session: Session, actor: Actor, order_id: int, operator_id: int) -> Order:
    """A supervisor gives an open order to another active operator (whoever held it before)."""
    actors.require_supervisor(actor, "reassign orders")
    begin_write(session)
    try:
        order = get_order(session, actor, order_id, for_update=True)
        if Status(order.status) not in OPEN_STATUSES + (Status.SHIPPED,):
            raise Conflict(f"Order {order_id} is {order.status}: there is nothing left to assign.")
        target = session.get(Operator, operator_id)
        if target is None or not target.active:
            raise NotFound("No active operator has that id.")
        if order.holder_id == target.id:
            raise Conflict(f"{target.display_name} holds order {order_id} already.")
        order.holder_id = target.id
        _floor_event(session, order, target.id, actor, "reassign", utcnow())
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return order


def _floor_event(session: Session, order: Order, operator_id: int, actor: Actor, action: str, now) -> None:
    """Who holds the order, in its floor history (never in the partners' feed)."""
    session.add(FloorEvent(order_id=order.id, operator_id=operator_id,
                           by_id=actor.id if actor.kind == "operator" else None, action=action, created_at=now))


def floor_history(session: Session, order_id: int) -> list[FloorEvent]:
    return list(session.scalars(select(FloorEvent).where(FloorEvent.order_id == order_id).order_by(FloorEvent.id)))


def history(session: Session, order_id: int) -> list[OrderEvent]:
    return list(session.scalars(select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)))


# ----------------------------------------------------------------------------------------------- queue
QUEUE_OPEN = "open"
QUEUE_ALL = "all"
SORT_PROMISED, SORT_URGENT, SORT_PROJECTED = "promised", "urgent", "projected"
HOLDER_UNCLAIMED, HOLDER_MINE = "unclaimed", "mine"


@dataclass
class QueueQuery:
    status: str = QUEUE_OPEN  # a Status value, "open" or "all"
    overdue_only: bool = False
    on_hold_only: bool = False
    hold_reason_id: int | None = None  # held for this reason (implies on hold)
    promise: str | None = None  # open orders with this promise status (mes.domain.forecast.OPEN_PROMISES)
    sort: str = "promised"  # "urgent": priority first; "projected": open orders by projected finish, latest first
    search: str | None = None
    after: str | None = None  # cursor of the last row seen (the next page)
    before: str | None = None  # cursor of the first row seen (the previous page)
    holder: str | None = None  # "unclaimed", or "mine" (held by holder_id)
    holder_id: int | None = None
    limit: int = 50


def _as_order_id(term: str) -> int | None:
    """The search term as an order id, when it is one (a reference may be all digits too)."""
    try:
        return inputs.parse_row_id(term)
    except ValueError:
        return None


@dataclass
class Page:
    items: list
    next_cursor: str | None
    previous_cursor: str | None = None


@dataclass(frozen=True)
class Keyset:
    """A queue order: its columns (all one direction), how its cursor is read and written."""

    columns: tuple
    descending: bool
    fields: tuple
    key: Callable[[Order], tuple]


QUEUE_ORDERS = {
    # ix_orders_open_queue / ix_orders_status_queue / ix_orders_promised_queue
    SORT_PROMISED: Keyset((Order.promised_date, Order.priority, Order.id), False,
                          (cursors.day, cursors.priority, cursors.row_id),
                          lambda o: (o.promised_date.isoformat(), o.priority, o.id)),
    # ix_orders_urgent_queue: urgent first, then by promised date
    SORT_URGENT: Keyset((Order.priority, Order.promised_date, Order.id), False,
                        (cursors.priority, cursors.day, cursors.row_id),
                        lambda o: (o.priority, o.promised_date.isoformat(), o.id)),
    # ix_orders_projected_queue: the orders furthest behind on top
    SORT_PROJECTED: Keyset((Order.projected_finish, Order.id), True, (cursors.instant, cursors.row_id),
                           lambda o: (o.projected_finish.isoformat(), o.id)),
}


def keyset_page(session: Session, stmt, keyset: Keyset, after: str | None, before: str | None, limit: int) -> Page:
    """One page after a cursor (or before one, for the previous page): one index range, no OFFSET."""
    key = tuple_(*keyset.columns)
    forward = before is None
    if after:
        mark = tuple_(*cursors.decode(after, *keyset.fields))
        stmt = stmt.where(key < mark if keyset.descending else key > mark)
    if before:
        mark = tuple_(*cursors.decode(before, *keyset.fields))
        stmt = stmt.where(key > mark if keyset.descending else key < mark)
    descending = keyset.descending == forward  # read away from the cursor
    rows = list(session.scalars(stmt.order_by(*(c.desc() if descending else c.asc() for c in keyset.columns))
                                .limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    if not forward:
        rows.reverse()
    if not rows:
        return Page([], None, None)
    has_next, has_previous = (more, after is not None) if forward else (True, more)
    return Page(rows, cursors.encode(*keyset.key(rows[-1])) if has_next else None,
                cursors.encode(*keyset.key(rows[0])) if has_previous else None)


def operator_queue(session: Session, q: QueueQuery, today: date) -> Page:
    """Open orders by promised date, then priority: each page is one index range (keyset, no OFFSET)."""
    stmt = select(Order)
    if q.status == QUEUE_OPEN:
        stmt = stmt.where(Order.status.in_([s.value for s in OPEN_STATUSES]))
    elif q.status != QUEUE_ALL:
        stmt = stmt.where(Order.status == Status(q.status).value)
    if q.overdue_only:
        stmt = stmt.where(Order.promised_date < today,
                          Order.status.in_([s.value for s in OPEN_STATUSES]))
    if q.on_hold_only or q.hold_reason_id is not None:
        stmt = stmt.where(Order.hold_since.is_not(None))  # its own partial index, in queue order
    if q.hold_reason_id is not None:
        stmt = stmt.where(Order.hold_reason_id == q.hold_reason_id)
    if q.promise is not None:  # ix_orders_promise_queue: the status's range, in queue order
        stmt = stmt.where(Order.promise_status == q.promise, Order.status.in_([s.value for s in OPEN_STATUSES]))
    if q.search:
        term = q.search.strip()
        cond = Order.reference == term
        order_id = _as_order_id(term)
        if order_id is not None:
            cond = cond | (Order.id == order_id)
        stmt = stmt.where(cond)
    if q.holder == HOLDER_UNCLAIMED:
        stmt = stmt.where(Order.holder_id.is_(None))
    elif q.holder == HOLDER_MINE:
        stmt = stmt.where(Order.holder_id == q.holder_id)
    if q.sort == SORT_PROJECTED:
        # An order not projected yet (just after an upgrade) is not listed.
        stmt = stmt.where(Order.status.in_([s.value for s in OPEN_STATUSES]), Order.projected_finish.is_not(None))
    stmt = stmt.options(joinedload(Order.holder))  # the holder's name in each row, in the same query
    return keyset_page(session, stmt, QUEUE_ORDERS[q.sort], q.after, q.before, q.limit)


def status_counts(session: Session) -> dict[str, int]:
    """Orders per status from the counter table (kept in step by every change)."""
    counts = {s.value: 0 for s in Status}
    counts.update({row.status: row.count for row in session.execute(select(StatusCount.status, StatusCount.count))})
    return counts


def count_overdue(session: Session, today: date, *, cap: int | None = None) -> int:
    """Open orders past their promised date; with `cap`, stop counting there (for the page)."""
    inner = select(Order.id).where(Order.status.in_([s.value for s in OPEN_STATUSES]),
                                   Order.promised_date < today)
    if cap is not None:
        inner = inner.limit(cap)
    return session.scalar(select(func.count()).select_from(inner.subquery()))


def count_by_promise(session: Session, promise: str, *, cap: int | None = None) -> int:
    """Open orders with this promise status; with `cap`, stop counting there (for the page)."""
    inner = select(Order.id).where(Order.status.in_([s.value for s in OPEN_STATUSES]), Order.promise_status == promise)
    if cap is not None:
        inner = inner.limit(cap)
    return session.scalar(select(func.count()).select_from(inner.subquery()))


def count_on_hold(session: Session, *, cap: int | None = None) -> int:
    """Orders on hold now (a range of their small partial index); with `cap`, stop counting there."""
    inner = select(Order.id).where(Order.hold_since.is_not(None))
    if cap is not None:
        inner = inner.limit(cap)
    return session.scalar(select(func.count()).select_from(inner.subquery()))


#: "My work" lists this many of the orders an operator holds, the most pressing first; the queue's
#: "claimed by me" filter pages through all of them.
MY_WORK_SHOWN = 50


@dataclass
class MyWork:
    in_progress: list[Order]  # the first MY_WORK_SHOWN
    in_progress_total: int
    done_today: list[OrderEvent]


def my_work(session: Session, operator_id: int, day_start: datetime) -> MyWork:
    mine = (Order.holder_id == operator_id, Order.status.in_([s.value for s in OPEN_STATUSES]))
    held = session.scalars(select(Order).where(*mine).order_by(Order.promised_date, Order.priority, Order.id)
                           .limit(MY_WORK_SHOWN))
    total = session.scalar(select(func.count()).select_from(Order).where(*mine))
    done = session.scalars(
        select(OrderEvent).where(OrderEvent.operator_id == operator_id, OrderEvent.created_at >= day_start,
                                 OrderEvent.kind == EventKind.STATUS.value)
        .order_by(OrderEvent.id.desc()))
    return MyWork(list(held), total, list(done))


# ----------------------------------------------------------------------------------------------- API reads
def list_orders(session: Session, actor: Actor, *, status: Status | None, updated_since: datetime | None,
                after: str | None, limit: int, reference: str | None = None,
                partner_id: int | None = None) -> Page:
    """Orders by time of last change (oldest first), so a client can sync with updated_since + cursor.
    A reference is matched exactly, case included (unique per partner: uq_orders_partner_id_reference);
    a partner asking for another partner's id gets an empty page, as for orders that do not exist."""
    stmt = select(Order)
    if actor.kind == "client" and actor.scope is actors.Scope.PARTNER:
        stmt = stmt.where(Order.partner_id == actor.partner_id)
    if partner_id is not None:
        stmt = stmt.where(Order.partner_id == partner_id)
    if reference is not None:
        stmt = stmt.where(Order.reference == reference)
    if status is not None:
        stmt = stmt.where(Order.status == status.value)
    if updated_since is not None:
        stmt = stmt.where(Order.updated_at >= updated_since)
    if after:
        ts, oid = cursors.decode(after, cursors.instant, cursors.row_id)
        stmt = stmt.where(tuple_(Order.updated_at, Order.id) > tuple_(ts, oid))
    rows = list(session.scalars(stmt.order_by(Order.updated_at, Order.id).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = cursors.encode(rows[-1].updated_at.isoformat(), rows[-1].id) if more else None
    return Page(rows, nxt)


def day_start(now: datetime | None = None) -> datetime:
    now = now or utcnow()
    return datetime(now.year, now.month, now.day, tzinfo=timezone.utc)


@dataclass
class ScanResult:
    exact: Order | None    # the one order the term names
    matches: list[Order]   # otherwise: orders whose reference starts with it (any case)


def find_by_scan(session: Session, actor: Actor, scan: Scan, limit: int = 20) -> ScanResult:
    """The order a scanned label, an order number or a reference names; else the references it begins."""
    by_id = session.get(Order, scan.order_id) if scan.order_id is not None else None
    if by_id is not None and not actors.sees_order(actor, facts(by_id)):
        by_id = None
    if scan.only_an_order:
        return ScanResult(by_id, [])
    named = list(session.scalars(select(Order).where(Order.reference == scan.term).order_by(Order.id).limit(limit)))
    named = [o for o in named if actors.sees_order(actor, facts(o))]
    hits = ([by_id] if by_id is not None else []) + [o for o in named if o is not by_id]
    if len(hits) == 1:
        return ScanResult(hits[0], [])
    if hits:
        return ScanResult(None, hits)
    prefix = session.scalars(select(Order).where(func.lower(Order.reference).like(like_prefix(scan.term), escape="\\"))
                             .order_by(func.lower(Order.reference), Order.id).limit(limit))
    return ScanResult(None, [o for o in prefix if actors.sees_order(actor, facts(o))])
