"""Cancelling from the order page over HTTP (forms, CSRF, session): the confirmation page, a refused cancel
that changes nothing, the reason in the history; the cancel list on the reason-codes page, audited; the
operators' badge page."""
from __future__ import annotations

import html as html_lib
import re

import pytest
from conftest import cancel_reason, create_order
from sqlalchemy import select
from test_holds_ui import code_id, logged_in

from mes.domain.lifecycle import Status
from mes.models import AuditEntry, Order, ReasonCode
from mes.services import holds as hold_svc
from mes.services import orders as svc
from mes.services.accounts import operator_actor


@pytest.fixture
def order_id(client, accounts_) -> int:
    return create_order(client, accounts_.partner(), reference="PO-77", quantity=40).get_json()["id"]


def text(r) -> str:
    return html_lib.unescape(r.get_data(as_text=True))


def test_the_order_page_leads_to_a_confirmation_that_names_the_order_and_what_cancelling_does(client, accounts_,
                                                                                             order_id):
    logged_in(client, accounts_, "chief", role="supervisor")
    order_page = text(client.get(f"/operator/orders/{order_id}"))
    assert f'href="/operator/orders/{order_id}/cancel"' in order_page and "Cancel order…" in order_page
    page = text(client.get(f"/operator/orders/{order_id}/cancel"))
    assert f"Cancel order #{order_id}?" in page and "PO-77" in page and "ACME" in page
    assert "The order stops for good" in page and "the reason and the note stay inside the factory" in page
    labels = re.findall(r'<option value="\d+" >([^<]+)</option>', page)
    assert labels == ["Customer request", "Duplicate order", "Cannot be made", "Other (needs a note)"]
    assert client.get(f"/operator/orders/{order_id}").status_code == 200
    assert db_status(client, order_id) == "received"  # looking at the confirmation changes nothing


def db_status(client, order_id: int) -> str:
    with client.application.extensions["mes_sessionmaker"]() as session:
        return session.get(Order, order_id).status


def test_a_cancel_without_a_reason_is_refused_and_keeps_the_note(client, accounts_, order_id):
    boss = logged_in(client, accounts_, "chief", role="supervisor")
    page = f"/operator/orders/{order_id}/cancel"
    r = boss.post(page, page, cancel_reason="", note="asked by phone", version="1")
    assert r.status_code == 422
    body = text(r)
    assert (f"Order {order_id} was not cancelled. A cancellation needs a reason: choose one of the listed cancel "
            "reasons.") in body
    assert "asked by phone</textarea>" in body and f"Cancel order #{order_id}?" in body
    assert db_status(client, order_id) == "received"


def test_a_supervisor_cancels_and_the_history_shows_reason_note_and_who(client, accounts_, db, order_id):
    olga = operator_actor(accounts_.operator("olga", display_name="Olga K."))
    svc.claim(db, olga, order_id)
    boss = logged_in(client, accounts_, "chief", role="supervisor")
    page = f"/operator/orders/{order_id}/cancel"
    r = boss.post(page, page, cancel_reason=str(cancel_reason(db, "duplicate_order")), note="same as PO-76",
                  version="1")
    body = text(r)
    assert r.request.path == f"/operator/orders/{order_id}"
    assert f"Order {order_id} is cancelled (Duplicate order)." in body
    history = body.split('id="history"')[1].split("</table>")[0]
    row = re.findall(r'<tr class="event-status">(.*?)</tr>', history, re.S)[-1]
    assert "cancelled" in row and "operator:chief" in row and "Duplicate order: same as PO-76" in row
    assert 'id="holder">nobody<' in body and "floor-release" in body
    assert f"/operator/orders/{order_id}/cancel" not in body  # nothing left to cancel
    r = client.get(page)
    assert r.status_code == 302 and "cannot move to 'cancelled'" in text(client.get(r.headers["Location"]))


def test_a_held_order_is_cancelled_and_its_hold_ends(client, accounts_, db, order_id):
    boss = logged_in(client, accounts_, "chief", role="supervisor")
    hold_svc.put_on_hold(db, operator_actor(accounts_.operator("olga")), order_id, code_id(db, "machine_down"))
    page = f"/operator/orders/{order_id}/cancel"
    assert "Machine down" in text(client.get(page))
    body = text(boss.post(page, page, cancel_reason=str(cancel_reason(db, "cannot_be_made")), version="2"))
    assert "is cancelled (Cannot be made)" in body and 'id="hold-badge"' not in body


def test_a_stale_confirmation_changes_nothing(client, accounts_, db, order_id):
    boss = logged_in(client, accounts_, "chief", role="supervisor")
    page = f"/operator/orders/{order_id}/cancel"
    svc.change_status(db, operator_actor(accounts_.operator("olga")), order_id, Status.QUEUED)
    r = boss.post(page, page, cancel_reason=str(cancel_reason(db)), version="1")
    assert r.status_code == 409 and "changed meanwhile" in text(r)
    assert db_status(client, order_id) == "queued"


def test_operators_see_no_cancel_and_are_refused_the_confirmation(client, accounts_, order_id):
    olga = logged_in(client, accounts_, "olga")
    assert "Cancel order" not in text(client.get(f"/operator/orders/{order_id}"))
    r = client.get(f"/operator/orders/{order_id}/cancel", follow_redirects=True)
    assert "Only a supervisor may cancel an order." in text(r)
    r = olga.post(f"/operator/orders/{order_id}/cancel", f"/operator/orders/{order_id}",
                  cancel_reason="22", version="1")
    assert "Only a supervisor may cancel an order." in text(r)
    assert db_status(client, order_id) == "received"


