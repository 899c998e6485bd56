"""Production records, work actions and piece rates in the database (rules: mes.domain.production and
mes.domain.pay). Operators record on the shop floor; partners and the CRM never write these."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import BigInteger, any_, bindparam, case, func, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from ..db import begin_write
from ..domain import actors, pay, production
from ..domain.actors import Actor
from ..domain.errors import Forbidden, NotFound
from ..domain.forecast import family_of
from ..domain.lifecycle import Status, parse_status
from ..domain.production import Quantities, Record, RecordKind, WorkAction as Action, WorkSpell
from ..domain.reason_codes import Kind
from ..models import Operator, Order, PieceRate, ProductionRecord, ReasonCode, FloorEvent, utcnow
from .orders import get_order
from .sql_time import utc_day


def _require_floor(actor: Actor) -> None:
    if actor.kind != "operator":
        raise Forbidden("Production is recorded on the shop floor.")


def as_record(row: ProductionRecord) -> Record:
    return Record(RecordKind(row.kind), Status(row.stage), row.operator_id, row.good, row.scrap, row.created_at,
                  row.worked_seconds, row.defect_code.code if row.defect_code else None, row.reworks_id)


def records_of(session: Session, order_id: int) -> list[ProductionRecord]:
    return list(session.scalars(select(ProductionRecord).where(ProductionRecord.order_id == order_id)
                                .order_by(ProductionRecord.id)))


def quantities_of(session: Session, order: Order) -> Quantities:
    return production.quantities(order.quantity, [as_record(r) for r in records_of(session, order.id)])


def _defect_codes(session: Session) -> dict[str, ReasonCode]:
    return {c.code: c for c in session.scalars(select(ReasonCode).where(ReasonCode.kind == Kind.DEFECT.value,
                                                                      ReasonCode.active.is_(True)))}


def _spell(session: Session, order_id: int, operator_id: int, now: datetime) -> WorkSpell:
    rows = session.execute(select(FloorEvent.action, FloorEvent.created_at)
                           .where(FloorEvent.order_id == order_id, FloorEvent.operator_id == operator_id,
                                  FloorEvent.action.in_([a.value for a in Action]))
                           .order_by(FloorEvent.id)).all()
    return production.replay([(Action(a), at) for a, at in rows], now)


def _unrecorded_seconds(session: Session, order_id: int, operator_id: int, now: datetime) -> int:
    """Time the operator worked on the order that no record of theirs has counted yet."""
    counted = session.scalar(select(func.coalesce(func.sum(ProductionRecord.worked_seconds), 0))
                             .where(ProductionRecord.order_id == order_id,
                                    ProductionRecord.operator_id == operator_id)) or 0
    return max(_spell(session, order_id, operator_id, now).worked_seconds - int(counted), 0)


def act(session: Session, actor: Actor, order_id: int, action: str) -> WorkSpell:
    """Start, pause, resume or finish the actor's own work on an open order."""
    _require_floor(actor)
    try:
        wanted = Action(action)
    except ValueError:
        raise NotFound(f"No work action {action!r}.") from None
    begin_write(session)
    try:
        order = get_order(session, actor, order_id, for_update=True)
        now = utcnow()
        spell = _spell(session, order.id, actor.id, now)
        production.next_state(spell.state, wanted)
        session.add(FloorEvent(order_id=order.id, operator_id=actor.id, by_id=actor.id, action=wanted.value,
                               created_at=now))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return _spell(session, order_id, actor.id, now)


@dataclass
class Recorded:
    record: ProductionRecord
    quantities: Quantities


def record_output(session: Session, actor: Actor, order_id: int, good: object, scrap: object = 0,
                  defect_code: str | None = None, note: str | None = None) -> Recorded:
    """Good and scrapped pieces the actor made (or judged, in quality check) of the order, now, with
    the time they worked on it since their previous record."""
    _require_floor(actor)
    begin_write(session)
    try:
        order = get_order(session, actor, order_id, for_update=True)
        so_far = quantities_of(session, order)
        codes = _defect_codes(session)
        text = (note or "").strip() or None
        g, s = production.check_output(Status(order.status), so_far, good, scrap, defect_code or None, list(codes), text)
        now = utcnow()
        return _store(session, order, ProductionRecord(
            order_id=order.id, operator_id=actor.id, kind=RecordKind.OUTPUT.value, stage=order.status, good=g,
            scrap=s, defect_code=codes.get(defect_code or ""), note=text, created_at=now,
            worked_seconds=_unrecorded_seconds(session, order.id, actor.id, now)))
    except BaseException:
        session.rollback()
        raise


