"""The supervisors' flow board over HTTP, on both databases: a small factory with known stage times, ship
dates, promise statuses, holds and late reasons, and the numbers the board must show for it; the empty
factory; operators refused. On PostgreSQL, every board query is shown to have an index path."""
from __future__ import annotations

import html as html_lib
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import pytest
from conftest import cancel_reason, create_order
from sqlalchemy import event, select, update
from test_holds_ui import code_id, logged_in
from test_operator_ui import Browserless

from mes.domain.flow import start_of
from mes.domain.lifecycle import Status
from mes.models import Order, ReasonCode, utcnow
from mes.services import board as board_svc
from mes.services import holds as hold_svc
from mes.services import orders as order_svc
from mes.services.accounts import operator_actor

S = Status
DAY = timedelta(days=1)


# ----------------------------------------------------------------------------------------------- helpers
def text_of(fragment: str) -> str:
    return re.sub(r"\s+", " ", html_lib.unescape(re.sub(r"<[^>]+>", "", fragment))).strip()


def by_id(page: str, element_id: str) -> str:
    return text_of(re.search(rf'id="{element_id}"[^>]*>(.*?)</', page, re.S).group(1))


def row(page: str, attr: str, value: str) -> str:
    return re.search(rf'<tr[^>]*\b{attr}="{re.escape(value)}"[^>]*>(.*?)</tr>', page, re.S).group(1)


def cell(row_html: str, cls: str) -> str:
    return text_of(re.search(rf'<td class="[^"]*\b{cls}\b[^"]*">(.*?)</td>', row_html, re.S).group(1))


def section(page: str, element_id: str) -> str:
    return re.search(rf'<section[^>]*id="{element_id}".*?</section>', page, re.S).group(0)


def late_code(db, code: str, label: str) -> int:
    """A late reason (the migration seeds them; the test database is reset to the hold reasons alone)."""
    found = db.scalar(select(ReasonCode.id).where(ReasonCode.kind == "late", ReasonCode.code == code))
    if found is None:
        row_ = ReasonCode(kind="late", code=code, label=label, requires_note=False, active=True, sort_order=10)
        db.add(row_)
        db.commit()
        found = row_.id
    return found


def set_row(db, order_id: int, **values) -> None:
    db.execute(update(Order).where(Order.id == order_id).values(**values))
    db.commit()


# ----------------------------------------------------------------------------------------------- the floor
@dataclass
class Floor:
    now: datetime
    today: date
    ids: dict[str, int]
    late: dict[str, int]


