"""The flow board's reads. Each is an index range or a small group-by over one (the indexes are named
at each query), so the board costs what the open work and the recent window hold, never a scan of the
orders or events table; the arithmetic on the results is mes.domain.flow."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import and_, case, func, literal_column, select
from sqlalchemy.orm import Session

from ..domain import flow
from ..domain.flow import DayCount, LeadTimes, OnTime, ParetoRow, Risk, RiskCount
from ..domain.forecast import STAGES, Promise
from ..domain.lifecycle import OPEN_STATUSES, Status
from ..models import Order, Partner, ReasonCode
from . import orders
from .sql_time import seconds_between, utc_day

_OPEN = [s.value for s in OPEN_STATUSES]
_AT_RISK = [Promise.AT_RISK.value, Promise.LATE.value]
#: Open orders without a promise status yet are counted up to here (the page says "1000+").
UNFORECAST_CAP = 1000


@dataclass(frozen=True)
class StageWip:
    stage: Status
    count: int
    oldest_id: int | None  # the order that entered this stage first; None when the stage is empty
    oldest_since: datetime | None


@dataclass(frozen=True)
class HoldGroup:
    code: str
    label: str
    count: int
    oldest_id: int
    oldest_since: datetime


@dataclass(frozen=True)
class Board:
    now: datetime
    wip: list[StageWip]
    throughput: list[DayCount]  # THROUGHPUT_DAYS days, today last
    lead_time: LeadTimes | None  # None when nothing shipped in the recent window
    on_time: OnTime
    risk: Risk
    unforecast: int  # open orders with no promise status yet, up to UNFORECAST_CAP
    holds: list[HoldGroup]  # the most held reason first
    late_reasons: list[ParetoRow]


def board(session: Session, now: datetime) -> Board:
    """Everything the board shows, as of `now`."""
    today = now.date()
    first = flow.first_day(today, flow.THROUGHPUT_DAYS)
    recent = flow.start_of(flow.first_day(today, flow.RECENT_DAYS))
    leads, on_time = recent_shipments(session, recent)
    return Board(now=now, wip=work_in_progress(session), lead_time=flow.lead_times_of_counts(leads),
                 throughput=flow.daily_series(shipped_per_day(session, flow.start_of(first)), first, today),
                 on_time=on_time, risk=flow.risk_summary(at_risk(session)), unforecast=unforecast(session),
                 holds=holds_by_reason(session), late_reasons=late_reasons(session, recent))


def work_in_progress(session: Session) -> list[StageWip]:
    """Orders per open stage (the counter table) and the oldest of each: the first entry of each stage's
    range in ix_orders_stage_entered."""
    counts = orders.status_counts(session)
    wip = []
    for stage in STAGES:
        oldest = session.execute(
            select(Order.id, Order.stage_entered_at)
            .where(Order.status == stage.value, Order.status.in_(_OPEN))  # the index's own condition
            .order_by(Order.stage_entered_at, Order.id).limit(1)).first()
        wip.append(StageWip(stage=stage, count=counts.get(stage.value, 0), oldest_id=oldest[0] if oldest else None,
                            oldest_since=oldest[1] if oldest else None))
    return wip


def shipped_per_day(session: Session, since: datetime) -> dict[date, int]:
    """Orders shipped per UTC day since `since`: a group-by over the range of ix_orders_shipped_at that
    reads nothing but the index."""
    day = utc_day(Order.shipped_at)
    return {d: n for d, n in session.execute(select(day, func.count()).where(Order.shipped_at >= since).group_by(day))}


def recent_shipments(session: Session, since: datetime) -> tuple[dict[float, int], OnTime]:
    """Orders shipped since `since` per lead time (received to shipped, in seconds rounded to
    LEAD_STEP_SECONDS), and how many left on or before their promised date: one group-by over the range of
    ix_orders_shipped_at, whose answer has a row per quarter hour of lead time, not one per order."""
    step = flow.LEAD_STEP_SECONDS
    bucket = func.round(seconds_between(Order.created_at, Order.shipped_at) / literal_column(str(step)))
    on_time = func.sum(case((utc_day(Order.shipped_at) <= Order.promised_date, 1), else_=0))
    rows = session.execute(select(bucket, func.count(), on_time).where(Order.shipped_at >= since)
                           .group_by(bucket)).all()
    leads: dict[float, int] = {}
    for b, n, _ in rows:
        leads[float(b) * step] = leads.get(float(b) * step, 0) + n
    return leads, OnTime(on_time=sum(int(k or 0) for _, _, k in rows), shipped=sum(n for _, n, _ in rows))


def at_risk(session: Session) -> list[RiskCount]:
    """Open orders at risk or late per stage, partner and promise status: the at_risk and late ranges of
    ix_orders_promise_queue, grouped (partners are a small table)."""
    rows = session.execute(
        select(Order.status, Partner.name, Order.promise_status, func.count())
        .join(Partner, Partner.id == Order.partner_id)
        .where(Order.status.in_(_OPEN), Order.promise_status.in_(_AT_RISK))
        .group_by(Order.status, Partner.name, Order.promise_status))
    return [RiskCount(stage=s, partner=p, promise=k, count=n) for s, p, k, n in rows]


def unforecast(session: Session) -> int:
    """Open orders whose promise status is not computed yet (the NULL range of ix_orders_promise_queue,
    counted up to UNFORECAST_CAP): the board says so, so that "nothing at risk" is not misread."""
    inner = select(Order.id).where(Order.status.in_(_OPEN), Order.promise_status.is_(None)).limit(UNFORECAST_CAP)
    return session.scalar(select(func.count()).select_from(inner.subquery()))


def holds_by_reason(session: Session) -> list[HoldGroup]:
    """Orders on hold now per reason, with the oldest hold: group-bys over the small partial index of held
    orders (ix_orders_on_hold_queue), the second to name the oldest order of each reason."""
    held = Order.hold_since.is_not(None)
    grouped = (select(Order.hold_reason_id.label("reason_id"), func.count().label("n"),
                      func.min(Order.hold_since).label("oldest"))
               .where(held).group_by(Order.hold_reason_id).subquery())
    rows = session.execute(
        select(ReasonCode.code, ReasonCode.label, grouped.c.n, grouped.c.oldest, func.min(Order.id))
        .select_from(grouped)
        .join(ReasonCode, ReasonCode.id == grouped.c.reason_id)
        .join(Order, and_(held, Order.hold_reason_id == grouped.c.reason_id, Order.hold_since == grouped.c.oldest))
        .group_by(ReasonCode.code, ReasonCode.label, grouped.c.n, grouped.c.oldest)
        .order_by(grouped.c.n.desc(), grouped.c.oldest, ReasonCode.code))
    return [HoldGroup(code=c, label=label, count=n, oldest_id=oid, oldest_since=since)
            for c, label, n, since, oid in rows]


def late_reasons(session: Session, since: datetime) -> list[ParetoRow]:
    """Why promises are missed: the cause recorded on each order (mes.domain.forecast asks for it once per
    at-risk spell; a hold's reason counts), over the orders shipped late since `since` (the range of
    ix_orders_shipped_at) and the open orders at risk or late now (ix_orders_promise_queue). Orders with
    no cause recorded are counted too, so that the gap shows."""
    counts: dict[str, int] = {}
    for where in ((Order.shipped_at >= since, Order.promise_status == Promise.MISSED.value),
                  (Order.status.in_(_OPEN), Order.promise_status.in_(_AT_RISK))):
        rows = session.execute(
            select(ReasonCode.label, func.count()).select_from(Order)
            .outerjoin(ReasonCode, ReasonCode.id == Order.late_reason_id)
            .where(*where).group_by(ReasonCode.label))
        for label, n in rows:
            key = label or flow.NO_CAUSE
            counts[key] = counts.get(key, 0) + n
    return flow.pareto(counts.items())
