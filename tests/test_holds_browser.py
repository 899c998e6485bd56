"""Holds in real headless Chromium on a tablet's viewport: put an order on hold with a reason, find it
with the queue's on-hold filter, release it and move it on."""
from __future__ import annotations

import pytest
from conftest import create_order
from playwright.sync_api import expect
from test_browser import log_in, page, refused_by_policy  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

TABLET = {"width": 768, "height": 1024}


def no_sideways_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_hold_with_a_reason_filter_and_release_on_a_tablet(page, refused_by_policy, live_server, client,  # noqa: F811
                                                           accounts_):
    accounts_.operator("olga", "secret-pass", display_name="Olga K.")
    partner = accounts_.partner()
    held = create_order(client, partner, key="a", reference="HOLD-1").get_json()["id"]
    create_order(client, partner, key="b", reference="FREE-1")
    page.set_viewport_size(TABLET)

    log_in(page, live_server.url, "olga")
    expect(page.locator("tbody tr")).to_have_count(2)

    page.get_by_role("link", name=f"#{held}").click()
    page.get_by_label("Hold reason").select_option(label="Material shortage")
    page.get_by_label("Note (internal").fill("waiting for S355 plate")
    expect(page.get_by_role("button", name="Put on hold")).to_be_in_viewport()
    page.get_by_role("button", name="Put on hold").click()
    expect(page.get_by_role("status")).to_have_text(f"Order {held} is on hold: Material shortage.")
    expect(page.locator("#hold")).to_contain_text("Material shortage")
    expect(page.get_by_role("button", name="Queue for production")).to_have_count(0)
    assert no_sideways_scroll(page)

    page.get_by_role("link", name="Orders queue").click()
    page.get_by_label("on hold only").check()
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody tr td.hold")).to_contain_text("Material shortage")
    expect(page.locator("tbody tr .hold-age")).to_have_text("0m")
    assert no_sideways_scroll(page)

    page.get_by_role("link", name=f"#{held}").click()
    page.get_by_role("button", name="Release hold").click()
    expect(page.get_by_role("status")).to_have_text(f"Order {held} is released from hold and can move on.")
    page.get_by_role("button", name="Queue for production").click()
    expect(page.locator("#status")).to_have_text("queued")
    expect(page.locator("#history tbody tr")).to_have_count(4)

    page.get_by_role("link", name="Orders queue").click()
    page.locator("#on-hold-link").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody tr")).to_contain_text("No orders match these filters.")
    assert refused_by_policy == []
