"""Shipments end to end on both databases: the service that ships an order with its first shipment and
adds later ones, the API that shows them (the order, its shipments, the feed), a partner's confirmation
of delivery (idempotent and conditional like a cancel), and the operator's shipment form over HTTP."""
from __future__ import annotations

import re

import pytest
from conftest import auth, create_order
from sqlalchemy import select
from test_api import assert_problem
from test_concurrency import race
from test_operator_ui import Browserless

from mes.domain.errors import Conflict, Forbidden, ValidationFailed, VersionConflict
from mes.domain.lifecycle import Status
from mes.models import ApiClient, IdempotencyRecord, Order, Shipment
from mes.services import orders as svc
from mes.services import production
from mes.services import shipments
from mes.services.accounts import client_actor, operator_actor

S = Status
DHL = {"carrier": "DHL", "tracking_number": "JD0146000032", "tracking_url": "https://www.dhl.com/t?id=JD0146000032",
       "packages": "2", "quantity": "30"}


def packed(client, db, partner, boss, *, quantity: int = 40, made: int | None = None, reference: str = "PO-1") -> int:
    """An order of `quantity` brought to packed by a supervisor, `made` good pieces recorded on the way."""
    oid = create_order(client, partner, reference=reference, quantity=quantity).get_json()["id"]
    for step in (S.QUEUED, S.IN_PRODUCTION):
        svc.change_status(db, boss, oid, step)
    if made is not None:
        production.record_output(db, boss, oid, made)
    for step in (S.QUALITY_CHECK, S.PACKED):
        svc.change_status(db, boss, oid, step)
    return oid


def version(db, oid: int) -> int:
    db.rollback()
    return db.get(Order, oid).status_version


@pytest.fixture
def floor(accounts_):
    boss = operator_actor(accounts_.operator("chief", role="supervisor", display_name="The Chief"))
    olga = operator_actor(accounts_.operator("olga", display_name="Olga K."))
    return boss, olga


# ----------------------------------------------------------------------------------------------- service
def test_the_first_shipment_ships_the_order_and_later_ones_follow(client, accounts_, db, floor):
    boss, olga = floor
    oid = packed(client, db, accounts_.partner(), boss, made=40)
    done = shipments.record(db, boss, oid, fields=DHL, expected_version=version(db, oid))
    assert done.change is not None and done.change.previous is S.PACKED
    db.rollback()
    order = db.get(Order, oid)
    assert order.status == "shipped" and order.status_version == 6
    first = db.scalar(select(Shipment).where(Shipment.order_id == oid))
    assert (first.carrier, first.packages, first.quantity, first.created_by_id) == ("DHL", 2, 30, boss.id)
    assert first.created_at == order.shipped_at == order.updated_at  # recorded with the change
    assert (done.limits.shipped, done.limits.left) == (30, 10)

    # A later shipment (any operator on the dock): no status change, the order's updated_at moves.
    later = shipments.record(db, olga, oid, fields={"carrier": "UPS", "quantity": "10"}, expected_version=6)
    assert later.change is None and (later.limits.shipped, later.limits.left) == (40, 0)
    db.rollback()
    order = db.get(Order, oid)
    assert order.status_version == 6 and order.updated_at > first.created_at
    assert [s.quantity for s in order.shipments] == [30, 10]
    assert [e.to_status for e in svc.history(db, oid)].count("shipped") == 1

    with pytest.raises(ValidationFailed, match="every piece made has left already"):
        shipments.record(db, olga, oid, fields={"carrier": "UPS", "quantity": "1"}, expected_version=6)
    svc.change_status(db, olga, oid, S.DELIVERED)
    with pytest.raises(Conflict, match="nothing more leaves"):
        shipments.record(db, olga, oid, fields={"carrier": "UPS", "quantity": "1"}, expected_version=None)
    db.rollback()
    order = db.get(Order, oid)
    assert order.delivered_by == "operator:olga" and order.delivered_at is not None


def test_no_more_leaves_than_was_made_and_a_refusal_stores_nothing(client, accounts_, db, floor):
    boss, olga = floor
    partner = accounts_.partner()
    oid = packed(client, db, partner, boss, made=25)
    v = version(db, oid)
    with pytest.raises(ValidationFailed) as err:
        shipments.record(db, boss, oid, fields={**DHL, "quantity": "26"}, expected_version=v)
    assert err.value.extensions["errors"] == [{"field": "quantity", "message": "must be at most 25 (the pieces not shipped yet)"}]
    with pytest.raises(ValidationFailed, match="tracking url must be an https"):
        shipments.record(db, boss, oid, fields={**DHL, "tracking_url": "http://dhl.com/t"}, expected_version=v)
    with pytest.raises(VersionConflict):
        shipments.record(db, boss, oid, fields=DHL, expected_version=v - 1)
    with pytest.raises(Forbidden, match="Claim the order first"):  # shipping is the holder's or a supervisor's
        shipments.record(db, olga, oid, fields=DHL, expected_version=v)
    with pytest.raises(Forbidden, match="shop floor"):
        shipments.record(db, client_actor(db.get(ApiClient, partner["_client_id"])), oid, fields=DHL, expected_version=v)
    db.rollback()
    assert db.get(Order, oid).status == "packed" and db.scalar(select(Shipment.id)) is None

    # An order made before production was recorded may ship what was ordered.
    legacy = packed(client, db, partner, boss, quantity=12, reference="PO-OLD")
    with pytest.raises(ValidationFailed, match="at most 12 "):
        shipments.record(db, boss, legacy, fields={**DHL, "quantity": "13"}, expected_version=version(db, legacy))
    other = create_order(client, partner, reference="PO-NEW").get_json()["id"]
    with pytest.raises(Conflict, match="takes no shipment"):
        shipments.record(db, boss, other, fields=DHL, expected_version=1)