def record_rework(session: Session, actor: Actor, order_id: int, reworks_id: int, quantity: object,
                  defect_code: str | None, note: str | None = None) -> Recorded:
    """A quality check sends pieces of one production record back to be made again."""
    _require_floor(actor)
    begin_write(session)
    try:
        order = get_order(session, actor, order_id, for_update=True)
        so_far = quantities_of(session, order)
        target = session.get(ProductionRecord, reworks_id)
        if target is not None and target.order_id != order.id:
            target = None
        codes = _defect_codes(session)
        q = production.check_rework(so_far, as_record(target) if target else None, quantity, defect_code or None,
                                    list(codes))
        now = utcnow()
        return _store(session, order, ProductionRecord(
            order_id=order.id, operator_id=actor.id, kind=RecordKind.REWORK.value, stage=order.status, good=q,
            scrap=0, defect_code=codes[defect_code], note=(note or "").strip() or None, reworks_id=target.id,
            created_at=now, worked_seconds=_unrecorded_seconds(session, order.id, actor.id, now)))
    except BaseException:
        session.rollback()
        raise


def _store(session: Session, order: Order, row: ProductionRecord) -> Recorded:
    """Write the record and commit; the order's quantities with it."""
    session.add(row)
    session.flush()
    after = quantities_of(session, order)
    session.commit()
    return Recorded(row, after)


# --- rates and the ledger ---------------------------------------------------------------------------

def set_rate(session: Session, actor: Actor, family: str, stage: str, per_piece: object,
             valid_from: datetime | None = None) -> PieceRate:
    """A new rate for a family and stage from `valid_from` (now by default); earlier rates stay."""
    actors.require_supervisor(actor, "set piece rates")
    amount = pay.check_rate(per_piece)
    status = parse_status(stage)
    begin_write(session)
    try:
        rate = PieceRate(family=family.strip().upper()[:32], stage=status.value, per_piece=amount,
                         valid_from=valid_from or utcnow(), set_by_id=actor.id, created_at=utcnow())
        session.add(rate)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return rate


def rate_table(session: Session) -> pay.RateTable:
    return pay.RateTable(pay.Rate(r.family, Status(r.stage), r.per_piece, r.valid_from)
                         for r in session.scalars(select(PieceRate)))


def works(session: Session, start: date, end: date, operator_id: int | None = None) -> list[pay.Work]:
    """Records finished from `start` up to (not including) `end` (UTC days), with their orders' families,
    one by one: what the rules (mes.domain.pay.ledger) are written against. The pages read batches."""
    since, until = _utc_midnight(start), _utc_midnight(end)
    stmt = (select(ProductionRecord, Order.product).join(Order, Order.id == ProductionRecord.order_id)
            .where(ProductionRecord.created_at >= since, ProductionRecord.created_at < until)
            .order_by(ProductionRecord.created_at))
    if operator_id is not None:
        stmt = stmt.where(ProductionRecord.operator_id == operator_id)
    return [pay.Work(as_record(row), row.order_id, family_of(product), row.created_at.astimezone(timezone.utc).date())
            for row, product in session.execute(stmt)]


def _utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=timezone.utc)


def batches(session: Session, rates: pay.RateTable, start: date, end: date, operator_id: int | None = None, *,
            by_day: bool = True) -> tuple[list[pay.Batch], list[tuple[int, date | None, int]]]:
    """The output records finished in [start, end) added up by the database: per operator (and UTC day,
    unless by_day is false), product family, stage and stretch between two changes of any rate (so that
    one rate holds for each batch), with the (operator, day, order) each record names. A period of many
    operators is read as sums per order, not as every record with its relations."""
    pr = ProductionRecord
    since, until = _utc_midnight(start), _utc_midnight(end)
    done = [pr.kind == RecordKind.OUTPUT.value, pr.created_at >= since, pr.created_at < until]
    if operator_id is not None:
        done.append(pr.operator_id == operator_id)
    days = [utc_day(pr.created_at).label("day")] if by_day else []
    # Stretch k (from 1) starts at the k-th rate change inside the range; stretch 0 at the range's start.
    changes = rates.changes(since, until)
    starts = [since, *changes]
    stretch = (case(*((pr.created_at >= at, k) for k, at in reversed(list(enumerate(changes, 1)))), else_=0)
               if changes else literal(0)).label("stretch")
    each = select(pr.operator_id, *days, pr.order_id, pr.stage, stretch, pr.good, pr.scrap, pr.worked_seconds) \
        .where(*done).subquery()
    keys = [each.c.operator_id, *([each.c.day] if by_day else []), each.c.order_id, each.c.stage, each.c.stretch]
    sums_per_order = select(*keys, func.count(), func.sum(each.c.good), func.sum(each.c.scrap),
                            func.sum(each.c.worked_seconds)).group_by(*keys)
    per_order = session.connection().execute(sums_per_order).all()  # plain rows: no ORM work per row
    # The orders' products apart, by primary key: joined in the statement above, PostgreSQL would rather
    # read the whole orders table than look up a month's orders one by one.
    families = _families(session, {row[2 if by_day else 1] for row in per_order})
    sums: dict[tuple, list[int]] = {}
    orders = []
    for row in per_order:
        op, *rest = row
        d = rest.pop(0) if by_day else None
        order_id, stage, k, steps, good, scrap, worked = rest
        orders.append((op, d, order_id))
        total = sums.setdefault((op, d, families[order_id], stage, k), [0, 0, 0, 0])
        total[0] += steps
        total[1] += int(good)
        total[2] += int(scrap)
        total[3] += int(worked)
    return [pay.Batch(op, d, family, Status(stage), starts[k], *total)
            for (op, d, family, stage, k), total in sums.items()], orders


