"""Holds in the operator UI over HTTP (forms, CSRF): hold with a reason, the queue's hold column and
filters, release, a held order refusing to move, and the supervisors' reason-code page."""
from __future__ import annotations

import html
import re

import pytest
from conftest import create_order
from sqlalchemy import select
from test_operator_ui import Browserless

from mes.models import Order, OrderEvent, ReasonCode
from mes.services import holds
from mes.services.accounts import operator_actor


def code_id(db, code: str) -> int:
    return db.scalar(select(ReasonCode.id).where(ReasonCode.kind == "hold", ReasonCode.code == code))


def logged_in(client, accounts_, login: str, role: str = "operator") -> Browserless:
    accounts_.operator(login, "secret-pass", role=role)
    b = Browserless(client)
    assert b.login(login, "secret-pass").status_code == 302
    return b


@pytest.fixture
def orders(client, accounts_):
    partner = accounts_.partner()
    return [create_order(client, partner, reference=f"PO-{i}").get_json()["id"] for i in range(3)]


def queue_rows(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'data-order-id="(\d+)"', html)]


def test_hold_with_a_reason_shows_in_the_queue_and_the_filters(client, accounts_, db, orders):
    ui = logged_in(client, accounts_, "olga")
    first, second, third = orders
    page = f"/operator/orders/{first}"
    r = ui.post(f"/operator/orders/{first}/hold", page, reason_code=str(code_id(db, "machine_down")),
                note="spindle bearing", version="1")
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and "is on hold: Machine down" in html
    assert 'id="hold-badge"' in html and "spindle bearing" in html  # the note is shown on the floor
    ui.post(f"/operator/orders/{second}/hold", f"/operator/orders/{second}",
            reason_code=str(code_id(db, "tooling")), version="1")

    queue = client.get("/operator/").get_data(as_text=True)
    assert queue_rows(queue) == [first, second, third]
    row = queue.split(f'data-order-id="{first}"')[1].split("</tr>")[0]
    assert "Machine down" in row and re.search(r'class="hold-age">\d+m<', row)
    assert '<strong id="on-hold-count">2</strong>' in queue
    assert queue_rows(client.get("/operator/?hold=1").get_data(as_text=True)) == [first, second]
    assert queue_rows(client.get("/operator/?hold=1&reason=").get_data(as_text=True)) == [first, second]
    assert queue_rows(client.get("/operator/?reason=tooling").get_data(as_text=True)) == [second]
    assert client.get("/operator/?reason=no_such").status_code == 400


def test_a_held_order_refuses_to_move_with_a_readable_message_until_released(client, accounts_, db, orders):
    ui = logged_in(client, accounts_, "olga")
    order_id = orders[0]
    page = f"/operator/orders/{order_id}"
    ui.post(f"{page}/hold", page, reason_code=str(code_id(db, "material_shortage")), version="1")
    assert "Queue for production" not in client.get(page).get_data(as_text=True)  # no button while held
    r = ui.post(f"{page}/status", page, target="queued", version="2")  # a form from before the hold
    html = r.get_data(as_text=True)
    assert "is on hold (Material shortage): release the hold before moving it" in html
    db.rollback()  # a fresh snapshot: the app wrote in its own session
    assert db.get(Order, order_id).status == "received"

    r = ui.post(f"{page}/hold/release", page, note="steel arrived", version="2")
    assert "released from hold" in r.get_data(as_text=True)
    r = ui.post(f"{page}/status", page, target="queued", version="3")
    assert "is now queued" in r.get_data(as_text=True)
    db.rollback()  # a fresh snapshot: the app wrote in its own session
    kinds = db.scalars(select(OrderEvent.kind).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)).all()
    assert kinds == ["status", "hold", "release", "status"]
    events = db.scalars(select(OrderEvent).where(OrderEvent.order_id == order_id, OrderEvent.kind != "status")).all()
    assert all(e.actor == "operator:olga" and e.operator_id is not None for e in events)
    assert events[1].note == "steel arrived" and events[1].reason_code.code == "material_shortage"