def test_two_operators_shipping_the_rest_at_once_cannot_ship_too_much(app, client, accounts_, db, floor):
    boss, _ = floor
    oid = packed(client, db, accounts_.partner(), boss, made=40)
    shipments.record(db, boss, oid, fields={**DHL, "quantity": "20"}, expected_version=version(db, oid))
    docks = [operator_actor(accounts_.operator(f"dock{i}")) for i in range(3)]
    make_session = app.extensions["mes_sessionmaker"]

    def ship(i):
        with make_session() as session:
            return shipments.record(session, docks[i], oid, fields={"carrier": "UPS", "quantity": "15"},
                                    expected_version=None)

    results = race(len(docks), ship)
    assert len([r for r in results if not isinstance(r, Exception)]) == 1, results
    assert all(isinstance(r, ValidationFailed) and "at most 5 " in r.detail
               for r in results if isinstance(r, Exception)), results
    db.rollback()
    assert sum(s.quantity for s in db.get(Order, oid).shipments) == 35


# ----------------------------------------------------------------------------------------------- API
def test_the_order_its_shipments_and_the_feed_show_what_left(client, accounts_, db, floor):
    boss, olga = floor
    partner, other, crm = accounts_.partner(), accounts_.partner("b", "B"), accounts_.crm()
    oid = packed(client, db, partner, boss, made=40)
    empty = client.get(f"/api/v1/orders/{oid}", headers=auth(partner)).get_json()
    assert (empty["shipments"], empty["shipped_quantity"], empty["delivery"]) == ([], 0, None)
    assert empty["links"]["shipments"] == f"/api/v1/orders/{oid}/shipments"
    shipments.record(db, boss, oid, fields=DHL, expected_version=version(db, oid))
    r = client.get(f"/api/v1/orders/{oid}", headers=auth(partner))
    first_tag = r.headers["ETag"]
    body = r.get_json()
    assert body["status"] == "shipped" and body["shipped_quantity"] == 30
    [s] = body["shipments"]
    assert {k: v for k, v in s.items() if k not in ("id", "shipped_at")} == {
        "carrier": "DHL", "tracking_number": "JD0146000032", "tracking_url": DHL["tracking_url"], "packages": 2,
        "quantity": 30}
    assert "Chief" not in r.get_data(as_text=True)  # who recorded it stays on the floor

    shipments.record(db, olga, oid, fields={"carrier": "UPS", "quantity": "10"}, expected_version=None)
    r = client.get(f"/api/v1/orders/{oid}", headers=auth(partner))
    assert r.headers["ETag"] != first_tag and r.get_json()["shipped_quantity"] == 40
    for who in (partner, crm):
        listed = client.get(f"/api/v1/orders/{oid}/shipments", headers=auth(who)).get_json()
        assert (listed["order_id"], listed["status"], listed["shipped_quantity"]) == (oid, "shipped", 40)
        assert [x["carrier"] for x in listed["items"]] == ["DHL", "UPS"]
    assert_problem(client.get(f"/api/v1/orders/{oid}/shipments", headers=auth(other)), 404, "not-found")
    assert_problem(client.get("/api/v1/orders/999999/shipments", headers=auth(crm)), 404, "not-found")

    items = client.get("/api/v1/status-changes", headers=auth(partner)).get_json()["items"]
    shipped = [i for i in items if i["to_status"] == "shipped"]
    assert len(shipped) == 1 and [x["carrier"] for x in shipped[0]["shipments"]] == ["DHL"]  # the ones it left with
    assert all("shipments" not in i for i in items if i["to_status"] != "shipped")


def deliver(client, headers, oid: int, *, key: str | None = None, if_match: str | None = None, **body):
    extra = {k: v for k, v in (("Idempotency-Key", key), ("If-Match", if_match)) if v is not None}
    return client.post(f"/api/v1/orders/{oid}/deliver", json=body if body else None,
                       headers={**auth(headers), **extra})


