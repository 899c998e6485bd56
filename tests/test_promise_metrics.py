"""The promise as on-call sees it. App side: shipping an order counts it as met or missed and observes its
lead time (mes_orders_shipped_total, mes_order_lead_time_days in the app's /metrics). Database side: the
promise's queries of postgres_exporter (monitoring/postgres_exporter_queries.yml, mes_*), run as a role
with only the grants `mes migrate` gives the exporter's role."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
import yaml
from conftest import ROOT, create_order
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.exc import ProgrammingError

from mes.domain.lifecycle import Status
from mes.domain.reason_codes import DEFAULT_HOLD_REASONS
from mes.migrate import grant_monitor_role
from mes.models import JobLease, Order, ReasonCode, utcnow
from mes.services import holds
from mes.services import orders as svc
from mes.services.accounts import operator_actor

TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')
TO_SHIPPED = ["queued", "in_production", "quality_check", "packed", "shipped"]


class Floor:
    """A logged-in operator moving orders with the order page's forms (CSRF token from the page)."""

    def __init__(self, client):
        self.client = client
        page = client.get("/operator/login").get_data(as_text=True)
        r = client.post("/operator/login", data={"login": "olga", "password": "secret-pass",
                                                 "csrf_token": TOKEN.search(page).group(1)})
        assert r.status_code == 302

    def post(self, order_id: int, action: str, **data) -> str:
        page = f"/operator/orders/{order_id}"
        token = TOKEN.search(self.client.get(page).get_data(as_text=True)).group(1)
        r = self.client.post(f"{page}/{action}", data={**data, "csrf_token": token}, follow_redirects=True)
        return r.get_data(as_text=True)

    def ship(self, order_id: int, late_reason: int | None = None) -> None:
        """Claim and move to shipped; `late_reason`: the cause, where moving a late order asks for one."""
        self.post(order_id, "claim")
        extra = {"late_reason": late_reason} if late_reason is not None else {}
        for version, target in enumerate(TO_SHIPPED[:-1], start=1):
            html = self.post(order_id, "status", target=target, version=version, **extra)
            assert f"is now {target.replace('_', ' ')}" in html, html[-2000:]
        # Shipping records the shipment (the order of conftest's NEW_ORDER: 10 pieces).
        html = self.post(order_id, "ship", carrier="DHL", packages=1, quantity=10, version=len(TO_SHIPPED), **extra)
        assert f"Order {order_id} shipped" in html, html[-2000:]


@pytest.fixture
def floor(client, accounts_) -> Floor:
    accounts_.operator("olga", "secret-pass")
    return Floor(client)


