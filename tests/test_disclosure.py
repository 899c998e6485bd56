"""What the shop floor writes stays inside: API keys see a fixed phrase per transition, operators the note."""
from __future__ import annotations

import json

import pytest
from conftest import auth, cancel_reason, create_order
from test_operator_ui import Browserless

from sqlalchemy import select

from mes.api.routes import OPENAPI
from mes.domain.disclosure import partner_reason
from mes.domain.lifecycle import TRANSITIONS, Status
from mes.domain.webhooks import SUBSCRIBABLE
from mes.models import WebhookEvent

REWORK_NOTE = "Weld porosity again, night shift skipped the preheat"
CANCEL_NOTE = "Cancelled: their account is on credit hold"


@pytest.fixture
def chief(client, accounts_):
    """A supervisor in the operator UI (may make every move, cancellations included)."""
    accounts_.operator("chief", "chief-pass", role="supervisor")
    browser = Browserless(client)
    assert browser.login("chief", "chief-pass").status_code == 302
    return browser


def move(browser, order_id: int, steps: list[tuple[str, str | None]]) -> None:
    page = f"/operator/orders/{order_id}"
    for version, (target, reason) in enumerate(steps, start=1):
        data = {"target": target, "version": version, **({"reason": reason} if reason else {})}
        html = browser.post(f"{page}/status", page, **data).get_data(as_text=True)
        assert "Nothing was changed" not in html and "changed meanwhile" not in html, html


def cancel(browser, order_id: int, reason_id: int, note: str) -> None:
    """A supervisor's cancel from its confirmation page, with a cancel reason and an internal note."""
    page = f"/operator/orders/{order_id}"
    html = browser.post(f"{page}/cancel", page, cancel_reason=reason_id, note=note, version=1).get_data(as_text=True)
    assert "is cancelled" in html, html


def every_api_read(order_id: int, endpoint_id: int) -> list[str]:
    """Each GET of the OpenAPI document, about this order (and this key's webhook endpoint) where it takes one."""
    return ["/api/v1" + path.replace("{order_id}", str(order_id)).replace("{endpoint_id}", str(endpoint_id))
            for path, item in OPENAPI["paths"].items() if "get" in item and "openapi" not in path]


def test_notes_typed_on_the_shop_floor_never_reach_an_api_key(client, accounts_, chief, db):
    partner, crm = accounts_.partner(), accounts_.crm()
    endpoints = {}
    for headers in (partner, crm):  # the webhooks of every change, and their delivery logs, are read too
        endpoints[headers["_client_id"]] = client.post(
            "/api/v1/webhook-endpoints", headers={**auth(headers), "Idempotency-Key": "endpoint"},
            json={"url": "https://hooks.example.com/mes", "event_types": list(SUBSCRIBABLE)}).get_json()["id"]
    reworked = create_order(client, partner, reference="R1").get_json()["id"]
    cancelled = create_order(client, partner, reference="R2").get_json()["id"]
    move(chief, reworked, [("queued", None), ("in_production", "Line 3, the good jig"),
                           ("quality_check", None), ("in_production", REWORK_NOTE)])
    cancel(chief, cancelled, cancel_reason(db), CANCEL_NOTE)

    for headers in (partner, crm):
        for order_id in (reworked, cancelled):
            for url in every_api_read(order_id, endpoints[headers["_client_id"]]):
                response = client.get(url, headers=auth(headers))
                assert response.status_code == 200, (url, response.status_code)
                text = response.get_data(as_text=True)
                for note in (REWORK_NOTE, CANCEL_NOTE, "Line 3, the good jig"):
                    assert note not in text and json.dumps(note)[1:-1] not in text, (url, note)

    db.rollback()  # a fresh snapshot: the changes above committed after this session's last read
    payloads = [e.payload for e in db.scalars(select(WebhookEvent))]  # what webhooks send
    assert len(payloads) >= 6
    for note in (REWORK_NOTE, CANCEL_NOTE, "Line 3, the good jig"):
        assert not [p for p in payloads if note in p or json.dumps(note)[1:-1] in p], note

    feed = client.get("/api/v1/status-changes", headers=auth(partner)).get_json()["items"]
    reasons = {(e["order_id"], e["from_status"], e["to_status"]): e["reason"] for e in feed}
    assert reasons[(reworked, "quality_check", "in_production")] == partner_reason(
        Status.QUALITY_CHECK, Status.IN_PRODUCTION, REWORK_NOTE, written_by_client=False)
    assert reasons[(cancelled, "received", "cancelled")] == partner_reason(
        Status.RECEIVED, Status.CANCELLED, CANCEL_NOTE, written_by_client=False)
    assert reasons[(reworked, "queued", "in_production")] is None

    page = chief.client.get(f"/operator/orders/{reworked}").get_data(as_text=True)
    assert REWORK_NOTE in page  # operators and supervisors still read what was written


def test_a_partner_sees_its_own_cancellation_reason(client, accounts_):
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    client.post(f"/api/v1/orders/{oid}/cancel", json={"reason": "Ordered twice"}, headers=auth(partner))
    feed = client.get("/api/v1/status-changes", headers=auth(partner)).get_json()["items"]
    assert [e["reason"] for e in feed] == [None, "Ordered twice"]


def test_partner_reasons_are_fixed_phrases_or_nothing():
    """Every transition has a phrase or none, none of them echoes the note, and a client's own words
    pass through."""
    for current, targets in TRANSITIONS.items():
        for target in targets:
            shown = partner_reason(current, target, "internal words", written_by_client=False)
            assert shown is None or (shown and "internal" not in shown and len(shown) <= 500)
            assert partner_reason(current, target, "our words", written_by_client=True) == "our words"
    assert partner_reason(Status.QUALITY_CHECK, Status.IN_PRODUCTION, "x", written_by_client=False)
    assert partner_reason(None, Status.RECEIVED, None, written_by_client=False) is None
