"""The operator UI through HTTP (forms, CSRF, session cookie): login, queue, order page, my work."""
from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from conftest import cancel_reason, create_order
from sqlalchemy import update

from mes.domain.errors import Conflict
from mes.domain.lifecycle import Status
from mes.models import Order
from mes.services import orders as svc
from mes.services.accounts import operator_actor

TOKEN = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')


def csrf(html: str) -> str:
    return TOKEN.search(html).group(1)


class Browserless:
    """A logged-in operator driving the forms as a browser would (token from the page, cookie jar)."""

    def __init__(self, client):
        self.client = client

    def login(self, login: str, password: str):
        page = self.client.get("/operator/login").get_data(as_text=True)
        return self.client.post("/operator/login", data={"login": login, "password": password,
                                                         "csrf_token": csrf(page)})

    def post(self, path: str, page_path: str, **data):
        token = csrf(self.client.get(page_path).get_data(as_text=True))
        return self.client.post(path, data={**data, "csrf_token": token}, follow_redirects=True)


@pytest.fixture
def ui(client, accounts_):
    accounts_.operator("olga", "secret-pass")
    b = Browserless(client)
    assert b.login("olga", "secret-pass").status_code == 302
    return b


def test_queue_needs_login(client):
    r = client.get("/operator/")
    assert r.status_code == 302 and "/operator/login" in r.headers["Location"]


def test_wrong_password_is_a_readable_401_and_is_throttled(client, accounts_, one_rate_window):
    accounts_.operator("olga", "secret-pass")
    b = Browserless(client)
    statuses = [b.login("olga", "nope-nope").status_code for _ in range(6)]
    assert statuses[:5] == [401] * 5 and statuses[5] == 429
    r = b.login("olga", "nope-nope")
    assert r.status_code == 429 and "Too many failed logins" in r.get_data(as_text=True)
    other_login = b.login("ivan", "nope-nope")  # the throttle is per login and address
    assert other_login.status_code == 401 and "Wrong login or password" in other_login.get_data(as_text=True)


# Spellings the lookup treats as the same login: padding, case, Unicode compatibility forms.
LOGIN_VARIANTS = [" olga", "olga   ", "\tOlga\n", "OLGA", "\u3000olga", "\uff4f\uff4c\uff47\uff41"]


@pytest.mark.parametrize("variant", LOGIN_VARIANTS)
def test_login_variants_share_the_throttle_of_the_login(client, accounts_, variant, one_rate_window):
    accounts_.operator("olga", "secret-pass")
    b = Browserless(client)
    assert [b.login("olga", "nope-nope").status_code for _ in range(5)] == [401] * 5
    r = b.login(variant, "secret-pass")
    assert r.status_code == 429 and "Too many failed logins" in r.get_data(as_text=True)


@pytest.mark.parametrize("variant", LOGIN_VARIANTS)
def test_login_variants_reach_the_same_account(client, accounts_, variant):
    accounts_.operator("olga", "secret-pass")
    assert Browserless(client).login(variant, "secret-pass").status_code == 302


def test_accounts_are_created_under_the_normalised_login(accounts_):
    op = accounts_.operator(" Olga ", "secret-pass")
    assert op.login == "olga" and op.display_name == " Olga ".strip()
    with pytest.raises(Conflict):
        accounts_.operator("\uff2f\uff2c\uff27\uff21", "secret-pass")


def test_inactive_operator_cannot_log_in(client, accounts_, db):
    op = accounts_.operator("gone", "secret-pass")
    op.active = False
    db.commit()
    assert Browserless(client).login("gone", "secret-pass").status_code == 401


def test_post_without_csrf_token_is_refused(ui, client, accounts_):
    oid = create_order(client, accounts_.partner()).get_json()["id"]
    r = client.post(f"/operator/orders/{oid}/claim")
    assert r.status_code == 400 and "CSRF" in r.get_data(as_text=True)
    assert r.mimetype == "text/html"


def test_queue_shows_open_orders_sorted_with_counts_and_overdue(ui, client, accounts_, db):
    partner = accounts_.partner()
    ids = [create_order(client, partner, key=f"k{i}", reference=f"R-{i}",
                        priority=["low", "urgent", "normal"][i]).get_json()["id"] for i in range(3)]
    late = date.today() - timedelta(days=2)
    db.execute(update(Order).where(Order.id == ids[2]).values(promised_date=late))
    db.commit()
    html = client.get("/operator/").get_data(as_text=True)
    rows = re.findall(r'<tr class="(overdue)?" data-order-id="(\d+)"', html)
    assert [int(r[1]) for r in rows] == [ids[2], ids[1], ids[0]]  # late first, then urgent before low
    assert rows[0][0] == "overdue" and rows[1][0] == ""
    assert re.search(r'data-status="received">received <strong>3</strong>', html)
    assert '<strong id="overdue-count">1</strong>' in html


