"""The operator queue refreshes itself in real Chromium: a new order appears on an untouched terminal,
and a half-typed scan is never thrown away by a reload."""
from __future__ import annotations

import time

import pytest
from conftest import create_order
from playwright.sync_api import expect
from test_browser import log_in, page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(backend):
    return backend.settings(queue_refresh_seconds=1)


def test_the_queue_shows_new_orders_by_itself_but_not_while_someone_types(page, live_server, client, accounts_):  # noqa: F811
    accounts_.operator("olga", "secret-pass")
    partner = accounts_.partner()
    create_order(client, partner, key="a", reference="FIRST")
    log_in(page, live_server.url, "olga")
    expect(page.locator("tbody tr[data-order-id]")).to_have_count(1)
    page.locator("#scan").fill("PO-77")  # half a scan: no reload may throw it away
    create_order(client, partner, key="b", reference="SECOND")
    time.sleep(2.5)
    expect(page.locator("#scan")).to_have_value("PO-77")
    expect(page.locator("tbody tr[data-order-id]")).to_have_count(1)
    page.locator("#scan").fill("")
    expect(page.locator("tbody tr[data-order-id]")).to_have_count(2, timeout=10_000)