@pytest.fixture
def floor(client, accounts_, db) -> Floor:
    """Five open orders, five shipped in the last 30 days (and one long before), one cancelled; holds and
    promise statuses on the open ones; late reasons on events in and out of the window."""
    boss = operator_actor(accounts_.operator("chief", "secret-pass", role="supervisor"))
    partners = {name: accounts_.partner(f"{name.lower()}-erp", partner=name) for name in ("Acme", "Bolt", "Cargo")}
    plan = {  # name: (partner, statuses after received)
        "r1": ("Acme", []), "r2": ("Bolt", []), "q1": ("Acme", [S.QUEUED]),
        "p1": ("Bolt", [S.QUEUED, S.IN_PRODUCTION]),
        "k1": ("Cargo", [S.QUEUED, S.IN_PRODUCTION, S.QUALITY_CHECK, S.PACKED]),
        **{s: ("Cargo", [S.QUEUED, S.IN_PRODUCTION, S.QUALITY_CHECK, S.PACKED, S.SHIPPED])
           for s in ("s1", "s2", "s3", "s4", "s5", "s6")},
        "c1": ("Acme", [S.CANCELLED]),
    }
    ids = {}
    for name, (partner, steps) in plan.items():
        ids[name] = create_order(client, partners[partner], reference=name.upper()).get_json()["id"]
        for target in steps:
            order_svc.change_status(db, boss, ids[name], target, cancel_reason_id=cancel_reason(db)
                                    if target is S.CANCELLED else None)
    order_svc.change_status(db, boss, ids["s5"], S.DELIVERED)  # delivered orders shipped too
    holds = (("r1", "machine_down", timedelta(hours=2)), ("q1", "machine_down", timedelta(minutes=30)),
             ("p1", "tooling", timedelta(days=1, hours=3)))
    for name, reason, _ in holds:
        hold_svc.put_on_hold(db, boss, ids[name], code_id(db, reason))

    # What the services wrote, moved to known times (after every service call, which may refresh them).
    now = utcnow()
    today = now.date()
    noon = {k: start_of(today - k * DAY) + timedelta(hours=12) for k in (1, 13, 20, 40)}
    # Stage entry (the oldest per stage) and promise status of the open orders.
    set_row(db, ids["r1"], stage_entered_at=now - timedelta(days=3, hours=2), promise_status="at_risk")
    set_row(db, ids["r2"], stage_entered_at=now - timedelta(days=1), promise_status=None)  # not forecast yet
    set_row(db, ids["q1"], stage_entered_at=now - timedelta(hours=5), promise_status="late")
    set_row(db, ids["p1"], stage_entered_at=now - timedelta(days=2), promise_status="at_risk")
    set_row(db, ids["k1"], stage_entered_at=now - timedelta(hours=6), promise_status="on_track")
    # Shipments: (shipped at, lead days, promised date); s1 and s2 keep the time the service recorded.
    shipped = {"s1": (None, 2, today), "s2": (None, 4, today - DAY), "s3": (noon[1], 6, today + 5 * DAY),
               "s4": (noon[13], 8, today - 13 * DAY), "s5": (noon[20], 10, today - 25 * DAY),
               "s6": (noon[40], 1, today - 40 * DAY)}
    for name, (at, lead, promised) in shipped.items():
        at = at or db.get(Order, ids[name]).shipped_at
        set_row(db, ids[name], shipped_at=at, created_at=at - lead * DAY, promised_date=promised,
                promise_status="met" if at.date() <= promised else "missed")
    for name, _, ago in holds:
        set_row(db, ids[name], hold_since=now - ago)
    # The causes recorded on the orders: material shortage on the three open orders at risk or late,
    # machine down on the two shipped late in the window; capacity on one shipped late before the window
    # and on one back on track (the service clears it then; here it shows that such an order is not counted).
    late = {code: late_code(db, code, label) for code, label in (
        ("material_shortage", "Material shortage"), ("machine_down", "Machine down"), ("capacity", "Capacity"))}
    for name, code in (("r1", "material_shortage"), ("q1", "material_shortage"), ("p1", "material_shortage"),
                       ("s2", "machine_down"), ("s5", "machine_down"), ("s6", "capacity"), ("k1", "capacity")):
        set_row(db, ids[name], late_reason_id=late[code])
    return Floor(now=now, today=today, ids=ids, late=late)


@pytest.fixture
def chief_page(client, floor):
    """The board as the supervisor who made the floor sees it."""
    assert Browserless(client).login("chief", "secret-pass").status_code == 302
    r = client.get("/operator/board")
    assert r.status_code == 200
    return r.get_data(as_text=True)


# ----------------------------------------------------------------------------------------------- numbers
def test_work_in_progress_per_stage_and_the_oldest_order_of_each(floor, chief_page, db):
    page, ids = chief_page, floor.ids
    wip = {s: cell(row(page, "data-stage", s), "wip-count") for s in
           ("received", "queued", "in_production", "quality_check", "packed")}
    assert wip == {"received": "2", "queued": "1", "in_production": "1", "quality_check": "0", "packed": "1"}
    assert by_id(page, "wip-total") == "5"  # the cancelled and the shipped orders are not work in progress
    received = row(page, "data-stage", "received")
    assert f'href="/operator/orders/{ids["r1"]}"' in received and cell(received, "age") == "3d 2h"
    assert cell(row(page, "data-stage", "queued"), "age") == "5h 0m"
    assert cell(row(page, "data-stage", "quality_check"), "oldest") == "\u2014"  # an empty stage

    data = board_svc.board(db, utcnow())
    assert [(w.stage, w.count, w.oldest_id) for w in data.wip] == [
        (S.RECEIVED, 2, ids["r1"]), (S.QUEUED, 1, ids["q1"]), (S.IN_PRODUCTION, 1, ids["p1"]),
        (S.QUALITY_CHECK, 0, None), (S.PACKED, 1, ids["k1"])]


