"""Keeping the promise current (mes.domain.forecast): each order's projection and promise status are
refreshed in the transaction of every change to it, and for all open orders by `mes recompute-promises`
(time passes; queues grow and drain); the norms and stage flows they use are learned by
`mes recompute-norms`, never per request.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, func, select, tuple_, update
from sqlalchemy.orm import Session

from ..config import Settings
from ..db import begin_write
from ..domain import forecast
from ..domain.forecast import FLOW_WINDOW, NORM_WINDOW, Flow, Norm, Norms, Policy, Position, Promise, StageEvent, promise_of
from ..domain.holds import EventKind, HoldState, total_hold_seconds
from ..domain.lifecycle import OPEN_STATUSES, Status
from ..models import Order, OrderEvent, StageFlow, StageNorm, StatusCount, utcnow

#: The scheduled recomputation rewrites a projection only when it moved at least this much.
PROJECTION_TOLERANCE = timedelta(hours=1)
BATCH = 5000
AHEAD_CAP = 10_000
SYSTEM_ACTOR = "system:forecast"
_OPEN = [s.value for s in OPEN_STATUSES]


def policy_of(session: Session) -> Policy:
    """The configured policy: the app's sessions carry it (mes.web); tools and tests get the defaults."""
    return session.info.get("promise_policy") or Settings().promise_policy


@dataclass(frozen=True)
class Model:
    """Everything a projection needs besides the order itself."""

    norms: Norms
    flows: dict[Status, Flow]
    policy: Policy


def load_model(session: Session) -> Model:
    """Three small tables: the learned norms, the stages' recent exits per day, the orders per status."""
    policy = policy_of(session)
    learned = {(r.family, Status(r.stage)): Norm(p50=float(r.p50_seconds), p85=float(r.p85_seconds), samples=r.samples)
               for r in session.scalars(select(StageNorm))}
    exits = {Status(r.stage): r.exits_per_day for r in session.scalars(select(StageFlow))}
    wip = {status: count for status, count in session.execute(select(StatusCount.status, StatusCount.count))}
    flows = {s: Flow(wip=int(wip.get(s.value, 0)), exits_per_day=exits.get(s, 0.0)) for s in forecast.STAGES}
    return Model(Norms(learned, forecast.default_norms(policy.default_days)), flows, policy)


# ------------------------------------------------------------------------------------------ one order
@dataclass(frozen=True)
class PromiseMove:
    """The order's promise before and after a change, for the event that records the change."""

    before: Promise | None
    after: Promise | None
    estimate: datetime | None
    reason: str | None  # partner-facing, when the promise status changed


def ahead_in_stage(session: Session, order: Order) -> int:
    """Orders of the same status before this one in queue order (an index range of ix_orders_status_queue),
    counted up to AHEAD_CAP: past that the queue says "months" whatever its exact length."""
    key = tuple_(Order.promised_date, Order.priority, Order.id)
    ahead = select(Order.id).where(Order.status == order.status,
                                   key < tuple_(order.promised_date, order.priority, order.id)).limit(AHEAD_CAP)
    return session.scalar(select(func.count()).select_from(ahead.subquery())) or 0


def position_of(order: Order, now: datetime, ahead: int) -> Position:
    hold = HoldState(since=order.hold_since, earlier_seconds=order.hold_seconds or 0)
    worked = forecast.worked_in_stage(now, order.stage_entered_at, total_hold_seconds(hold, now),
                                      order.stage_hold_base or 0)
    return Position(family=forecast.family_of(order.product), stage=Status(order.status), worked_seconds=worked,
                    ahead_in_stage=ahead)


def evaluate(order: Order, model: Model, now: datetime, ahead: int) -> tuple[forecast.Projection | None, Promise | None]:
    status = Status(order.status)
    projection = None
    if status in forecast.STAGES:
        projection = forecast.project(now, position_of(order, now, ahead), model.norms, model.flows)
    promise = forecast.promise_status(
        status, order.promised_date, now.date(), projected=projection.finish if projection else None,
        shipped_on=order.shipped_at.date() if order.shipped_at else None, margin_days=model.policy.margin_days)
    return projection, promise