def test_queue_filters_status_overdue_and_search(ui, client, accounts_, db):
    partner = accounts_.partner()
    ids = [create_order(client, partner, key=f"k{i}", reference=f"R-{i}").get_json()["id"] for i in range(4)]
    boss = operator_actor(accounts_.operator("chief", role="supervisor"))
    svc.change_status(db, boss, ids[1], Status.QUEUED)
    db.execute(update(Order).where(Order.id == ids[3]).values(promised_date=date.today() - timedelta(days=1)))
    db.commit()

    def listed(query):
        html = client.get(f"/operator/?{query}").get_data(as_text=True)
        return [int(x) for x in re.findall(r'data-order-id="(\d+)"', html)]

    assert listed("status=queued") == [ids[1]]
    assert listed("overdue=1") == [ids[3]]
    assert listed("q=R-2") == [ids[2]]
    assert listed(f"q={ids[0]}") == [ids[0]]
    assert listed("q=nothing-like-this") == []
    r = client.get("/operator/?status=bogus")
    assert r.status_code == 422 and "Unknown status filter" in r.get_data(as_text=True)
    assert client.get("/operator/?after=junk").status_code == 400


def link(html: str, rel: str) -> str | None:
    found = re.search(rf'<a rel="{rel}"[^>]* href="([^"]+)"', html)
    return found.group(1).replace("&amp;", "&") if found else None


@pytest.mark.parametrize("sort", ["promised", "urgent", "projected"])
def test_queue_keyset_pages_cover_every_order_once_forward_and_back(ui, client, accounts_, sort):
    from mes.operator import views
    partner = accounts_.partner()
    ids = {create_order(client, partner, key=f"k{i}", reference=f"R-{i}",
                        priority=["urgent", "high", "normal", "low"][i % 4]).get_json()["id"] for i in range(7)}
    views.PAGE_SIZE, old = 3, views.PAGE_SIZE
    try:
        pages, url = [], f"/operator/?sort={sort}"
        while url:
            html = client.get(url).get_data(as_text=True)
            pages.append([int(x) for x in re.findall(r'data-order-id="(\d+)"', html)])
            url = link(html, "next")
        seen = [i for page in pages for i in page]
        assert sorted(seen) == sorted(ids) and len(seen) == len(ids) and len(pages) == 3
        back = []
        while True:  # from the last page back to the first, by the previous links
            back.append([int(x) for x in re.findall(r'data-order-id="(\d+)"', html)])
            url = link(html, "prev")
            if url is None:
                break
            html = client.get(url).get_data(as_text=True)
        assert back == pages[::-1], (back, pages)
    finally:
        views.PAGE_SIZE = old


def test_queue_urgent_first_and_who_holds_what(ui, client, accounts_, db):
    from mes.models import Operator
    from mes.services.accounts import operator_actor
    partner = accounts_.partner()
    low = create_order(client, partner, key="a", reference="LOW", priority="low").get_json()["id"]
    urgent = create_order(client, partner, key="b", reference="URG", priority="urgent").get_json()["id"]
    other = create_order(client, partner, key="c", reference="OTH").get_json()["id"]
    olga = operator_actor(db.query(Operator).filter_by(login="olga").one())
    ivan = operator_actor(accounts_.operator("ivan", display_name="Ivan P."))
    svc.claim(db, olga, low)
    svc.claim(db, ivan, other)
    rows = lambda q: [int(x) for x in re.findall(r'data-order-id="(\d+)"', client.get(f"/operator/?{q}").get_data(as_text=True))]  # noqa: E731
    assert rows("sort=urgent")[0] == urgent
    assert rows("holder=mine") == [low] and rows("holder=unclaimed") == [urgent]
    html = client.get("/operator/").get_data(as_text=True)
    row = html.split(f'data-order-id="{other}"')[1].split("</tr>")[0]
    assert '<td class="holder">Ivan P.</td>' in row
    assert client.get("/operator/?holder=theirs").status_code == 400
    assert client.get("/operator/?sort=random").status_code == 400


def test_order_page_claim_and_move_through_production(ui, client, accounts_):
    oid = create_order(client, accounts_.partner()).get_json()["id"]
    page = f"/operator/orders/{oid}"
    html = client.get(page).get_data(as_text=True)
    assert "Claim" in html and "Queue for production" in html and "Cancel order" not in html
    html = ui.post(f"{page}/claim", page).get_data(as_text=True)
    assert "You hold order" in html and "Release" in html
    for target, version in (("queued", 1), ("in_production", 2), ("quality_check", 3)):
        html = ui.post(f"{page}/status", page, target=target, version=version).get_data(as_text=True)
        assert f"is now {target.replace('_', ' ')}" in html
    html = ui.post(f"{page}/status", page, target="in_production", version=4).get_data(as_text=True)
    assert "needs a reason" in html
    html = ui.post(f"{page}/status", page, target="in_production", version=4,
                   reason="burr on edge").get_data(as_text=True)
    assert "is now in production" in html and "burr on edge" in html
    history = re.findall(r"<td>(received|queued|in production|quality check|—)</td>\s*<td>([a-z ]+)</td>", html)
    assert history == [("—", "received"), ("received", "queued"), ("queued", "in production"),
                       ("in production", "quality check"), ("quality check", "in production")]


