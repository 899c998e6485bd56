"""The flow board in real headless Chromium on a tablet: a supervisor opens it from the navigation, sees
the charts, follows the oldest order of a stage to its page; nothing scrolls sideways, upright or flat."""
from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import create_order
from playwright.sync_api import expect
from sqlalchemy import update
from test_browser import log_in, page, refused_by_policy  # noqa: F401  (fixtures)
from test_holds_browser import TABLET, no_sideways_scroll

from mes.domain.lifecycle import Status
from mes.models import Order, utcnow
from mes.services import orders as order_svc
from mes.services.accounts import operator_actor

pytestmark = pytest.mark.browser

TABLET_FLAT = {"width": 1024, "height": 768}


def test_a_supervisor_opens_the_board_reads_the_charts_and_follows_the_oldest_order(  # noqa: F811
        page, refused_by_policy, live_server, client, accounts_, db):
    boss = operator_actor(accounts_.operator("chief", "secret-pass", role="supervisor", display_name="Chief"))
    partner = accounts_.partner()
    oldest = create_order(client, partner, key="a", reference="OLD-1").get_json()["id"]
    create_order(client, partner, key="b", reference="NEW-1")
    shipped = create_order(client, partner, key="c", reference="SHIP-1").get_json()["id"]
    for target in (Status.QUEUED, Status.IN_PRODUCTION, Status.QUALITY_CHECK, Status.PACKED, Status.SHIPPED):
        order_svc.change_status(db, boss, shipped, target)
    db.execute(update(Order).where(Order.id == oldest).values(stage_entered_at=utcnow() - timedelta(days=2)))
    db.commit()
    page.set_viewport_size(TABLET)

    log_in(page, live_server.url, "chief")
    page.get_by_role("link", name="Flow board").click()
    expect(page.get_by_role("heading", name="Flow board", exact=True)).to_be_visible()

    chart = page.locator("#throughput svg.chart")
    expect(chart).to_be_visible()
    expect(chart.locator("rect.bar")).to_have_count(14)
    expect(page.locator("#throughput g.today text.value")).to_have_text("1")  # shipped today
    box = chart.bounding_box()
    assert box["width"] > 600 and box["height"] > 100  # drawn to the panel's width, not a speck
    expect(page.locator("#lead-count")).to_have_text("1")
    expect(page.locator("#on-time-rate")).to_have_text("100.0%")
    expect(page.locator("#late-reasons")).to_contain_text("No order shipped late in the last 30 days, and none is at risk or late now.")
    expect(page.locator('#wip tr[data-stage="received"] .wip-count')).to_have_text("2")
    expect(page.locator('#wip tr[data-stage="received"] .age')).to_have_text("2d 0h")
    assert no_sideways_scroll(page)
    page.set_viewport_size(TABLET_FLAT)
    assert no_sideways_scroll(page)

    page.locator('#wip tr[data-stage="received"] .oldest a').click()
    expect(page.get_by_role("heading", name=f"Order #{oldest}")).to_be_visible()
    page.go_back()
    page.set_viewport_size(TABLET)
    expect(page.locator("#at-risk-link")).to_have_attribute("href", "/operator/?promise=at_risk")
    assert no_sideways_scroll(page)
    assert refused_by_policy == []
