"""Holds as partners and the CRM see them: the order's hold, the feed's hold and release items, and
the rules the API keeps (no hold operations, cancelling a held order ends its hold)."""
from __future__ import annotations

import pytest
from conftest import auth, create_order

from mes.domain.errors import Forbidden, OrderOnHold, ValidationFailed
from mes.domain.lifecycle import Status
from sqlalchemy import select

from mes.models import ApiClient, Order, OrderEvent, ReasonCode
from mes.services import holds, reason_codes
from mes.services import orders as svc
from mes.services.accounts import client_actor, operator_actor

INTERNAL_NOTE = "Hans dropped the die again"


def code_id(db, code: str) -> int:
    return db.scalar(select(ReasonCode.id).where(ReasonCode.kind == "hold", ReasonCode.code == code))


@pytest.fixture
def floor(accounts_):
    return operator_actor(accounts_.operator("olga"))


def test_a_held_order_shows_since_when_and_why_but_never_the_note(client, accounts_, db, floor):
    partner, crm = accounts_.partner(), accounts_.crm()
    order_id = create_order(client, partner).get_json()["id"]
    held = holds.put_on_hold(db, floor, order_id, code_id(db, "machine_down"), INTERNAL_NOTE)
    for who in (partner, crm):
        r = client.get(f"/api/v1/orders/{order_id}", headers=auth(who))
        body = r.get_json()
        assert body["hold"] == {"since": body["updated_at"], "reason_code": "machine_down", "reason": "Machine down"}
        assert body["status"] == "received" and body["status_version"] == held.order.status_version == 2
        assert INTERNAL_NOTE not in r.get_data(as_text=True)
    listed = client.get("/api/v1/orders", headers=auth(partner)).get_json()["items"]
    assert listed[0]["hold"]["reason"] == "Machine down"
    holds.release_hold(db, floor, order_id)
    assert client.get(f"/api/v1/orders/{order_id}", headers=auth(partner)).get_json()["hold"] is None


def test_hold_and_release_reach_the_feed_after_the_cursor(client, accounts_, db, floor):
    partner = accounts_.partner()
    order_id = create_order(client, partner).get_json()["id"]
    first = client.get("/api/v1/status-changes", headers=auth(partner)).get_json()
    assert [i["type"] for i in first["items"]] == ["status"]
    holds.put_on_hold(db, floor, order_id, code_id(db, "other"), INTERNAL_NOTE)
    r = client.get(f"/api/v1/status-changes?after={first['next_cursor']}", headers=auth(partner))
    page = r.get_json()
    assert [(i["type"], i["from_status"], i["to_status"], i["reason"], i["status_version"]) for i in page["items"]] \
        == [("hold", "received", "received", "Other", 2)]
    assert INTERNAL_NOTE not in r.get_data(as_text=True)
    holds.release_hold(db, floor, order_id, "die repaired")
    after = client.get(f"/api/v1/status-changes?after={page['next_cursor']}", headers=auth(partner)).get_json()
    assert [(i["type"], i["reason"]) for i in after["items"]] == [("release", "Other")]
    again = client.get(f"/api/v1/status-changes?after={after['next_cursor']}", headers=auth(partner)).get_json()
    assert again["items"] == [] and again["next_cursor"] == after["next_cursor"]


def test_a_held_order_does_not_move_on_until_released(client, accounts_, db, floor):
    partner = accounts_.partner()
    order_id = create_order(client, partner).get_json()["id"]
    holds.put_on_hold(db, floor, order_id, code_id(db, "material_shortage"))
    with pytest.raises(OrderOnHold) as err:
        svc.change_status(db, floor, order_id, Status.QUEUED)
    assert err.value.extensions["hold_reason"] == "Material shortage"
    holds.release_hold(db, floor, order_id)
    assert svc.change_status(db, floor, order_id, Status.QUEUED).order.status == "queued"


