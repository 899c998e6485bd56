"""Demo data: a realistic spread of orders, loaded in batches (COPY on PostgreSQL).

Each order walks the lifecycle with jittered stage durations from a random creation time, so that
recent orders are still open and old ones delivered. It tells the factory's story: the queue for
production has grown over the last months (recent orders wait weeks for a machine), so a growing share
misses the three-week promise; some orders were held on the way (material, machines, tooling ...), a
few open ones are on hold now, and each late order has the cause the floor recorded.
"""
from __future__ import annotations

import csv
import io
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .domain.forecast import family_of, promise_status
from .domain.lifecycle import OPEN_STATUSES, Status
from .domain.reason_codes import Kind
from .models import (ApiClient, Operator, Order, OrderEvent, Partner, PieceRate, ProductionRecord, ReasonCode,
                     StatusCount, utcnow)
from .services import accounts, forecast

S = Status
BATCH = 20_000
# Typical days spent in each stage; each order gets them scaled by a random factor.
STAGE_DAYS = [(S.RECEIVED, 0.5), (S.QUEUED, 2.0), (S.IN_PRODUCTION, 6.0), (S.QUALITY_CHECK, 1.2),
              (S.PACKED, 1.0), (S.SHIPPED, 4.0)]
# The bottleneck: the queue for production, up to this many days longer for orders of the last months.
BOTTLENECK_EXTRA_DAYS = 8.0
BOTTLENECK_RAMP_DAYS = 120
# Orders held for a while in production and released, and how often each hold reason happens.
PAST_HOLD_SHARE = 0.15
HOLD_WEIGHTS = {"material_shortage": 30, "machine_down": 25, "tooling": 15, "quality_hold": 10, "capacity": 10,
                "waiting_for_customer": 5, "other": 5}
# What the floor names as the cause of a late order that had no hold: mostly the queue.
LATE_CAUSES = {"capacity": 45, "late_upstream": 20, "material_shortage": 15, "machine_down": 10, "quality_hold": 10}
PRODUCTS = ["BRKT-200", "BRKT-210", "FLNG-40", "FLNG-65", "SHAFT-12", "SHAFT-20", "GEAR-Z32", "GEAR-Z48",
            "HOUS-A1", "HOUS-B2", "PLATE-300", "PLATE-600", "BUSH-8", "BUSH-16", "VALVE-DN25", "PIN-6"]
MATERIALS = ["steel S235", "steel S355", "stainless 1.4301", "aluminium 6061", "brass CuZn39", "cast iron GG25"]
PARTNER_NAMES = ["Nordwerk", "Baltic Machines", "Ural Components", "Kama Trucks", "Volga Pumps", "Severtech",
                 "Irtysh Agro", "Don Hydraulics", "Oka Motors", "Ladoga Marine", "Altai Mining", "Sayan Energy"]
ORDER_COLS = ["id", "partner_id", "reference", "product", "material", "quantity", "notes", "priority",
              "promised_date", "status", "status_version", "holder_id", "created_at", "updated_at",
              "hold_since", "hold_reason_id", "hold_seconds", "stage_entered_at", "stage_hold_base", "shipped_at",
              "promise_status", "late_reason_id"]
EVENT_COLS = ["id", "order_id", "partner_id", "from_status", "to_status", "status_version", "actor",
              "operator_id", "reason", "created_at", "kind", "reason_code_id", "note"]
#: Share of open orders that are on hold, and what the floor writes when a reason needs a note.
HOLD_SHARE = 0.12
HOLD_NOTES = ["coating line booked until next week", "drawing revision pending", "waiting for a gauge"]


@dataclass
class Loaded:
    orders: int = 0
    events: int = 0


def _partners(session: Session, count: int, first: list[str]) -> list[int]:
    names = first + [PARTNER_NAMES[i % len(PARTNER_NAMES)] + (f" {i // len(PARTNER_NAMES) + 1}" if i >= len(PARTNER_NAMES) else "")
             for i in range(count - len(first))]
    return [accounts.get_or_create_partner(session, name).id for name in names]


@dataclass(frozen=True)
class Step:
    """One event of a demo order: a status change, or a hold or release with its reason code."""

    kind: str
    old: S | None
    new: S
    at: datetime
    reason: str | None = None
    code: int | None = None
    note: str | None = None


def _queue_days(rng: random.Random, created: datetime, now: datetime) -> float:
    """The factory's story: production is the bottleneck, and its queue has grown over the last four
    months, so that recent orders wait two weeks for a machine where older ones waited two days."""
    age = (now - created).days
    congestion = BOTTLENECK_EXTRA_DAYS * max(0.0, 1.0 - age / BOTTLENECK_RAMP_DAYS)
    return STAGE_DAYS[1][1] * rng.uniform(0.5, 1.8) + congestion * rng.uniform(0.6, 1.3)