def _families(session: Session, order_ids: set[int], chunk: int = 5000) -> dict[int, str]:
    """Order id -> product family. PostgreSQL takes the ids as one array (= ANY: one index scan); SQLite
    caps the parameters of a statement, so it reads them in chunks."""
    ids, out, products = sorted(order_ids), {}, {}
    if session.connection().dialect.name == "postgresql":
        chunks = [select(Order.id, Order.product).where(Order.id == any_(bindparam("ids", ids, ARRAY(BigInteger))))]
    else:
        chunks = [select(Order.id, Order.product).where(Order.id.in_(ids[i:i + chunk]))
                  for i in range(0, len(ids), chunk)]
    for stmt in chunks:
        for order_id, product in session.connection().execute(stmt):
            if product not in products:
                products[product] = family_of(product)
            out[order_id] = products[product]
    return out


def ledger(session: Session, actor: Actor, start: date, end: date, *, operator_id: int | None = None,
           period: pay.PeriodRule | None = None) -> dict[tuple[int, object], pay.Line]:
    """Lines by (operator, day), or by (operator, pay period) with `period`. An operator sees their own;
    a supervisor anyone's."""
    _require_floor(actor)
    if operator_id != actor.id and not actor.is_supervisor:
        raise Forbidden("Only a supervisor may see another operator's ledger.")
    rates = rate_table(session)
    done, orders = batches(session, rates, start, end, operator_id)
    return pay.ledger_of_batches(done, orders, rates, key=period.period if period else (lambda d: d))


@dataclass
class OrderView:
    """What the order page shows of production: counts, records, and the viewer's own work."""

    quantities: Quantities
    records: list[ProductionRecord]
    spell: WorkSpell | None          # the viewer's work on the order (operators only)
    actions: list[Action]            # what the viewer may do with it now
    recording: bool                  # quantities can be recorded in the order's status
    reworking: bool                  # a quality check may send pieces back
    defect_codes: list[ReasonCode]


def order_view(session: Session, actor: Actor, order: Order, now: datetime) -> OrderView:
    rows = records_of(session, order.id)
    quantities = production.quantities(order.quantity, [as_record(r) for r in rows])
    status = Status(order.status)
    recording = status in production.RECORDING_STAGES and actor.kind == "operator"
    spell = _spell(session, order.id, actor.id, now) if actor.kind == "operator" else None
    actions = [a for (s, a) in production.NEXT_STATE if spell is not None and s is spell.state] if recording else []
    return OrderView(quantities, rows, spell, actions, recording, recording and status is production.CHECKING_STAGE,
                     list(_defect_codes(session).values()) if recording else [])


@dataclass
class Summary:
    """One operator's figures over a stretch of days [start, end)."""

    name: str
    start: date
    end: date
    line: pay.Line

    @property
    def last(self) -> date:
        return self.end - timedelta(days=1)


def summaries(session: Session, actor: Actor, today: date, rule: pay.PeriodRule) -> list[Summary]:
    """The actor's today, this week (from Monday) and current pay period, from one read of their records."""
    spans = [("Today", today, today + timedelta(days=1)),
             ("This week", *pay.PeriodRule(pay.PeriodKind.WEEKLY).period(today)),
             ("Pay period", *rule.period(today))]
    first, last = min(s for _, s, _ in spans), max(e for _, _, e in spans)
    rates = rate_table(session)
    done, orders = batches(session, rates, first, last, actor.id)
    out = []
    for name, start, end in spans:
        lines = pay.ledger_of_batches([b for b in done if start <= b.day < end],
                                      [o for o in orders if start <= o[1] < end], rates, key=lambda d: None)
        out.append(Summary(name, start, end, lines.get((actor.id, None), pay.Line())))
    return out


def period_ledger(session: Session, actor: Actor, day: date, rule: pay.PeriodRule
                  ) -> tuple[tuple[date, date], list[tuple[Operator, pay.Line]], pay.Line]:
    """Every operator's line for the pay period holding `day` (supervisors), and the total."""
    actors.require_supervisor(actor, "see every operator's ledger")
    start, end = rule.period(day)
    rates = rate_table(session)
    done, orders = batches(session, rates, start, end, by_day=False)
    lines = pay.ledger_of_batches(done, orders, rates, key=lambda d: None)
    people = {o.id: o for o in session.scalars(select(Operator).where(Operator.id.in_([op for op, _ in lines])))}
    rows = sorted(((people[op], line) for (op, _), line in lines.items()), key=lambda row: row[0].display_name)
    return (start, end), rows, pay.totals([line for _, line in rows])


def rates(session: Session) -> list[PieceRate]:
    """Every rate ever set, newest first within each family and stage."""
    return list(session.scalars(select(PieceRate).order_by(PieceRate.family, PieceRate.stage,
                                                           PieceRate.valid_from.desc())))