def test_a_partner_confirms_delivery_once_and_a_retry_gets_the_same_answer(client, accounts_, db, floor):
    boss, _ = floor
    partner, crm = accounts_.partner(), accounts_.crm()
    oid = packed(client, db, partner, boss, made=40)
    assert_problem(deliver(client, partner, oid), 409, "invalid-transition")  # packed: not yet
    shipments.record(db, boss, oid, fields=DHL, expected_version=version(db, oid))
    tag = client.get(f"/api/v1/orders/{oid}", headers=auth(partner)).headers["ETag"]
    assert_problem(deliver(client, crm, oid), 403, "forbidden")
    assert_problem(deliver(client, partner, oid, unknown=1), 422, "validation-failed")
    assert_problem(deliver(client, partner, oid, if_match='"0-0"'), 412, "precondition-failed")

    r = deliver(client, partner, oid, key="arrived-1", if_match=tag)
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert body["status"] == "delivered" and body["delivery"]["confirmed_by"] == "partner"
    assert body["shipped_quantity"] == 30 and r.headers["ETag"] != tag
    again = deliver(client, partner, oid, key="arrived-1")
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true" and again.get_json() == body
    plain = deliver(client, partner, oid)  # without a key: the order as it is, nothing written again
    assert plain.status_code == 200 and plain.get_json()["delivery"] == body["delivery"]
    assert_problem(client.post(f"/api/v1/orders/{oid}/cancel", headers={**auth(partner), "Idempotency-Key": "arrived-1"}),
                   422, "idempotency-key-reused")
    db.rollback()
    events = [e.to_status for e in svc.history(db, oid)]
    assert events.count("delivered") == 1
    assert db.get(Order, oid).delivered_by.startswith("client:")
    assert db.get(IdempotencyRecord, (partner["_client_id"], "arrived-1")) is not None

    # A partner cannot confirm another partner's order, nor one that never shipped.
    other = accounts_.partner("b", "B")
    assert_problem(deliver(client, other, oid), 404, "not-found")
    fresh = create_order(client, partner, reference="PO-2").get_json()["id"]
    problem = assert_problem(deliver(client, partner, fresh), 409, "invalid-transition")
    assert problem["allowed_transitions"] == ["cancelled"]


def test_a_delivery_confirmed_on_the_floor_says_the_factory(client, accounts_, db, floor):
    boss, olga = floor
    partner = accounts_.partner()
    oid = packed(client, db, partner, boss, made=40)
    shipments.record(db, boss, oid, fields=DHL, expected_version=version(db, oid))
    svc.change_status(db, olga, oid, S.DELIVERED)
    delivery = client.get(f"/api/v1/orders/{oid}", headers=auth(partner)).get_json()["delivery"]
    assert delivery["confirmed_by"] == "factory"


# ----------------------------------------------------------------------------------------------- operator UI
def test_ship_asks_for_the_shipment_and_a_refusal_keeps_what_was_typed(client, accounts_, db, floor):
    boss, _ = floor
    oid = packed(client, db, accounts_.partner(), boss, made=40)
    ui = Browserless(client)
    assert ui.login("chief", "secret-pass").status_code == 302
    page = f"/operator/orders/{oid}"
    html = client.get(page).get_data(as_text=True)
    assert f'href="/operator/orders/{oid}/ship"' in html and 'data-key="n"' in html
    # The bare status change no longer ships.
    html = ui.post(f"{page}/status", page, target="shipped", version="5").get_data(as_text=True)
    assert "Ship with the shipment form" in html and db.get(Order, oid).status == "packed"

    form = f"{page}/ship"
    html = client.get(form).get_data(as_text=True)
    assert re.search(r'name="quantity" value="40"', html) and re.search(r'name="packages" value="1"', html)
    r = ui.post(form, form, carrier="", tracking_url="http://dhl.com/t", packages="3", quantity="41", version="5")
    html = r.get_data(as_text=True)
    assert r.status_code == 422 and "Nothing was shipped." in html
    assert 'id="ship-carrier-error">Carrier is required<' in html
    assert "Tracking link must be an https:// link" in html and "Pieces must be at most 40 (the pieces not shipped yet)" in html
    assert 'value="http://dhl.com/t"' in html and 'value="41"' in html and 'aria-invalid="true"' in html
    db.rollback()
    assert db.get(Order, oid).status == "packed"

    html = ui.post(form, form, carrier="DHL", tracking_number="JD01", tracking_url="https://dhl.com/t?id=JD01",
                   packages="2", quantity="30", version="5").get_data(as_text=True)
    assert f"Order {oid} shipped: 30 pieces in 2 packages with DHL, tracking JD01; 30 of 40 shipped." in html
    assert 'id="status">shipped<' in html and 'id="shipments"' in html and "The Chief" in html
    assert 'id="ship-more"' in html
    html = ui.post(form, form, carrier="UPS", packages="1", quantity="10", version="6").get_data(as_text=True)
    assert f"Order {oid} has a further shipment: 10 pieces in 1 package with UPS; 40 of 40 shipped." in html
    assert 'id="ship-more"' not in html  # everything left
    html = ui.post(f"{page}/status", page, target="delivered", version="6").get_data(as_text=True)
    assert "is now delivered" in html and "delivery confirmed" in html and "by operator:chief" in html
    r = client.get(form, follow_redirects=True)
    assert "nothing more leaves once its delivery is confirmed" in r.get_data(as_text=True)