def test_the_old_status_form_cannot_cancel_without_a_reason(client, accounts_, order_id):
    boss = logged_in(client, accounts_, "chief", role="supervisor")
    page = f"/operator/orders/{order_id}"
    r = boss.post(f"{page}/status", page, target="cancelled", version="1")
    assert "A cancellation needs a reason" in text(r)
    assert db_status(client, order_id) == "received"


def test_the_cancel_list_is_kept_on_the_reason_codes_page_and_every_change_is_audited(client, accounts_, db):
    boss = logged_in(client, accounts_, "chief", role="supervisor")
    page = "/operator/reason-codes?kind=cancel"
    listing = text(client.get(page))
    assert "<h1>Cancel reasons</h1>" in listing and 'data-code="duplicate_order"' in listing
    assert 'data-kind="defect"' in listing  # the defect codes have their list there too
    r = boss.post("/operator/reason-codes", page, kind="cancel", code="price_dispute", label="Price dispute")
    assert "Cancel reason 'Price dispute' added." in text(r)
    new_id = db.scalar(select(ReasonCode.id).where(ReasonCode.kind == "cancel", ReasonCode.code == "price_dispute"))
    boss.post(f"/operator/reason-codes/{new_id}/label", page, kind="cancel", label="Price not agreed")
    boss.post(f"/operator/reason-codes/{new_id}/retire", page, kind="cancel")
    boss.post(f"/operator/reason-codes/{new_id}/restore", page, kind="cancel")
    db.rollback()  # end the old snapshot (SQLite keeps one per transaction)
    audit = [(e.action, e.subject, e.detail) for e in db.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert audit == [("reason code added", "cancel price_dispute", "Price dispute"),
                     ("reason code relabelled", "cancel price_dispute", "Price not agreed"),
                     ("reason code retired", "cancel price_dispute", "Price not agreed"),
                     ("reason code restored", "cancel price_dispute", "Price not agreed")]
    assert "reason code retired" in text(client.get("/operator/operators"))


# ----------------------------------------------------------------------------------------------- badges
def test_a_supervisor_prints_an_operators_badge(client, accounts_):
    logged_in(client, accounts_, "chief", role="supervisor")
    olga = accounts_.operator("olga", display_name="Olga K.")
    operators = text(client.get("/operator/operators"))
    assert f'href="/operator/operators/{olga.id}/badge"' in operators
    page = text(client.get(f"/operator/operators/{olga.id}/badge"))
    assert 'id="badge-name">Olga K.<' in page and 'id="badge-login">olga<' in page
    assert 'id="badge-value">OP-olga<' in page and f'src="/operator/operators/{olga.id}/badge.svg"' in page
    svg = client.get(f"/operator/operators/{olga.id}/badge.svg")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
    assert decode_code128(svg.get_data(as_text=True)) == "OP-olga"
    shift = accounts_.operator("line2 20261130")  # digits: the barcode switches to its compact digit set
    assert decode_code128(client.get(f"/operator/operators/{shift.id}/badge.svg").get_data(as_text=True)) == \
        "OP-line2 20261130"


def test_a_login_a_barcode_cannot_carry_gets_a_message_not_a_broken_card(client, accounts_):
    logged_in(client, accounts_, "chief", role="supervisor")
    jurgen = accounts_.operator("jürgen", display_name="Jürgen")
    page = text(client.get(f"/operator/operators/{jurgen.id}/badge"))
    assert "No barcode: this login has letters a Code 128 barcode cannot carry" in page
    assert client.get(f"/operator/operators/{jurgen.id}/badge.svg").status_code == 422


def test_operators_may_not_print_badges(client, accounts_):
    olga = accounts_.operator("olga")
    logged_in(client, accounts_, "ivan")
    assert client.get(f"/operator/operators/{olga.id}/badge").status_code == 403
    assert client.get(f"/operator/operators/{olga.id}/badge.svg").status_code == 403


def decode_code128(svg: str) -> str:
    """Read the bars back: each symbol is 11 modules (bar, space, ...), the stop 13; the check symbol must
    hold. Enough of Code 128 for a badge: code sets B and C and the switches between them."""
    from barcode.charsets.code128 import CODES, STOP

    bars = [(float(x), float(w)) for x, w in re.findall(r'<rect x="([\d.]+)mm" y="[\d.]+mm" width="([\d.]+)mm"', svg)]
    module = min(w for _, w in bars)
    pattern, end = "", bars[0][0]
    for x, w in bars:
        pattern += "0" * round((x - end) / module) + "1" * round(w / module)
        end = x + w
    assert pattern.endswith(STOP + "11")  # the stop symbol and its final bar
    values = [CODES.index(pattern[i:i + 11]) for i in range(0, len(pattern) - len(STOP) - 2, 11)]
    start, *data, check = values
    assert check == (start + sum(i * v for i, v in enumerate(data, 1))) % 103
    charset, out = {104: "B", 105: "C"}[start], ""
    for v in data:
        if charset == "B" and v == 99 or charset == "C" and v == 100:
            charset = "C" if v == 99 else "B"
        elif charset == "B":
            out += chr(v + 32)
        else:
            out += f"{v:02d}"
    return out
