"""In real headless Chromium: an order shipped with the keyboard alone (Alt+N opens the shipment form,
Tab moves through it, Enter sends it), a refused field explained beside it with what was typed kept, and
a further shipment of a shipped order."""
from __future__ import annotations

import pytest
from conftest import create_order
from playwright.sync_api import expect
from sqlalchemy import select
from test_browser import log_in, page, refused_by_policy  # noqa: F401  (fixtures)
from test_cancel_browser import key, open_order, tab_to

from mes.domain.lifecycle import Status
from mes.models import Order, Shipment
from mes.services import orders as svc
from mes.services import production
from mes.services.accounts import operator_actor

pytestmark = pytest.mark.browser


def replace(page, text: str) -> None:
    """Overwrite the focused field's value, as a keyboard user does."""
    page.keyboard.press("Control+A")
    page.keyboard.type(text)


def test_an_order_is_shipped_with_the_keyboard_alone(page, refused_by_policy, live_server, client,  # noqa: F811
                                                     accounts_, db):
    chief = operator_actor(accounts_.operator("chief", "secret-pass", role="supervisor", display_name="The Chief"))
    order_id = create_order(client, accounts_.partner(), reference="PO-SHIP", quantity=40).get_json()["id"]
    for step in (Status.QUEUED, Status.IN_PRODUCTION):
        svc.change_status(db, chief, order_id, step)
    production.record_output(db, chief, order_id, 40)
    for step in (Status.QUALITY_CHECK, Status.PACKED):
        svc.change_status(db, chief, order_id, step)

    page.set_viewport_size({"width": 412, "height": 900})  # a phone on the dock
    log_in(page, live_server.url, "chief")
    open_order(page, order_id)
    key(page, "Alt+N")  # the order page's next step: Ship…
    assert page.url.endswith(f"/operator/orders/{order_id}/ship")
    expect(page.locator("h1")).to_have_text(f"Ship order #{order_id}")
    expect(page.locator("#left-to-ship")).to_have_text("40")
    assert page.evaluate("document.documentElement.scrollWidth") <= 412  # no sideways scroll
    for selector in ("#ship-carrier", "#ship-tracking_url", "#ship-quantity", "#confirm-ship", "#back-to-order"):
        assert page.locator(selector).bounding_box()["height"] >= 44, selector  # touch targets

    expect(page.locator("#ship-carrier")).to_be_focused()
    page.keyboard.type("DHL")
    page.keyboard.press("Tab")
    page.keyboard.type("JD0146000032")
    page.keyboard.press("Tab")
    page.keyboard.type("http://www.dhl.com/track?id=JD0146000032")  # not https
    page.keyboard.press("Tab")
    replace(page, "2")
    page.keyboard.press("Tab")
    expect(page.locator("#ship-quantity")).to_have_value("40")  # what may still leave, proposed
    replace(page, "30")
    page.keyboard.press("Tab")
    expect(page.locator("#confirm-ship")).to_be_focused()
    key(page, "Enter")

    expect(page.locator(".flash.error")).to_contain_text("Nothing was shipped.")
    expect(page.locator("#ship-tracking_url-error")).to_have_text(
        "Tracking link must be an https:// link to the carrier's tracking page")
    expect(page.locator("#ship-tracking_url")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#ship-carrier")).to_have_value("DHL")  # nothing typed is lost
    expect(page.locator("#ship-quantity")).to_have_value("30")
    db.rollback()
    assert db.scalar(select(Order.status).where(Order.id == order_id)) == "packed"

    expect(page.locator("#ship-carrier")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    replace(page, "https://www.dhl.com/track?id=JD0146000032")
    key(page, "Enter")  # Enter in a field sends the form
    assert page.url.endswith(f"/operator/orders/{order_id}")
    expect(page.locator(".flash.success")).to_have_text(
        f"Order {order_id} shipped: 30 pieces in 2 packages with DHL, tracking JD0146000032; 30 of 40 shipped.")
    expect(page.locator("#status")).to_have_text("shipped")
    expect(page.locator("#shipments tbody tr")).to_have_count(1)
    expect(page.locator("#shipments tbody tr").first).to_contain_text("The Chief")

    # The rest leaves later: another shipment from the same page, still by keyboard.
    tab_to(page, "#ship-more")
    key(page, "Enter")
    expect(page.locator("h1")).to_have_text(f"Another shipment of order #{order_id}")
    expect(page.locator("#ship-quantity")).to_have_value("10")
    page.keyboard.type("Own van")  # the proposed packages and pieces stand
    key(page, "Enter")
    expect(page.locator(".flash.success")).to_contain_text("has a further shipment: 10 pieces in 1 package")
    expect(page.locator("#shipments tbody tr")).to_have_count(2)
    expect(page.locator("#shipped-quantity strong")).to_have_text("40")
    expect(page.locator("#ship-more")).to_have_count(0)
    db.rollback()
    assert [s.quantity for s in db.scalars(select(Shipment).where(Shipment.order_id == order_id))] == [30, 10]
    assert refused_by_policy == []