def refresh(session: Session, order: Order, now: datetime) -> PromiseMove:
    """Recompute the order's projection and promise after a change made in this transaction (the row
    is locked by the caller); the caller's event records the move."""
    before = promise_of(order.promise_status)
    ahead = ahead_in_stage(session, order) if order.status in _OPEN else 0
    projection, after = evaluate(order, load_model(session), now, ahead)
    order.projected_finish = projection.finish if projection else None
    order.promise_status = after.value if after else None
    if after is Promise.ON_TRACK:
        order.late_reason_id = None  # the spell is over; a new one needs its own cause
    reason = forecast.partner_reason(after, projection, _hold_label(order)) if after != before else None
    return PromiseMove(before, after, order.projected_finish, reason)


def late_reason_owed(order: Order) -> bool:
    """Whether the next operator action on the order must say why it is at risk or late."""
    return forecast.late_reason_owed(promise_of(order.promise_status), recorded=order.late_reason_id is not None)


def _hold_label(order: Order) -> str | None:
    return order.hold_reason.label if order.hold_since is not None and order.hold_reason is not None else None


def stamp(event: OrderEvent, move: PromiseMove) -> OrderEvent:
    """Put the promise before and after onto the event of the change that moved it."""
    event.from_promise = move.before.value if move.before else None
    event.to_promise = move.after.value if move.after else None
    event.estimated_completion = move.estimate
    return event


@dataclass(frozen=True)
class StageLine:
    """One stage of the order page: the working time the order spent (or spends) in it, against its norm."""

    stage: Status
    worked: float | None  # seconds; None for a stage not reached yet
    norm: Norm
    current: bool

    @property
    def over_norm(self) -> bool:
        return self.worked is not None and self.worked > self.norm.p85


def stage_report(session: Session, order: Order, events: Iterable[OrderEvent], now: datetime) -> list[StageLine]:
    """Time in each stage so far against the stage's norm for the order's family, from its events."""
    norms = load_model(session).norms
    spent = forecast.stage_durations(
        [StageEvent(EventKind(e.kind), Status(e.to_status), e.created_at) for e in events], now)
    family = forecast.family_of(order.product)
    return [StageLine(stage, spent.get(stage), norms.of(family, stage), order.status == stage.value)
            for stage in forecast.STAGES]


# ---------------------------------------------------------------------------------------- all orders
@dataclass
class Recomputed:
    open_orders: int = 0
    projections_moved: int = 0
    promises_changed: int = 0

    def __str__(self) -> str:
        return (f"{self.open_orders} open orders: {self.promises_changed} promise statuses changed, "
                f"{self.projections_moved} projections moved")


def recompute_promises(session: Session, now: datetime | None = None) -> Recomputed:
    """Refresh every open order, a batch at a time: each batch is read (a replica may serve it), then its
    changes are written in one short write transaction. Projections that moved are rewritten; a change of
    promise status is written with its event. A row changed since it was read (its version or promise
    moved) is left alone: that change refreshed it already."""
    now = now or utcnow()
    model = load_model(session)
    session.rollback()
    done = Recomputed()
    for batch in _open_orders(session):
        moved: list[dict] = []
        changes: list[_Change] = []
        for order, ahead in batch:
            done.open_orders += 1
            projection, after = evaluate(order, model, now, ahead)
            finish = projection.finish if projection else None
            if (after.value if after else None) != order.promise_status:
                changes.append(_Change.of(order, projection, after))
            elif finish is not None and (order.projected_finish is None
                                         or abs(finish - order.projected_finish) >= PROJECTION_TOLERANCE):
                moved.append({"oid": order.id, "version": order.status_version, "finish": finish})
        session.rollback()  # the read ends here; the writes go to the primary
        if moved or changes:
            begin_write(session)
            if moved:
                done.projections_moved += _move_projections(session, moved)
            done.promises_changed += sum(_change_promise(session, change, now) for change in changes)
            session.commit()
    return done


def _open_orders(session: Session) -> Iterator[list[tuple[Order, int]]]:
    """Open orders with their place in their stage's queue, in batches (keyset over the primary key)."""
    ahead = (func.row_number().over(partition_by=Order.status,
                                    order_by=(Order.promised_date, Order.priority, Order.id)) - 1).label("ahead")
    ranked = select(Order.id.label("oid"), ahead).where(Order.status.in_(_OPEN)).subquery()
    last = 0
    while True:
        rows = session.execute(
            select(Order, ranked.c.ahead).join(ranked, ranked.c.oid == Order.id)
            .where(Order.id > last).order_by(Order.id).limit(BATCH)).all()
        if not rows:
            return
        last = rows[-1][0].id
        yield list(rows)