def test_stale_page_and_invalid_moves_get_a_clear_message(ui, client, accounts_, db):
    oid = create_order(client, accounts_.partner()).get_json()["id"]
    page = f"/operator/orders/{oid}"
    ui.post(f"{page}/status", page, target="queued", version=1)
    html = ui.post(f"{page}/status", page, target="queued", version=1).get_data(as_text=True)
    assert "changed meanwhile" in html
    html = ui.post(f"{page}/status", page, target="delivered", version=2).get_data(as_text=True)
    assert "cannot move to &#39;delivered&#39;" in html
    html = ui.post(f"{page}/status", page, target="in_production", version=2).get_data(as_text=True)
    assert "Claim the order first" in html


def test_claim_of_a_held_order_names_the_holder(ui, client, accounts_, db):
    oid = create_order(client, accounts_.partner()).get_json()["id"]
    ivan = operator_actor(accounts_.operator("ivan", display_name="Ivan P."))
    svc.claim(db, ivan, oid)
    page = f"/operator/orders/{oid}"
    html = client.get(page).get_data(as_text=True)
    assert "Ivan P. holds this order" in html and f"/operator/orders/{oid}/claim" not in html
    html = ui.post(f"{page}/claim", page).get_data(as_text=True)
    assert "already held by Ivan P." in html


def test_operators_cannot_cancel_but_supervisors_can(client, accounts_, db):
    oid = create_order(client, accounts_.partner()).get_json()["id"]
    accounts_.operator("chief", "chief-pass", role="supervisor")
    b = Browserless(client)
    b.login("chief", "chief-pass")
    page = f"/operator/orders/{oid}"
    assert "Cancel order" in client.get(page).get_data(as_text=True)
    html = b.post(f"{page}/cancel", f"{page}/cancel", cancel_reason=str(cancel_reason(db)),
                  version=1).get_data(as_text=True)
    assert "is cancelled (Customer request)" in html


def test_unknown_order_is_a_404_page(ui, client):
    r = client.get("/operator/orders/424242")
    assert r.status_code == 404 and r.mimetype == "text/html" and "does not exist" in r.get_data(as_text=True)


def test_my_work_lists_held_orders_and_todays_steps(ui, client, accounts_):
    partner = accounts_.partner()
    a = create_order(client, partner, key="a", reference="A").get_json()["id"]
    create_order(client, partner, key="b", reference="B")
    page = f"/operator/orders/{a}"
    ui.post(f"{page}/claim", page)
    ui.post(f"{page}/status", page, target="queued", version=1)
    html = client.get("/operator/my-work").get_data(as_text=True)
    in_progress = html.split('id="in-progress"')[1].split("</table>")[0]
    done = html.split('id="done-today"')[1].split("</table>")[0]
    assert f"#{a}" in in_progress and in_progress.count("<tr") == 2  # header + one order
    assert "received &rarr; queued" in done


def test_my_work_shows_the_most_pressing_held_orders_and_links_to_all(ui, client, accounts_, db):
    """An operator holding more than a page's worth sees the first MY_WORK_SHOWN by promised date, the
    total, and the queue's "claimed by me" filter for the rest."""
    from mes.services.accounts import find_operator
    partner = accounts_.partner()
    ids = [create_order(client, partner, key=f"m{i}", reference=f"M{i}").get_json()["id"]
           for i in range(svc.MY_WORK_SHOWN + 2)]
    olga = find_operator(db, "olga")
    db.execute(update(Order).where(Order.id.in_(ids)).values(holder_id=olga.id))
    db.execute(update(Order).where(Order.id == ids[-1]).values(promised_date=date.today()))  # the most pressing
    db.commit()
    html = client.get("/operator/my-work").get_data(as_text=True)
    in_progress = html.split('id="in-progress"')[1].split("</table>")[0]
    assert f"In progress ({len(ids)})" in html
    assert in_progress.count("<tr") == 1 + svc.MY_WORK_SHOWN and f"#{ids[-1]}<" in in_progress
    assert f"all {len(ids)} in the queue" in html and "holder=mine" in html


def test_logout_ends_the_session(ui, client):
    r = ui.post("/operator/logout", "/operator/")
    assert "You are logged out" in r.get_data(as_text=True)
    assert client.get("/operator/").status_code == 302