def test_throughput_lead_time_and_on_time_rate_over_their_windows(floor, chief_page, db):
    page, today = chief_page, floor.today
    days = dict(re.findall(r'data-day="([0-9-]+)" data-count="(\d+)"', page))
    assert len(days) == 14 and min(days) == (today - 13 * DAY).isoformat() and max(days) == today.isoformat()
    shipped = {today: "2", today - DAY: "1", today - 13 * DAY: "1"}  # s6 (40 days) and s5 (20 days) are older
    assert days == {(today - k * DAY).isoformat(): shipped.get(today - k * DAY, "0") for k in range(14)}
    assert by_id(page, "shipped-total") == "4"
    assert f"<title>{today.strftime('%a')} {today.isoformat()}: 2 shipped</title>" in page  # readable numbers

    # Lead times of the five orders shipped in 30 days: 2, 4, 6, 8 and 10 days.
    assert (by_id(page, "lead-p50"), by_id(page, "lead-p85"), by_id(page, "lead-p95")) == ("6.0", "8.8", "9.6")
    assert by_id(page, "lead-count") == "5"
    # On time: s1 (on the day), s3 (early) and s4 (on the day); s2 and s5 shipped after their date.
    assert (by_id(page, "on-time-rate"), by_id(page, "on-time-count"), by_id(page, "shipped-count")) == (
        "60.0%", "3", "5")
    assert by_id(page, "shipped-late") == "2"

    data = board_svc.board(db, utcnow())
    assert data.lead_time.count == 5 and data.lead_time.p50 == pytest.approx(6.0, abs=1e-3)
    assert data.lead_time.p95 == pytest.approx(9.6, abs=1e-3)
    assert (data.on_time.on_time, data.on_time.shipped) == (3, 5)


def test_orders_at_risk_by_stage_and_partner_with_the_queue_link(floor, chief_page):
    page = section(chief_page, "at-risk")
    assert (by_id(page, "at-risk-count"), by_id(page, "late-count")) == ("2", "1")
    assert 'id="at-risk-link" href="/operator/?promise=at_risk"' in page
    assert 'id="late-link" href="/operator/?promise=late"' in page
    stages = {s: (cell(row(page, "data-stage", s), "at-risk"), cell(row(page, "data-stage", s), "late"))
              for s in re.findall(r'data-stage="(\w+)"', page)}
    assert stages == {"received": ("1", "0"), "queued": ("0", "1"), "in_production": ("1", "0")}
    assert re.findall(r'data-partner="([^"]+)"', page) == ["Acme", "Bolt"]  # most first; Cargo is on track
    acme = row(page, "data-partner", "Acme")
    assert (cell(acme, "at-risk"), cell(acme, "late")) == ("1", "1")
    assert by_id(page, "unforecast") == "1 open order without a forecast yet is not counted."


def test_holds_by_reason_and_the_pareto_of_late_reasons(floor, chief_page, db):
    ids = floor.ids
    holds = section(chief_page, "holds")
    assert re.findall(r'data-reason="(\w+)"', holds) == ["machine_down", "tooling"]  # most held first
    machine = row(holds, "data-reason", "machine_down")
    assert cell(machine, "hold-count") == "2" and cell(machine, "age") == "2h 0m"
    assert f'href="/operator/orders/{ids["r1"]}"' in machine  # the oldest of the two holds
    assert 'href="/operator/?reason=machine_down"' in machine
    tooling = row(holds, "data-reason", "tooling")
    assert cell(tooling, "hold-count") == "1" and cell(tooling, "age") == "1d 3h"
    assert by_id(holds, "holds-total") == "3"

    pareto = section(chief_page, "late-reasons")
    rows = [(r, cell(row(pareto, "data-reason", r), "count"), cell(row(pareto, "data-reason", r), "share"),
             cell(row(pareto, "data-reason", r), "cumulative")) for r in re.findall(r'data-reason="([^"]+)"', pareto)]
    assert rows == [("Material shortage", "3", "60%", "60%"), ("Machine down", "2", "40%", "100%")]
    assert re.findall(r'<tr data-reason="[^"]+" class="(\w*)"', pareto) == ["vital", "vital"]
    spans = re.findall(r'<rect class="span" x="([0-9.]+)" y="0" width="([0-9.]+)"', pareto)
    assert [(float(x), float(w)) for x, w in spans] == pytest.approx([(0, 60), (60, 40)], abs=0.01)

    data = board_svc.board(db, utcnow())
    assert [(r.label, r.count) for r in data.late_reasons] == [("Material shortage", 3), ("Machine down", 2)]
    assert [h.code for h in data.holds] == ["machine_down", "tooling"] and data.holds[0].oldest_id == ids["r1"]