def _walk(rng: random.Random, created: datetime, now: datetime, codes: "Codes") -> list[Step]:
    """The events of one order up to now, in time order."""
    steps = [Step("status", None, S.RECEIVED, created)]
    t = created
    rework = rng.random() < 0.05
    past_hold = codes.hold and rng.random() < PAST_HOLD_SHARE
    for status, days in STAGE_DAYS:
        span = _queue_days(rng, created, now) if status is S.QUEUED else days * rng.uniform(0.5, 1.8)
        if status is S.IN_PRODUCTION and past_hold:
            code, needs_note = rng.choices(codes.hold, weights=codes.hold_weights)[0]
            start, length = t + timedelta(days=span * rng.uniform(0.1, 0.6)), rng.uniform(1.0, 6.0)
            if start + timedelta(days=length + span) < now:  # only holds the order is past
                steps.append(Step("hold", status, status, start, code=code,
                                  note=rng.choice(HOLD_NOTES) if needs_note else None))
                steps.append(Step("release", status, status, start + timedelta(days=length), code=code))
                span += length
        t = t + timedelta(days=span)
        if t > now:
            break
        if status in (S.RECEIVED, S.QUEUED) and rng.random() < 0.015:
            steps.append(Step("status", status, S.CANCELLED, t, "cancelled by the partner"))
            break
        nxt = S.DELIVERED if status is S.SHIPPED else STAGE_DAYS[[s for s, _ in STAGE_DAYS].index(status) + 1][0]
        if status is S.QUALITY_CHECK and rework:
            steps.append(Step("status", S.QUALITY_CHECK, S.IN_PRODUCTION, t, "surface defect, regrind"))
            t = t + timedelta(days=2 * rng.uniform(0.5, 1.5))
            if t > now:
                break
            steps.append(Step("status", S.IN_PRODUCTION, S.QUALITY_CHECK, t))
            rework = False
            t = t + timedelta(days=1)
            if t > now:
                break
        steps.append(Step("status", status, nxt, t))
    return steps


@dataclass
class Codes:
    """The reason codes the demo picks from: (id, needs a note) per kind, and how often each happens."""

    hold: list[tuple[int, bool]]
    hold_weights: list[float]
    late: dict[str, int]  # code -> id


def _late_cause(rng: random.Random, steps: list[Step], codes: Codes, hold_codes_by_id: dict[int, str]) -> int | None:
    """Why a late order was late, as the floor recorded it: the hold it had, else mostly the queue."""
    held = next((st.code for st in steps if st.kind == "hold"), None)
    if held is not None and hold_codes_by_id.get(held) in codes.late:
        return codes.late[hold_codes_by_id[held]]
    code = rng.choices(list(LATE_CAUSES), weights=list(LATE_CAUSES.values()))[0]
    return codes.late.get(code)


def _hold(rng: random.Random, last_change: datetime, now: datetime,
          hold_codes: list[tuple[int, bool]], weights: list[float]) -> tuple[datetime, int, str | None] | None:
    """A current hold for a share of open orders: (since, reason code id, note)."""
    if not hold_codes or rng.random() >= HOLD_SHARE:
        return None
    code_id, needs_note = rng.choices(hold_codes, weights=weights)[0]
    since = last_change + (now - last_change) * rng.uniform(0.1, 0.9)
    return since, code_id, rng.choice(HOLD_NOTES) if needs_note else None


