"""The promise in real headless Chromium on a tablet's viewport: the queue's at-risk count and filter, the
order page's time in stage, and the late reason an operator gives when moving an order at risk."""
from __future__ import annotations

import pytest
from conftest import create_order
from playwright.sync_api import expect
from sqlalchemy import update
from test_browser import log_in, page, refused_by_policy  # noqa: F401  (fixtures)
from test_holds_browser import TABLET, no_sideways_scroll

from mes.models import Order

pytestmark = pytest.mark.browser


def test_at_risk_filter_and_late_reason_on_a_tablet(page, refused_by_policy, live_server, client, accounts_,  # noqa: F811
                                                    db):
    accounts_.operator("olga", "secret-pass", display_name="Olga K.")
    partner = accounts_.partner()
    risky = create_order(client, partner, key="a", reference="RISK-1").get_json()["id"]
    create_order(client, partner, key="b", reference="FINE-1")
    # As the scheduler would leave it after the queue ahead of it grew.
    db.execute(update(Order).where(Order.id == risky).values(promise_status="at_risk"))
    db.commit()
    page.set_viewport_size(TABLET)

    log_in(page, live_server.url, "olga")
    expect(page.locator("tbody tr")).to_have_count(2)
    expect(page.locator("#at-risk-count")).to_have_text("1")
    expect(page.locator("tbody tr td.projected").first).not_to_be_empty()

    page.locator("#at-risk-link").click()  # one click
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody tr")).to_contain_text("RISK-1")
    expect(page.locator("tbody tr .badge.at_risk")).to_have_text("at risk")
    assert no_sideways_scroll(page)

    page.get_by_role("link", name=f"#{risky}").click()
    expect(page.locator("#promise-badge")).to_have_text("at risk")
    expect(page.locator("#stages tbody tr")).to_have_count(5)
    expect(page.locator('#stages tr[data-stage="received"]')).to_contain_text("(now)")
    assert no_sideways_scroll(page)

    page.get_by_label("Why is this order at risk?").select_option(label="Late upstream")
    page.get_by_role("button", name="Queue for production").click()
    expect(page.locator("#status")).to_have_text("queued")
    expect(page.locator("#history")).to_contain_text("late: Late upstream")
    assert refused_by_policy == []