# ----------------------------------------------------------------------------------------------- edges
def test_an_empty_factory_gets_empty_states_and_no_error(client, accounts_, db):
    logged_in(client, accounts_, "chief", role="supervisor")
    r = client.get("/operator/board")
    page = r.get_data(as_text=True)
    assert r.status_code == 200
    for message in ("No open orders: every stage is empty.", "No order is on hold.",
                    "No orders shipped in the last 14 days.",
                    "No orders shipped in the last 30 days: no lead time to show.",
                    "No orders shipped in the last 30 days: no on-time rate yet.",
                    "No open order is at risk or late.",
                    "No order shipped late in the last 30 days, and none is at risk or late now."):
        assert message in page, message
    assert len(re.findall(r'data-count="0"', page)) == 14  # the chart still shows the fourteen days
    assert "unforecast" not in page and "nan" not in page.lower().split()


def test_operators_get_a_readable_403_and_no_link_to_the_board(client, accounts_):
    logged_in(client, accounts_, "olga")
    r = client.get("/operator/board")
    assert r.status_code == 403 and "Only a supervisor may see the flow board." in r.get_data(as_text=True)
    assert "Flow board" not in client.get("/operator/").get_data(as_text=True)


def test_the_board_needs_a_login(client):
    r = client.get("/operator/board")
    assert r.status_code == 302 and "/operator/login" in r.headers["Location"]


def test_supervisors_find_the_board_in_the_navigation(client, accounts_):
    logged_in(client, accounts_, "chief", role="supervisor")
    assert '<a href="/operator/board">Flow board</a>' in client.get("/operator/").get_data(as_text=True)


# ----------------------------------------------------------------------------------------------- plans
ALLOWED_INDEXES = {"ix_orders_stage_entered", "ix_orders_promise_queue", "ix_orders_shipped_at",
                   "ix_orders_on_hold_queue", "ix_order_events_created",
                   # The queue's partial indexes hold the open orders only, as the board's own do: the
                   # planner may take one of them for a capped count when their costs come out close.
                   "ix_orders_open_queue", "ix_orders_urgent_queue", "ix_orders_projected_queue"}


def scans(plan: dict) -> list[tuple[str, str, str | None]]:
    """(node type, table, index) of every scan in an EXPLAIN (FORMAT JSON) plan, bitmap scans with the
    index under them."""
    found = []
    node_type, children = plan["Node Type"], plan.get("Plans", [])
    if "Relation Name" in plan:
        index = plan.get("Index Name")
        if node_type == "Bitmap Heap Scan":
            index = ",".join(c.get("Index Name", "?") for c in children)
        found.append((node_type, plan["Relation Name"], index))
    for child in children:
        found.extend(scans(child))
    return found


@pytest.mark.postgresql_only
def test_every_board_query_reads_an_index_of_the_board_never_the_whole_table(floor, db):
    """With sequential scans priced out, each query must still find one of the board's indexes on orders
    and order_events (a query without one would fall back to a sequential or a full index scan)."""
    statements = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    engine = db.get_bind()
    event.listen(engine, "before_cursor_execute", capture)
    try:
        board_svc.board(db, utcnow())
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    db.rollback()
    conn = db.connection()
    # Plans from the data's own statistics, not from whatever autovacuum last saw (or had not yet seen).
    conn.exec_driver_sql("ANALYZE orders, order_events")
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    checked = 0
    for statement, parameters in statements:
        if not re.search(r"\bFROM (orders|order_events)\b", statement):
            continue
        plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).scalar()[0]["Plan"]
        for node_type, table, index in scans(plan):
            if table in ("orders", "order_events"):
                assert node_type != "Seq Scan" and index in ALLOWED_INDEXES, (statement, node_type, table, index)
                checked += 1
    db.rollback()
    assert checked >= 12  # five stages, shipments twice, at risk, unforecast, holds twice, late reasons



def test_the_board_shows_the_latest_forecast_check(client, accounts_, db, app):
    from mes.demo import load_orders
    from mes.services import backtest, forecast
    load_orders(app.extensions["mes_engine"], 300, partners=3, seed=3)
    forecast.recompute_norms(db)
    accounts_.operator("chief", "secret-pass", role="supervisor")
    Browserless(client).login("chief", "secret-pass")
    assert "No backtest yet" in client.get("/operator/board").get_data(as_text=True)
    check = backtest.backtest(db, days=60)
    page = client.get("/operator/board").get_data(as_text=True)
    assert f'id="check-mae">{check.mean_abs_error_days:.1f}<' in page
    assert f'id="check-flagged">{check.flagged_in_time}<' in page