def test_cancelling_a_held_order_ends_its_hold_and_keeps_its_hold_time(client, accounts_, db, floor):
    partner = accounts_.partner()
    order_id = create_order(client, partner).get_json()["id"]
    holds.put_on_hold(db, floor, order_id, code_id(db, "waiting_for_customer"))
    r = client.post(f"/api/v1/orders/{order_id}/cancel", json={"reason": "not needed"}, headers=auth(partner))
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled" and r.get_json()["hold"] is None
    db.rollback()  # a fresh snapshot: the app wrote in its own session
    row = db.get(Order, order_id)
    assert row.hold_since is None and row.hold_reason_id is None and row.hold_seconds >= 0


def test_partners_and_the_crm_cannot_hold_and_the_api_has_no_hold_operation(client, accounts_, db):
    partner, crm = accounts_.partner(), accounts_.crm()
    order_id = create_order(client, partner).get_json()["id"]
    for who in (partner, crm):
        actor = client_actor(db.get(ApiClient, who["_client_id"]))
        with pytest.raises(Forbidden):
            holds.put_on_hold(db, actor, order_id, code_id(db, "capacity"))
        r = client.post(f"/api/v1/orders/{order_id}/hold", json={"reason_code": "capacity"}, headers=auth(who))
        assert r.status_code in (404, 405)
    assert client.get(f"/api/v1/orders/{order_id}", headers=auth(partner)).get_json()["hold"] is None


def test_other_needs_a_note_and_a_retired_code_cannot_be_chosen(client, accounts_, db, floor):
    boss = operator_actor(accounts_.operator("chief", role="supervisor"))
    partner = accounts_.partner()
    order_id = create_order(client, partner).get_json()["id"]
    with pytest.raises(ValidationFailed):
        holds.put_on_hold(db, floor, order_id, code_id(db, "other"), "  ")
    reason_codes.retire(db, boss, code_id(db, "tooling"))
    with pytest.raises(ValidationFailed):
        holds.put_on_hold(db, floor, order_id, code_id(db, "tooling"))
    assert client.get(f"/api/v1/orders/{order_id}", headers=auth(partner)).get_json()["hold"] is None


def test_a_retired_code_stays_on_the_hold_that_used_it(client, accounts_, db, floor):
    boss = operator_actor(accounts_.operator("chief", role="supervisor"))
    partner = accounts_.partner()
    order_id = create_order(client, partner).get_json()["id"]
    holds.put_on_hold(db, floor, order_id, code_id(db, "tooling"))
    reason_codes.retire(db, boss, code_id(db, "tooling"))
    hold = client.get(f"/api/v1/orders/{order_id}", headers=auth(partner)).get_json()["hold"]
    assert hold["reason_code"] == "tooling"


def test_the_openapi_document_describes_holds(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    schemas = spec["components"]["schemas"]
    assert "hold" in schemas["Order"]["required"]
    assert set(schemas["Hold"]["required"]) == {"since", "reason_code", "reason"}
    assert schemas["EventType"]["enum"][:3] == ["status", "hold", "release"]
    assert "type" in schemas["StatusChange"]["required"]


def test_demo_orders_include_holds_with_reasons_that_partners_can_read(app, client, accounts_, db):
    from mes.demo import load_orders

    load_orders(app.extensions["mes_engine"], 1500, partners=3, seed=7)
    held = db.scalars(select(Order).where(Order.hold_since.is_not(None))).all()
    assert 10 <= len(held) <= 200
    for order in held:
        assert order.status in {s.value for s in Status if s not in (Status.SHIPPED, Status.DELIVERED,
                                                                      Status.CANCELLED)}
        assert order.hold_reason is not None and order.hold_since <= order.updated_at
        last = db.scalar(select(OrderEvent).where(OrderEvent.order_id == order.id).order_by(OrderEvent.id.desc()))
        assert (last.kind, last.reason_code_id, last.status_version) == ("hold", order.hold_reason_id,
                                                                         order.status_version)
    crm = accounts_.crm()
    body = client.get(f"/api/v1/orders/{held[0].id}", headers=auth(crm)).get_json()
    assert body["hold"]["reason"] == held[0].hold_reason.label
