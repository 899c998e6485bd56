"""The operator UI in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright):
log in, filter the queue, claim an order, move it to the next status."""
from __future__ import annotations

import shutil
import tempfile
from datetime import date, timedelta

import pytest
from conftest import create_order
from playwright.sync_api import expect, sync_playwright
from sqlalchemy import update

from mes.models import Order

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium's own background traffic is refused on this closed network: switch it off.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]

pytestmark = pytest.mark.browser


@pytest.fixture
def page():
    profile = tempfile.mkdtemp(prefix="mes-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                       args=CHROMIUM_ARGS)
        page = context.new_page()
        yield page
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def refused_by_policy(page) -> list[str]:
    """What the page's Content-Security-Policy refused (Chromium says so on the console)."""
    refused: list[str] = []
    page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
    return refused


def log_in(page, url: str, login: str, password: str = "secret-pass") -> None:
    """Through the login form, as a person would."""
    page.goto(f"{url}/operator/login")
    page.get_by_label("Login").fill(login)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_operator_logs_in_filters_claims_and_moves_an_order(page, refused_by_policy, live_server, client,
                                                            accounts_, db):
    accounts_.operator("olga", "secret-pass", display_name="Olga K.")
    partner = accounts_.partner()
    late = create_order(client, partner, key="a", reference="LATE-1").get_json()["id"]
    create_order(client, partner, key="b", reference="FRESH-1")
    db.execute(update(Order).where(Order.id == late).values(promised_date=date.today() - timedelta(days=3)))
    db.commit()

    page.goto(f"{live_server.url}/operator/")
    expect(page).to_have_url(f"{live_server.url}/operator/login?next=%2Foperator%2F")
    page.get_by_label("Login").fill("olga")
    page.get_by_label("Password").fill("wrong-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("status")).to_have_text("Wrong login or password.")
    page.get_by_label("Password").fill("secret-pass")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Orders queue")).to_be_visible()
    expect(page.locator("tbody tr")).to_have_count(2)
    expect(page.locator("tr.overdue")).to_have_count(1)

    page.get_by_label("overdue only").check()
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody tr")).to_contain_text("LATE-1")

    page.get_by_role("link", name=f"#{late}").click()
    expect(page.get_by_role("heading", name=f"Order #{late}")).to_be_visible()
    page.get_by_role("button", name="Claim").click()
    expect(page.get_by_role("status")).to_have_text(f"You hold order {late} now.")
    expect(page.locator("#holder")).to_have_text("Olga K.")

    page.get_by_role("button", name="Queue for production").click()
    expect(page.locator("#status")).to_have_text("queued")
    # Queued, its promise is refreshed: the promised date has passed, so the next move asks why.
    page.get_by_label("Why is this order late?").select_option(label="Capacity")
    page.get_by_role("button", name="Start production").click()
    expect(page.get_by_role("status")).to_have_text(f"Order {late} is now in production.")
    expect(page.locator("#history tbody tr")).to_have_count(3)
    expect(page.locator("#history")).to_contain_text("late: Capacity")

    page.get_by_role("link", name="My work").click()
    expect(page.locator("#in-progress")).to_contain_text("LATE-1")
    expect(page.locator("#done-today tbody tr")).to_have_count(2)
    assert refused_by_policy == []


def test_a_cookie_copied_before_logout_does_not_log_the_browser_back_in(page, live_server, accounts_):
    accounts_.operator("olga", "secret-pass")
    page.goto(f"{live_server.url}/operator/login")
    page.get_by_label("Login").fill(" Olga")
    page.get_by_label("Password").fill("secret-pass")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Orders queue")).to_be_visible()
    copied = page.context.cookies()
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("status")).to_have_text("You are logged out.")
    page.context.add_cookies(copied)
    page.goto(f"{live_server.url}/operator/")
    expect(page.get_by_role("heading", name="Operator login")).to_be_visible()