def _generate(rng: random.Random, n: int, first_order: int, first_event: int, partners: list[int],
              operators: list[int], now: datetime, codes: Codes | None = None,
              hold_names: dict[int, str] | None = None) -> tuple[list[tuple], list[tuple]]:
    codes = codes or Codes([], [], {})
    orders, events = [], []
    event_id = first_event
    for oid in range(first_order, first_order + n):
        partner = rng.choice(partners)
        created = now - timedelta(days=min(rng.expovariate(1 / 150), 720), seconds=rng.randrange(86400))
        steps = _walk(rng, created, now, codes)
        changes = [st for st in steps if st.kind == "status"]
        status, entered = changes[-1].new, changes[-1].at
        holder = rng.choice(operators) if operators and status in (S.IN_PRODUCTION, S.QUALITY_CHECK, S.PACKED) else None
        promised = (created + timedelta(days=21 + (rng.choice([0, 0, 0, 7, 14]) if rng.random() < 0.2 else 0))).date()
        hold = _hold(rng, steps[-1].at, now, codes.hold, codes.hold_weights) if status in OPEN_STATUSES else None
        if hold:
            steps.append(Step("hold", status, status, hold[0], code=hold[1], note=hold[2]))
        past_hold_seconds = sum(int((b.at - a.at).total_seconds()) for a, b in zip(steps, steps[1:])
                                if a.kind == "hold" and b.kind == "release")
        shipped_at = next((st.at for st in changes if st.new is S.SHIPPED), None)
        kept = _kept(status, promised, shipped_at)
        # The cause of a miss, recorded on the first status change after the order came within the
        # margin of its promised date (when the floor was asked), or on the shipment.
        late_reason, flagged_step = None, None
        if kept == "missed" or (status in OPEN_STATUSES and promised < now.date()):
            warned = datetime.combine(promised - timedelta(days=2), datetime.min.time(), tzinfo=now.tzinfo)
            flagged_step = next((st for st in changes if st.at >= warned), None)
            if flagged_step is not None:
                late_reason = _late_cause(rng, steps, codes, hold_names or {})
        orders.append((oid, partner, f"PO-{oid:08d}", rng.choice(PRODUCTS), rng.choice(MATERIALS),
                       rng.choice([1, 2, 5, 10, 20, 40, 50, 100, 250, 500]), None,
                       rng.choices([0, 1, 2, 3], weights=[5, 15, 65, 15])[0], promised, status.value, len(steps),
                       holder, created, steps[-1].at, hold[0] if hold else None, hold[1] if hold else None,
                       past_hold_seconds, entered, past_hold_seconds, shipped_at, kept, late_reason))
        for version, st in enumerate(steps, start=1):
            code = late_reason if st is flagged_step else st.code
            events.append((event_id, oid, partner, st.old.value if st.old else None, st.new.value, version,
                           "demo:loader", None, st.reason, st.at, st.kind, code, st.note))
            event_id += 1
    return orders, events


def _kept(status: S, promised, shipped_at: datetime | None) -> str | None:
    """Met or missed for a shipped order; open orders are projected after the load (forecast_all)."""
    if status not in (S.SHIPPED, S.DELIVERED):
        return None
    return promise_status(status, promised, promised, projected=None, shipped_on=shipped_at.date(),
                          margin_days=0).value