def test_other_needs_a_note_and_bad_text_is_refused(client, accounts_, db, orders):
    ui = logged_in(client, accounts_, "olga")
    page = f"/operator/orders/{orders[0]}"
    r = ui.post(f"{page}/hold", page, reason_code=str(code_id(db, "other")), note="", version="1")
    assert "needs a note" in r.get_data(as_text=True)
    r = ui.post(f"{page}/hold", page, reason_code=str(code_id(db, "other")), note="nul\x00here", version="1")
    assert r.status_code == 422 and "control characters" in r.get_data(as_text=True)
    db.rollback()  # a fresh snapshot: the app wrote in its own session
    assert db.get(Order, orders[0]).hold_since is None


def test_operators_cannot_reach_the_reason_code_page(client, accounts_, db):
    ui = logged_in(client, accounts_, "olga")
    assert client.get("/operator/reason-codes").status_code == 403
    assert "Reason codes" not in client.get("/operator/").get_data(as_text=True)
    assert ui.post("/operator/reason-codes", "/operator/", code="paint", label="Paint").status_code == 403
    assert ui.post(f"/operator/reason-codes/{code_id(db, 'tooling')}/retire", "/operator/").status_code == 403
    assert db.scalar(select(ReasonCode.active).where(ReasonCode.code == "tooling")) is True
    assert db.scalar(select(ReasonCode.id).where(ReasonCode.code == "paint")) is None


def test_a_supervisor_adds_relabels_and_retires_codes(client, accounts_, db, orders):
    boss = logged_in(client, accounts_, "chief", role="supervisor")
    page = "/operator/reason-codes"
    r = boss.post(page, page, code="paint_shop", label="Paint shop backlog", requires_note="y")
    assert "added" in r.get_data(as_text=True)
    new_id = code_id(db, "paint_shop")
    assert boss.post(page, page, code="paint_shop", label="Again").get_data(as_text=True).count("exists already")

    floor = operator_actor(accounts_.operator("olga"))
    holds.put_on_hold(db, floor, orders[0], code_id(db, "capacity"))
    r = boss.post(f"{page}/{code_id(db, 'capacity')}/label", page, label="Capacity (bottleneck)")
    assert "Label changed" in r.get_data(as_text=True)
    r = boss.post(f"{page}/{code_id(db, 'capacity')}/retire", page)
    assert "retired" in r.get_data(as_text=True)

    order_page = client.get(f"/operator/orders/{orders[1]}").get_data(as_text=True)
    choices = re.findall(r'<option value="(\d+)"', order_page)
    assert str(code_id(db, "capacity")) not in choices and str(new_id) in choices
    held = client.get(f"/operator/orders/{orders[0]}").get_data(as_text=True)
    assert "Capacity (bottleneck)" in held  # the retired code stays on the hold that used it
    r = boss.post(f"/operator/orders/{orders[1]}/hold", f"/operator/orders/{orders[1]}",
                  reason_code=str(code_id(db, "capacity")), version="1")
    assert "Choose one of the listed reasons" in r.get_data(as_text=True)


def test_late_reasons_are_kept_on_their_own_list(client, accounts_, db, orders):
    boss = logged_in(client, accounts_, "chief", role="supervisor")
    page = "/operator/reason-codes?kind=late"
    listing = client.get(page).get_data(as_text=True)
    assert "<h1>Late reasons</h1>" in listing and 'data-code="late_upstream"' in listing
    assert 'data-code="late_upstream"' not in client.get("/operator/reason-codes").get_data(as_text=True)
    r = boss.post("/operator/reason-codes", page, kind="late", code="supplier_delay", label="Supplier delay")
    assert "Late reason 'Supplier delay' added." in html.unescape(r.get_data(as_text=True))
    assert "<h1>Late reasons</h1>" in r.get_data(as_text=True)  # back on the list it was added to
    late_id = db.scalar(select(ReasonCode.id).where(ReasonCode.kind == "late", ReasonCode.code == "supplier_delay"))
    assert late_id and code_id(db, "supplier_delay") is None  # not a hold reason
    r = boss.post(f"/operator/reason-codes/{late_id}/retire", page, kind="late")
    assert "retired" in r.get_data(as_text=True) and "<h1>Late reasons</h1>" in r.get_data(as_text=True)
    assert client.get("/operator/reason-codes?kind=bogus").status_code == 400
