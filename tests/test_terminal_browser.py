"""The shop-floor terminal in real headless Chromium: a keyboard-only walk from a scan to shipped with
quantities recorded (the Alt+ keys shown on the buttons), and the tablet and phone layouts."""
from __future__ import annotations

import pytest
from conftest import create_order
from playwright.sync_api import expect
from test_browser import log_in, page, refused_by_policy  # noqa: F401  (fixtures)

from mes.domain.scan import barcode_value

pytestmark = pytest.mark.browser


def key(page, combo: str) -> None:
    """A shortcut, then wait for the page it leads to (every action posts a form and redirects)."""
    with page.expect_navigation():
        page.keyboard.press(combo)


def test_from_a_scan_to_shipped_without_a_mouse(page, refused_by_policy, live_server, client, accounts_):  # noqa: F811
    accounts_.operator("olga", "secret-pass", display_name="Olga K.")
    order_id = create_order(client, accounts_.partner(), reference="PO-KEYS", quantity=25).get_json()["id"]
    log_in(page, live_server.url, "olga")
    expect(page.locator("#scan")).to_be_focused()  # the scan field has the focus on every page
    page.keyboard.type(barcode_value(order_id))  # what a scanner types, then its Enter
    key(page, "Enter")
    assert page.url.endswith(f"/operator/orders/{order_id}")
    expect(page.get_by_role("button", name="Claim")).to_contain_text("Alt+C")

    key(page, "Alt+c")
    expect(page.locator("#holder")).to_have_text("Olga K.")
    key(page, "Alt+n")  # queue for production
    key(page, "Alt+n")  # start production
    expect(page.locator("#status")).to_have_text("in production")
    key(page, "Alt+s")  # start work
    expect(page.locator("#work-state")).to_have_text("running")
    page.keyboard.press("Alt+q")
    expect(page.locator("input[name=good]")).to_be_focused()
    page.keyboard.type("24")
    page.keyboard.press("Tab")
    page.keyboard.type("1")
    page.keyboard.press("Tab")
    page.keyboard.type("b")  # the defect select: the first code starting with b (Burr)
    page.keyboard.press("Tab")  # the note, then the button
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Record quantities")).to_be_focused()
    key(page, "Enter")
    expect(page.locator(".flash, .messages").first).to_contain_text("Recorded 24 good, 1 scrap")
    page.keyboard.press("Alt+q")
    page.keyboard.type("1")
    key(page, "Enter")
    expect(page.locator("#remaining")).to_have_text("0")
    key(page, "Alt+f")  # finish work
    for status in ("quality check", "packed"):
        key(page, "Alt+n")
        expect(page.locator("#status")).to_have_text(status)
    key(page, "Alt+n")  # Ship…: the shipment form, the pieces made proposed
    expect(page.locator("input[name=carrier]")).to_be_focused()
    page.keyboard.type("DHL")
    key(page, "Enter")
    expect(page.locator("#status")).to_have_text("shipped")
    assert page.locator("#records tbody tr").count() == 2
    assert refused_by_policy == []


@pytest.mark.parametrize("width", [800, 412])
def test_tablet_and_phone_layouts_fit_and_targets_are_big_enough(page, live_server, client, accounts_, width):  # noqa: F811
    accounts_.operator("olga", "secret-pass")
    order_id = create_order(client, accounts_.partner(), reference="PO-FIT").get_json()["id"]
    page.set_viewport_size({"width": width, "height": 900})
    log_in(page, live_server.url, "olga")
    for path in ("/operator/", f"/operator/orders/{order_id}", "/operator/my-work", "/operator/scan?q=PO"):
        page.goto(f"{live_server.url}{path}")
        assert page.evaluate("document.documentElement.scrollWidth") <= width, path
        small = page.evaluate("""() => [...document.querySelectorAll('main button, main select, main input:not([type=hidden]), #scan')]
            .filter(e => e.offsetParent !== null)
            .map(e => [e.name || e.textContent.trim(),
                       (e.type === 'checkbox' ? e.closest('label') : e).getBoundingClientRect().height])
            .filter(([, h]) => h < 44)""")
        assert small == [], (path, small)
