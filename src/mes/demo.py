"""Demo data: a realistic spread of orders, loaded in batches (COPY on PostgreSQL).

Each order walks the lifecycle with jittered stage durations from a random creation time,
so that recent orders are still open, old ones are delivered, and some are overdue; a few open
orders are on hold for one of the hold reasons, as the shop floor would have put them.
"""
from __future__ import annotations

import csv
import io
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .domain.forecast import promise_status
from .domain.lifecycle import OPEN_STATUSES, Status
from .domain.reason_codes import Kind
from .models import ApiClient, Operator, Order, OrderEvent, Partner, ReasonCode, StatusCount, utcnow
from .services import accounts, forecast

S = Status
BATCH = 20_000
# Typical days spent in each stage; each order gets them scaled by a random factor.
STAGE_DAYS = [(S.RECEIVED, 0.5), (S.QUEUED, 3.0), (S.IN_PRODUCTION, 8.0), (S.QUALITY_CHECK, 1.5),
              (S.PACKED, 1.5), (S.SHIPPED, 4.0)]
PRODUCTS = ["BRKT-200", "BRKT-210", "FLNG-40", "FLNG-65", "SHAFT-12", "SHAFT-20", "GEAR-Z32", "GEAR-Z48",
            "HOUS-A1", "HOUS-B2", "PLATE-300", "PLATE-600", "BUSH-8", "BUSH-16", "VALVE-DN25", "PIN-6"]
MATERIALS = ["steel S235", "steel S355", "stainless 1.4301", "aluminium 6061", "brass CuZn39", "cast iron GG25"]
PARTNER_NAMES = ["Nordwerk", "Baltic Machines", "Ural Components", "Kama Trucks", "Volga Pumps", "Severtech",
                 "Irtysh Agro", "Don Hydraulics", "Oka Motors", "Ladoga Marine", "Altai Mining", "Sayan Energy"]
ORDER_COLS = ["id", "partner_id", "reference", "product", "material", "quantity", "notes", "priority",
              "promised_date", "status", "status_version", "holder_id", "created_at", "updated_at",
              "hold_since", "hold_reason_id", "hold_seconds", "stage_entered_at", "stage_hold_base", "shipped_at",
              "promise_status"]
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


def _walk(rng: random.Random, created: datetime, now: datetime) -> list[tuple[S | None, S, datetime, str | None]]:
    """The status changes of one order up to now: (from, to, when, reason)."""
    changes: list[tuple[S | None, S, datetime, str | None]] = [(None, S.RECEIVED, created, None)]
    t = created
    rework = rng.random() < 0.05
    for status, days in STAGE_DAYS:
        t = t + timedelta(days=days * rng.uniform(0.4, 2.2))
        if t > now:
            break
        if status in (S.RECEIVED, S.QUEUED) and rng.random() < 0.015:
            changes.append((status, S.CANCELLED, t, "cancelled by the partner"))
            break
        nxt = S.DELIVERED if status is S.SHIPPED else STAGE_DAYS[[s for s, _ in STAGE_DAYS].index(status) + 1][0]
        if status is S.QUALITY_CHECK and rework:
            changes.append((S.QUALITY_CHECK, S.IN_PRODUCTION, t, "surface defect, regrind"))
            t = t + timedelta(days=2 * rng.uniform(0.5, 1.5))
            if t > now:
                break
            changes.append((S.IN_PRODUCTION, S.QUALITY_CHECK, t, None))
            rework = False
            t = t + timedelta(days=1)
            if t > now:
                break
        changes.append((status, nxt, t, None))
    return changes


def _hold(rng: random.Random, last_change: datetime, now: datetime,
          hold_codes: list[tuple[int, bool]]) -> tuple[datetime, int, str | None] | None:
    """A current hold for a share of open orders: (since, reason code id, note)."""
    if not hold_codes or rng.random() >= HOLD_SHARE:
        return None
    code_id, needs_note = rng.choice(hold_codes)
    since = last_change + (now - last_change) * rng.uniform(0.1, 0.9)
    return since, code_id, rng.choice(HOLD_NOTES) if needs_note else None


def _generate(rng: random.Random, n: int, first_order: int, first_event: int, partners: list[int],
              operators: list[int], now: datetime,
              hold_codes: list[tuple[int, bool]] = ()) -> tuple[list[tuple], list[tuple]]:
    orders, events = [], []
    event_id = first_event
    for oid in range(first_order, first_order + n):
        partner = rng.choice(partners)
        created = now - timedelta(days=min(rng.expovariate(1 / 150), 720), seconds=rng.randrange(86400))
        changes = _walk(rng, created, now)
        status = changes[-1][1]
        holder = rng.choice(operators) if operators and status in (S.IN_PRODUCTION, S.QUALITY_CHECK, S.PACKED) else None
        promised = (created + timedelta(days=21 + (rng.choice([0, 0, 0, 7, 14]) if rng.random() < 0.2 else 0))).date()
        hold = _hold(rng, changes[-1][2], now, list(hold_codes)) if status in OPEN_STATUSES else None
        version, updated = len(changes) + (1 if hold else 0), hold[0] if hold else changes[-1][2]
        shipped_at = next((when for _, new, when, _ in changes if new is S.SHIPPED), None)
        orders.append((oid, partner, f"PO-{oid:08d}", rng.choice(PRODUCTS), rng.choice(MATERIALS),
                       rng.choice([1, 2, 5, 10, 20, 40, 50, 100, 250, 500]), None,
                       rng.choices([0, 1, 2, 3], weights=[5, 15, 65, 15])[0], promised, status.value, version,
                       holder, created, updated, hold[0] if hold else None, hold[1] if hold else None, 0,
                       changes[-1][2], 0, shipped_at, _kept(status, promised, shipped_at)))
        for version, (old, new, when, reason) in enumerate(changes, start=1):
            events.append((event_id, oid, partner, old.value if old else None, new.value, version,
                           "demo:loader", None, reason, when, "status", None, None))
            event_id += 1
        if hold:
            events.append((event_id, oid, partner, status.value, status.value, len(changes) + 1,
                           "demo:loader", None, None, hold[0], "hold", hold[1], hold[2]))
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
        hold_codes = [(c.id, c.requires_note) for c in session.scalars(
            select(ReasonCode).where(ReasonCode.kind == Kind.HOLD.value, ReasonCode.active.is_(True)))]
    loaded = Loaded()
    postgres = engine.dialect.name == "postgresql"
    while loaded.orders < count:
        n = min(BATCH, count - loaded.orders)
        orders, events = _generate(rng, n, next_order, next_event, partner_ids, operators, now, hold_codes)
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
    session.commit()


def forecast_all(session: Session) -> Iterator[str]:
    """Norms from the loaded history, then every open order's projection and promise."""
    learned = forecast.recompute_norms(session)
    done = forecast.recompute_promises(session)
    yield f"{learned.norms} stage norms learned; {done.open_orders} open orders projected"