def _copy(raw_cursor, table: str, cols: list[str], rows: list[tuple]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    for row in rows:
        writer.writerow(["\\N" if v is None else (v.isoformat() if hasattr(v, "isoformat") else v) for v in row])
    buf.seek(0)
    raw_cursor.copy_expert(f"COPY {table} ({', '.join(cols)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buf)


def load_orders(engine: Engine, count: int, *, partners: int = 25, seed: int = 1,
                progress: Callable[[int], None] = lambda n: None, include_partners: list[str] = ()) -> Loaded:
    """Append `count` orders with their histories; run it on a quiet database (it picks ids itself).
    `include_partners` are among the partners that get orders (e.g. the demo partner)."""
    rng = random.Random(seed)
    now = utcnow()
    with Session(engine) as session:
        partner_ids = _partners(session, max(partners, len(include_partners)), list(include_partners))
        session.commit()
        operators = list(session.scalars(select(Operator.id).where(Operator.active)))
        next_order = (session.scalar(select(func.max(Order.id))) or 0) + 1
        next_event = (session.scalar(select(func.max(OrderEvent.id))) or 0) + 1
        active = list(session.scalars(select(ReasonCode).where(ReasonCode.active.is_(True))))
        holds = [c for c in active if c.kind == Kind.HOLD.value]
        codes = Codes(hold=[(c.id, c.requires_note) for c in holds],
                      hold_weights=[HOLD_WEIGHTS.get(c.code, 5) for c in holds],
                      late={c.code: c.id for c in active if c.kind == Kind.LATE.value})
        hold_names = {c.id: c.code for c in holds}
    loaded = Loaded()
    postgres = engine.dialect.name == "postgresql"
    while loaded.orders < count:
        n = min(BATCH, count - loaded.orders)
        orders, events = _generate(rng, n, next_order, next_event, partner_ids, operators, now, codes, hold_names)
        per_status: dict[str, int] = {}
        for row in orders:
            per_status[row[9]] = per_status.get(row[9], 0) + 1
        with engine.begin() as conn:
            if postgres:
                cursor = conn.connection.cursor()
                _copy(cursor, "orders", ORDER_COLS, orders)
                _copy(cursor, "order_events", EVENT_COLS, events)
            else:
                conn.execute(insert(Order.__table__), [dict(zip(ORDER_COLS, r)) for r in orders])
                conn.execute(insert(OrderEvent.__table__), [dict(zip(EVENT_COLS, r)) for r in events])
            for status, k in per_status.items():
                conn.execute(update(StatusCount).where(StatusCount.status == status)
                             .values(count=StatusCount.count + k))
        next_order += n
        next_event += len(events)
        loaded.orders += n
        loaded.events += len(events)
        progress(n)
    if postgres:
        with engine.begin() as conn:
            for table in ("orders", "order_events"):
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            conn.exec_driver_sql("ANALYZE orders")
            conn.exec_driver_sql("ANALYZE order_events")
    return loaded


DEMO_OPERATOR = ("demo", "demo-pass")
DEMO_SUPERVISOR = ("chief", "chief-pass")


def seed(session: Session, engine: Engine, order_count: int) -> Iterator[str]:
    """Accounts for trying the system out; keys are re-issued on every run (they are shown once)."""
    for (login, password), role in ((DEMO_OPERATOR, "operator"), (DEMO_SUPERVISOR, "supervisor")):
        if accounts.find_operator(session, login) is None:
            accounts.create_operator(session, login, password, role=role)
        yield f"{role} login: {login} / {password}"
    for name, scope, partner in (("demo-partner", "partner", "Demo Partner"), ("demo-crm", "crm", None)):
        client = session.scalar(select(ApiClient).where(ApiClient.name == name))
        issued = (accounts.issue_key(session, client) if client is not None
                  else accounts.create_client(session, name, scope=scope, partner_name=partner))
        yield f"{scope} API key ({name}): {issued.key}"
    if session.scalar(select(func.count()).select_from(Order)) == 0 and order_count > 0:
        loaded = load_orders(engine, order_count, partners=6, include_partners=["Demo Partner"])
        yield f"{loaded.orders} demo orders loaded"
        yield from forecast_all(session)
        yield from production_history(session, random.Random(2))
    session.commit()


def forecast_all(session: Session) -> Iterator[str]:
    """Norms from the loaded history, then every open order's projection and promise."""
    session.commit()  # a read begun before the load would not see it
    learned = forecast.recompute_norms(session)
    done = forecast.recompute_promises(session)
    yield f"{learned.norms} stage norms learned; {done.open_orders} open orders projected"


# Piece rates per product family in production (a raise for brackets two weeks ago) and quality check.
DEMO_RATES = {"BRKT": ("0.40", "0.45"), "FLNG": ("0.90", None), "SHAFT": ("1.20", None), "GEAR": ("1.75", None)}
DEMO_CHECK_RATE = "0.05"
RECORD_DAYS = 35


def production_history(session: Session, rng: random.Random) -> Iterator[str]:
    """Rates, and a production record for every order the demo's history sent to quality check in the
    last weeks (by the operator who moved it): so that "My work" and the ledger have figures to show."""
    now = utcnow()
    chief = accounts.find_operator(session, DEMO_SUPERVISOR[0])
    families = {family_of(p) for p in PRODUCTS}
    for family in sorted(families):
        first, raised = DEMO_RATES.get(family, ("0.60", None))
        rates = [(first, now - timedelta(days=120))] + ([(raised, now - timedelta(days=14))] if raised else [])
        for amount, start in rates:
            session.add(PieceRate(family=family, stage=Status.IN_PRODUCTION.value, per_piece=Decimal(amount),
                                  valid_from=start, set_by_id=chief.id, created_at=start))
        session.add(PieceRate(family=family, stage=Status.QUALITY_CHECK.value, per_piece=Decimal(DEMO_CHECK_RATE),
                              valid_from=now - timedelta(days=120), set_by_id=chief.id, created_at=now))
    defects = list(session.scalars(select(ReasonCode.id).where(ReasonCode.kind == Kind.DEFECT.value,
                                                                 ReasonCode.requires_note.is_(False))))
    demo = accounts.find_operator(session, DEMO_OPERATOR[0])
    moved = session.execute(select(OrderEvent.order_id, OrderEvent.operator_id, OrderEvent.created_at, Order.quantity)
                            .join(Order, Order.id == OrderEvent.order_id)
                            .where(OrderEvent.kind == "status", OrderEvent.to_status == Status.QUALITY_CHECK.value,
                                   OrderEvent.created_at > now - timedelta(days=RECORD_DAYS))).all()
    for order_id, operator_id, at, quantity in moved:
        scrap = rng.choice([0, 0, 0, 1, 2, 5]) if quantity > 20 else 0
        session.add(ProductionRecord(order_id=order_id, operator_id=operator_id or demo.id, kind="output",
                                     stage=Status.IN_PRODUCTION.value, good=quantity, scrap=scrap,
                                     defect_code_id=rng.choice(defects) if scrap else None,
                                     worked_seconds=int(quantity * rng.uniform(20, 60)), created_at=at))
    session.commit()
    yield f"{len(moved)} production records of the last {RECORD_DAYS} days, piece rates for {len(families)} families"