def samples(client) -> dict[tuple[str, frozenset], float]:
    text = client.get("/metrics").get_data(as_text=True)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: dict, name: str, **labels) -> float:
    """The sample of `name` whose labels include `labels` (the app adds none of its own to these)."""
    found = [v for (n, ls), v in metrics.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_both_promise_outcomes_are_exported_before_anything_ships(client):
    metrics = samples(client)
    assert value(metrics, "mes_orders_shipped_total", promise="met") == 0
    assert value(metrics, "mes_orders_shipped_total", promise="missed") == 0
    assert value(metrics, "mes_order_lead_time_days_count") == 0
    buckets = sorted(float(dict(ls)["le"]) for (n, ls), _ in metrics.items() if n == "mes_order_lead_time_days_bucket")
    assert buckets == [3, 7, 14, 21, 28, 35, 42, 63, 90, float("inf")]


def test_an_order_shipped_by_its_promised_date_counts_as_met_with_its_lead_time(client, accounts_, floor):
    oid = create_order(client, accounts_.partner()).get_json()["id"]
    floor.ship(oid)
    metrics = samples(client)
    assert value(metrics, "mes_orders_shipped_total", promise="met") == 1
    assert value(metrics, "mes_orders_shipped_total", promise="missed") == 0
    assert value(metrics, "mes_order_lead_time_days_count") == 1
    assert value(metrics, "mes_order_lead_time_days_bucket", le="3.0") == 1  # shipped the day it came in
    assert 0 <= value(metrics, "mes_order_lead_time_days_sum") < 0.01
    # Only shipping counts: delivering it afterwards changes neither.
    html = floor.post(oid, "status", target="delivered", version=6)
    assert "is now delivered" in html
    after = samples(client)
    assert value(after, "mes_orders_shipped_total", promise="met") == 1
    assert value(after, "mes_order_lead_time_days_count") == 1


def test_an_order_shipped_after_its_promised_date_counts_as_missed(client, accounts_, floor, db):
    partner = accounts_.partner()
    late = create_order(client, partner, reference="LATE-1").get_json()["id"]
    on_the_day = create_order(client, partner, reference="DUE-1").get_json()["id"]
    received = utcnow() - timedelta(days=30, hours=12)
    db.execute(update(Order).where(Order.id == late).values(
        created_at=received, promised_date=(received + timedelta(days=21)).date()))
    db.execute(update(Order).where(Order.id == on_the_day).values(
        created_at=utcnow() - timedelta(days=20, hours=12), promised_date=utcnow().date()))
    db.commit()
    cause = db.scalar(select(ReasonCode.id).where(ReasonCode.kind == "late").limit(1))  # None if none seeded
    floor.ship(late, late_reason=cause)
    floor.ship(on_the_day, late_reason=cause)
    metrics = samples(client)
    assert value(metrics, "mes_orders_shipped_total", promise="missed") == 1
    assert value(metrics, "mes_orders_shipped_total", promise="met") == 1  # the promised day itself is in time
    assert value(metrics, "mes_order_lead_time_days_count") == 2
    assert value(metrics, "mes_order_lead_time_days_bucket", le="14.0") == 0
    assert value(metrics, "mes_order_lead_time_days_bucket", le="21.0") == 1   # 20.5 days
    assert value(metrics, "mes_order_lead_time_days_bucket", le="28.0") == 1
    assert value(metrics, "mes_order_lead_time_days_bucket", le="35.0") == 2   # 30.5 days
    assert 50.9 < value(metrics, "mes_order_lead_time_days_sum") < 51.1


# ------------------------------------------------------------------------ the database side (postgres_exporter)
QUERIES = yaml.safe_load((ROOT / "monitoring" / "postgres_exporter_queries.yml").read_text())
PROMISE_QUERIES = {name: q for name, q in QUERIES.items() if name.startswith("mes_")}
MONITOR = ("mes_monitor_test", "monitor-pw")


def exported(conn, namespace: str) -> dict[tuple, dict[str, float]]:
    """What postgres_exporter makes of a query: per label values, `<namespace>_<column>` -> value."""
    spec = PROMISE_QUERIES[namespace]
    columns = {name: how["usage"] for metric in spec["metrics"] for name, how in metric.items()}
    out = {}
    for row in conn.execute(text(spec["query"])).mappings():
        key = tuple(row[c] for c, usage in columns.items() if usage == "LABEL")
        out[key] = {f"{namespace}_{c}": float(row[c]) for c, usage in columns.items() if usage != "LABEL"}
    return out


@pytest.fixture
def monitor_engine(backend, postgres_server):
    """The exporter's role as production has it: CONNECT on the database (roles.sql.j2), the promise's
    columns granted by `mes migrate` (mes.migrate.grant_monitor_role), nothing else."""
    name, password = MONITOR
    postgres_server.psql(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN "
                         f"CREATE ROLE {name} LOGIN PASSWORD '{password}'; END IF; END $$;\n"
                         f"GRANT CONNECT ON DATABASE mes TO {name};\n")
    grant_monitor_role(backend.owner_url, name)
    engine = create_engine(postgres_server.url(name, password, "mes"))
    yield engine
    engine.dispose()


def move(db, actor, order_id: int, *targets: str) -> None:
    for target in targets:
        svc.change_status(db, actor, order_id, Status(target))


@pytest.mark.postgresql_only
def test_the_exporters_promise_queries_count_flow_holds_and_shipments(client, accounts_, db, monitor_engine):
    partner = accounts_.partner()
    olga = operator_actor(accounts_.operator("olga", "secret-pass"))
    ids = {ref: create_order(client, partner, reference=ref).get_json()["id"]
           for ref in ("NEW", "RISK", "HELD", "ON-TIME", "LATE", "OLD")}
    for ref in ("RISK", "HELD", "ON-TIME", "LATE", "OLD"):
        svc.claim(db, olga, ids[ref])
        move(db, olga, ids[ref], "queued")
    for ref in ("ON-TIME", "LATE", "OLD"):
        move(db, olga, ids[ref], "in_production", "quality_check", "packed", "shipped")
    machine_down = db.scalar(select(ReasonCode.id).where(ReasonCode.kind == "hold", ReasonCode.code == "machine_down"))
    holds.put_on_hold(db, olga, ids["HELD"], machine_down)
    now, today = utcnow(), utcnow().date()
    day = timedelta(days=1)
    for ref, values in {
        "NEW": {"promise_status": None},
        "RISK": {"promise_status": "at_risk", "stage_entered_at": now - 3 * day},
        "HELD": {"promise_status": "at_risk", "stage_entered_at": now - 5 * day, "hold_since": now - 2 * day,
                 "promised_date": today - day},  # past its date: late, whatever the forecast said
        "LATE": {"created_at": now - 30 * day, "promised_date": today - 9 * day},
        "OLD": {"shipped_at": now - 40 * day},
    }.items():
        db.execute(update(Order).where(Order.id == ids[ref]).values(**values))
    db.commit()

    with monitor_engine.connect() as conn:
        flow = exported(conn, "mes_flow")
        assert set(flow) == {("received",), ("queued",), ("in_production",), ("quality_check",), ("packed",)}
        assert {k[0]: v["mes_flow_wip"] for k, v in flow.items()} == {
            "received": 1, "queued": 2, "in_production": 0, "quality_check": 0, "packed": 0}
        queued = flow[("queued",)]
        assert 5 * 86400 <= queued["mes_flow_oldest_age_seconds"] < 5 * 86400 + 60
        assert 3 * 86400 <= queued["mes_flow_oldest_unheld_age_seconds"] < 3 * 86400 + 60
        assert (queued["mes_flow_at_risk"], queued["mes_flow_late"]) == (1, 1)
        assert 0 <= flow[("received",)]["mes_flow_oldest_age_seconds"] < 60
        assert flow[("packed",)] == {"mes_flow_wip": 0, "mes_flow_oldest_age_seconds": 0,
                                     "mes_flow_oldest_unheld_age_seconds": 0, "mes_flow_at_risk": 0, "mes_flow_late": 0}

        held = exported(conn, "mes_flow_hold")
        assert {k[0] for k in held} == {seed.code for seed in DEFAULT_HOLD_REASONS}
        assert held[("machine_down",)]["mes_flow_hold_orders"] == 1
        assert 2 * 86400 <= held[("machine_down",)]["mes_flow_hold_oldest_age_seconds"] < 2 * 86400 + 60
        assert sum(v["mes_flow_hold_orders"] for v in held.values()) == 1

        assert {k[0]: v["mes_promise_open_orders"] for k, v in exported(conn, "mes_promise_open").items()} == {
            "on_track": 0, "at_risk": 1, "late": 1, "unknown": 1}
        assert exported(conn, "mes_promise_shipped") == {
            (): {"mes_promise_shipped_last_30d": 2, "mes_promise_shipped_on_time_last_30d": 1}}

        # The scheduler's jobs: one never run, one overdue, one failed.
        now = utcnow()
        for name, due, ok in (("fresh", now + timedelta(minutes=5), None), ("stuck", now - timedelta(minutes=20), True),
                              ("broken", now + timedelta(hours=1), False)):
            db.add(JobLease(name=name, next_run_at=due, finished_at=None if ok is None else now - timedelta(minutes=1),
                            last_ok=ok))
        db.commit()
        jobs = exported(conn, "mes_job")
        assert jobs[("fresh",)] == {"mes_job_seconds_since_run": -1, "mes_job_last_ok": 1, "mes_job_overdue_seconds": 0}
        assert 1190 < jobs[("stuck",)]["mes_job_overdue_seconds"] < 1300 and jobs[("stuck",)]["mes_job_last_ok"] == 1
        assert jobs[("broken",)]["mes_job_last_ok"] == 0 and 55 < jobs[("broken",)]["mes_job_seconds_since_run"] < 120

        # The role reads what these queries need and nothing of partners, references or notes.
        for column in ("reference", "notes", "partner_id"):
            with pytest.raises(ProgrammingError, match="permission denied"):
                conn.execute(text(f"SELECT {column} FROM orders LIMIT 1"))
            conn.rollback()


def test_every_promise_query_is_cached_and_run_once_per_server():
    assert set(PROMISE_QUERIES) == {"mes_flow", "mes_flow_hold", "mes_promise_open", "mes_promise_shipped", "mes_job"}
    for name, spec in PROMISE_QUERIES.items():
        assert spec["master"] is True and spec["cache_seconds"] > 0, name
        for metric in spec["metrics"]:
            (column, how), = metric.items()
            assert re.search(rf"\b{column}\b", spec["query"]), (name, column)
            assert how["usage"] in ("LABEL", "GAUGE") and how["description"], (name, column)
