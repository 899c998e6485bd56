"""In real headless Chromium: a supervisor cancels an order with the keyboard alone (the confirmation page,
a reason, a note), a refused cancel's message, and an operator's badge printed and scanned at the login."""
from __future__ import annotations

import pytest
from conftest import create_order
from playwright.sync_api import expect
from sqlalchemy import select
from test_browser import log_in, page, refused_by_policy  # noqa: F401  (fixtures)

from mes.domain.scan import barcode_value
from mes.models import Order, ReasonCode
from mes.services import accounts as accounts_svc
from mes.services import reason_codes
from mes.services.accounts import operator_actor

pytestmark = pytest.mark.browser


def key(page, combo: str) -> None:
    """A key that sends a form, then wait for the page it leads to."""
    with page.expect_navigation():
        page.keyboard.press(combo)


def tab_to(page, selector: str, limit: int = 60) -> None:
    """Tab through the page until `selector` has the focus, as a keyboard user does."""
    for _ in range(limit):
        if page.evaluate("s => document.activeElement === document.querySelector(s)", selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{selector} never got the focus")


def open_order(page, order_id: int) -> None:
    """Scan the order's label into the field that has the focus on every page."""
    expect(page.locator("#scan")).to_be_focused()
    page.keyboard.type(barcode_value(order_id))
    key(page, "Enter")


def test_a_supervisor_cancels_an_order_with_the_keyboard_alone(page, refused_by_policy, live_server, client,  # noqa: F811
                                                               accounts_, db):
    accounts_.operator("chief", "secret-pass", role="supervisor", display_name="The Chief")
    order_id = create_order(client, accounts_.partner(), reference="PO-DUP").get_json()["id"]
    log_in(page, live_server.url, "chief")
    open_order(page, order_id)
    tab_to(page, "#cancel-order")
    key(page, "Enter")
    assert page.url.endswith(f"/operator/orders/{order_id}/cancel")
    expect(page.locator("h1")).to_have_text(f"Cancel order #{order_id}?")
    expect(page.locator("#cancel-order")).to_contain_text("PO-DUP")
    expect(page.locator("#consequences")).to_contain_text("cannot be reopened")
    expect(page.locator("select[name=cancel_reason]")).to_be_focused()
    page.keyboard.type("dup")  # the select's type-ahead: Duplicate order
    expect(page.locator("select[name=cancel_reason] option:checked")).to_have_text("Duplicate order")
    page.keyboard.press("Tab")
    page.keyboard.type("ordered twice, see PO-DUP-2")
    page.keyboard.press("Tab")
    expect(page.locator("#confirm-cancel")).to_be_focused()
    expect(page.locator("#confirm-cancel")).to_have_text(f"Cancel order #{order_id}")
    key(page, "Enter")

    assert page.url.endswith(f"/operator/orders/{order_id}")
    expect(page.locator(".flash.success")).to_have_text(f"Order {order_id} is cancelled (Duplicate order).")
    expect(page.locator("#status")).to_have_text("cancelled")
    last = page.locator("#history tbody tr").last
    expect(last).to_contain_text("operator:chief")
    expect(last).to_contain_text("Duplicate order: ordered twice, see PO-DUP-2")
    assert db.scalar(select(Order.status).where(Order.id == order_id)) == "cancelled"
    assert refused_by_policy == []


def test_a_refused_cancel_says_why_and_changes_nothing(page, live_server, client, accounts_, db):  # noqa: F811
    chief = operator_actor(accounts_.operator("chief", "secret-pass", role="supervisor"))
    order_id = create_order(client, accounts_.partner()).get_json()["id"]
    log_in(page, live_server.url, "chief")
    page.goto(f"{live_server.url}/operator/orders/{order_id}/cancel")
    # No reason: the form is not sent (the select is required), the page stays as it was.
    tab_to(page, "#confirm-cancel")
    page.keyboard.press("Enter")
    assert page.url.endswith(f"/operator/orders/{order_id}/cancel")
    assert page.evaluate("document.querySelector('select[name=cancel_reason]').validity.valueMissing")

    # A reason retired while the page was open: the server refuses it and shows the list as it is now.
    page.locator("select[name=cancel_reason]").focus()
    page.keyboard.type("cann")
    expect(page.locator("select[name=cancel_reason] option:checked")).to_have_text("Cannot be made")
    page.keyboard.press("Tab")
    page.keyboard.type("no tooling for it")
    retired = db.scalar(select(ReasonCode.id).where(ReasonCode.kind == "cancel", ReasonCode.code == "cannot_be_made"))
    reason_codes.retire(db, chief, retired)
    page.keyboard.press("Tab")
    key(page, "Enter")
    expect(page.locator(".flash.error")).to_have_text(
        f"Order {order_id} was not cancelled. Choose one of the listed reasons.")
    expect(page.locator("textarea[name=note]")).to_have_value("no tooling for it")
    expect(page.locator("select[name=cancel_reason] option", has_text="Cannot be made")).to_have_count(0)
    db.rollback()
    assert db.scalar(select(Order.status).where(Order.id == order_id)) == "received"


def test_a_printed_badge_reads_right_and_signs_its_operator_in(page, refused_by_policy, live_server, client,  # noqa: F811
                                                               accounts_, db):
    accounts_.operator("chief", "secret-pass", role="supervisor")
    olga = accounts_.operator("olga", "secret-pass", display_name="Olga K.")
    accounts_svc.set_operator_pin(db, "olga", "4711")
    log_in(page, live_server.url, "chief")
    page.goto(f"{live_server.url}/operator/operators")
    with page.expect_navigation():
        page.locator('a[data-badge="olga"]').click()
    assert page.url.endswith(f"/operator/operators/{olga.id}/badge")
    expect(page.locator("#badge-name")).to_have_text("Olga K.")
    expect(page.locator("#badge-login")).to_have_text("olga")
    expect(page.locator("#badge-value")).to_have_text("OP-olga")
    barcode = page.locator("#badge-barcode")
    expect(barcode).to_be_visible()
    assert page.evaluate("document.querySelector('#badge-barcode').naturalWidth") > 0  # the SVG loaded
    page.emulate_media(media="print")
    card = page.locator("#badge").bounding_box()
    assert abs(card["width"] - 85.6 / 25.4 * 96) < 2 and abs(card["height"] - 54 / 25.4 * 96) < 2, card
    box = barcode.bounding_box()
    assert box["x"] >= card["x"] and box["x"] + box["width"] <= card["x"] + card["width"] + 0.5
    assert box["y"] + box["height"] <= card["y"] + card["height"] + 0.5
    expect(page.locator(".no-print")).to_be_hidden()
    page.emulate_media(media="screen")
    value = page.locator("#badge-value").inner_text()

    # The terminal changes hands: the badge scanned into the login field, then the PIN.
    page.goto(f"{live_server.url}/operator/")
    page.locator("#switch").focus()
    key(page, "Enter")
    expect(page.get_by_label("Login or badge")).to_be_focused()
    page.keyboard.type(value)
    page.keyboard.press("Tab")
    page.keyboard.type("4711")
    key(page, "Enter")
    expect(page.locator(".who")).to_have_text("Olga K. (operator)")
    assert refused_by_policy == []