def _move_projections(session: Session, rows: list[dict]) -> int:
    stmt = (update(Order.__table__).where(Order.__table__.c.id == bindparam("oid"),
                                          Order.__table__.c.status_version == bindparam("version"))
            .values(projected_finish=bindparam("finish")))
    session.execute(stmt, rows, execution_options={"synchronize_session": False})
    return len(rows)


@dataclass(frozen=True)
class _Change:
    """A promise change decided from a read, to be written if the order is still as it was read."""

    order_id: int
    partner_id: int
    status: str
    version: int
    before: str | None
    move: PromiseMove

    @classmethod
    def of(cls, order: Order, projection: forecast.Projection | None, after: Promise | None) -> "_Change":
        before = promise_of(order.promise_status)
        move = PromiseMove(before, after, projection.finish if projection else None,
                           forecast.partner_reason(after, projection, _hold_label(order)))
        return cls(order.id, order.partner_id, order.status, order.status_version, order.promise_status, move)


def _change_promise(session: Session, change: _Change, now: datetime) -> bool:
    """Write a promise change and its event, unless the order changed since it was read."""
    after = change.move.after
    values = {"promise_status": after.value if after else None, "projected_finish": change.move.estimate,
              "updated_at": now}
    if after is Promise.ON_TRACK:
        values["late_reason_id"] = None
    same_promise = (Order.promise_status.is_(None) if change.before is None
                    else Order.promise_status == change.before)
    done = session.execute(
        update(Order).where(Order.id == change.order_id, Order.status_version == change.version, same_promise)
        .values(**values).execution_options(synchronize_session=False)).rowcount == 1
    if done and change.before is not None:  # an order's first projection (after an upgrade) is news to nobody
        session.add(stamp(OrderEvent(
            order_id=change.order_id, partner_id=change.partner_id, from_status=change.status,
            to_status=change.status, status_version=change.version, actor=SYSTEM_ACTOR,
            kind=EventKind.PROMISE.value, reason=change.move.reason, created_at=now), change.move))
    return done


# --------------------------------------------------------------------------------------------- norms
@dataclass
class Learned:
    orders: int
    norms: int

    def __str__(self) -> str:
        return f"{self.norms} norms learned from {self.orders} shipped orders"


def recompute_norms(session: Session, now: datetime | None = None) -> Learned:
    """Learn the norms from orders shipped in the window and the stages' exits per day."""
    now = now or utcnow()
    shipped = select(Order.id, Order.product).where(Order.shipped_at >= now - NORM_WINDOW).subquery()
    rows = session.execute(
        select(shipped.c.id, shipped.c.product, OrderEvent.kind, OrderEvent.to_status, OrderEvent.created_at)
        .join(OrderEvent, OrderEvent.order_id == shipped.c.id)
        .order_by(shipped.c.id, OrderEvent.id))
    per_order = list(_durations_by_order(rows))
    learned = forecast.learn_norms(per_order)
    exits = {stage: count for stage, count in session.execute(
        select(OrderEvent.from_status, func.count()).where(
            OrderEvent.created_at >= now - FLOW_WINDOW, OrderEvent.kind == EventKind.STATUS.value,
            OrderEvent.from_status.in_(_OPEN), OrderEvent.to_status != Status.CANCELLED.value)
        .group_by(OrderEvent.from_status))}
    begin_write(session)  # the reads above may come from a replica; the writes replace both tables at once
    session.execute(delete(StageNorm))
    session.add_all(StageNorm(family=family, stage=stage.value, p50_seconds=round(n.p50), p85_seconds=round(n.p85),
                              samples=n.samples, computed_at=now) for (family, stage), n in learned.items())
    session.execute(delete(StageFlow))
    session.add_all(StageFlow(stage=s.value, exits_per_day=exits.get(s.value, 0) / FLOW_WINDOW.days, computed_at=now)
                    for s in forecast.STAGES)
    session.commit()
    return Learned(orders=len(per_order), norms=len(learned))


def _durations_by_order(rows: Iterable[tuple]) -> Iterator[tuple[str, dict[Status, float]]]:
    current, product, events = None, None, []
    for oid, prod, kind, to_status, at in rows:
        if oid != current:
            if current is not None:
                yield forecast.family_of(product), forecast.stage_durations(events)
            current, product, events = oid, prod, []
        events.append(StageEvent(EventKind(kind), Status(to_status), at))
    if current is not None:
        yield forecast.family_of(product), forecast.stage_durations(events)
