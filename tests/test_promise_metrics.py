"""The promise as on-call sees it, app side: shipping an order counts it as met or missed and observes its
lead time (mes_orders_shipped_total, mes_order_lead_time_days in the app's /metrics)."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from conftest import create_order
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from mes.models import Order, utcnow

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

    def ship(self, order_id: int) -> None:
        self.post(order_id, "claim")
        for version, target in enumerate(TO_SHIPPED, start=1):
            html = self.post(order_id, "status", target=target, version=version)
            assert f"is now {target.replace('_', ' ')}" in html, html[-2000:]


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
    floor.ship(late)
    floor.ship(on_the_day)
    metrics = samples(client)
    assert value(metrics, "mes_orders_shipped_total", promise="missed") == 1
    assert value(metrics, "mes_orders_shipped_total", promise="met") == 1  # the promised day itself is in time
    assert value(metrics, "mes_order_lead_time_days_count") == 2
    assert value(metrics, "mes_order_lead_time_days_bucket", le="14.0") == 0
    assert value(metrics, "mes_order_lead_time_days_bucket", le="21.0") == 1   # 20.5 days
    assert value(metrics, "mes_order_lead_time_days_bucket", le="28.0") == 1
    assert value(metrics, "mes_order_lead_time_days_bucket", le="35.0") == 2   # 30.5 days
    assert 50.9 < value(metrics, "mes_order_lead_time_days_sum") < 51.1
