"""Production on the order page over HTTP (forms, CSRF): work start/pause, quantities recorded, a
refused count shown again with what was typed, rework from quality check."""
from __future__ import annotations

import re

from conftest import create_order
from test_operator_ui import Browserless

from mes.domain.lifecycle import Status
from mes.services import orders as svc
from mes.services.accounts import operator_actor


def logged_in(client, accounts_, login: str):
    op = accounts_.operator(login, "secret-pass")
    b = Browserless(client)
    assert b.login(login, "secret-pass").status_code == 302
    return b, operator_actor(op)


def counts(html: str) -> tuple[int, int, int]:
    return tuple(int(re.search(rf'id="{name}">(\d+)<', html).group(1)) for name in ("produced", "scrapped", "remaining"))


def test_an_operator_works_and_records_quantities_from_the_order_page(client, accounts_, db):
    ui, olga = logged_in(client, accounts_, "olga")
    order_id = create_order(client, accounts_.partner(), quantity=40).get_json()["id"]
    page = f"/operator/orders/{order_id}"
    assert 'id="output-form"' not in client.get(page).get_data(as_text=True)  # received: nothing to record yet
    svc.claim(db, olga, order_id)
    svc.change_status(db, olga, order_id, Status.QUEUED)
    svc.change_status(db, olga, order_id, Status.IN_PRODUCTION)

    html = ui.post(f"{page}/work/start", page).get_data(as_text=True)
    assert "Work started on order" in html and 'id="work-state">running<' in html
    assert 'data-work="pause"' in html and 'data-work="start"' not in html

    html = ui.post(f"{page}/output", page, good="30", scrap="2", defect_code="burr", note="die worn").get_data(as_text=True)
    assert f"Recorded 30 good, 2 scrap on order {order_id}: 30 of 40 made, 10 to go." in html
    assert counts(html) == (30, 2, 10) and "die worn" in html and "Burr" in html

    r = ui.post(f"{page}/output", page, good="11", scrap="", note="second batch")
    html = r.get_data(as_text=True)
    assert r.status_code == 422 and "Nothing was recorded" in html and "only 10 more good pieces are needed" in html
    assert re.search(r'<input name="good"[^>]* value="11"', html)  # kept
    assert "second batch" in html and counts(html) == (30, 2, 10)
    r = ui.post(f"{page}/output", page, good="", scrap="3")
    assert r.status_code == 422 and "scrap needs a defect code" in r.get_data(as_text=True)

    html = ui.post(f"{page}/output", page, good="10").get_data(as_text=True)
    assert counts(html) == (40, 2, 0)
    assert "Work paused" in ui.post(f"{page}/work/pause", page).get_data(as_text=True)

    svc.change_status(db, olga, order_id, Status.QUALITY_CHECK)
    html = client.get(page).get_data(as_text=True)
    first = re.search(r'<option value="(\d+)">#\d+: 30 by', html).group(1)
    html = ui.post(f"{page}/rework", page, reworks=first, quantity="4", defect_code="dimension").get_data(as_text=True)
    assert "4 pieces go back to production; 4 to make." in html and counts(html) == (36, 2, 4)
    assert "sent back from #" in html


def test_a_partners_order_page_is_not_the_floors_and_a_stale_form_changes_nothing(client, accounts_, db):
    ui, olga = logged_in(client, accounts_, "olga")
    order_id = create_order(client, accounts_.partner(), quantity=40).get_json()["id"]
    r = client.post(f"/operator/orders/{order_id}/output", data={"good": "5"})  # no CSRF token
    assert r.status_code in (400, 422)
    r = ui.post(f"/operator/orders/{order_id}/work/dance", f"/operator/orders/{order_id}")
    assert "No work action" in r.get_data(as_text=True)


def test_my_work_and_the_supervisors_ledger_come_from_the_records(client, accounts_, db):
    from datetime import timedelta

    from mes.models import utcnow
    from mes.services import production

    ui, olga = logged_in(client, accounts_, "olga")
    chief = operator_actor(accounts_.operator("chief", "secret-pass", role="supervisor", display_name="The Chief"))
    production.set_rate(db, chief, "BRKT", "in_production", "0.25", valid_from=utcnow() - timedelta(days=1))
    order_id = create_order(client, accounts_.partner(), quantity=40, product="BRKT-9").get_json()["id"]
    svc.claim(db, olga, order_id)
    svc.change_status(db, olga, order_id, Status.QUEUED)
    svc.change_status(db, olga, order_id, Status.IN_PRODUCTION)
    production.record_output(db, olga, order_id, 30, 2, "burr")
    production.record_output(db, olga, order_id, 10)

    html = client.get("/operator/my-work").get_data(as_text=True)
    spans = re.findall(r'<strong class="good">(\d+)</strong>.*?<strong class="pay">([\d.]+)</strong>', html, re.S)
    assert spans == [("40", "10.00")] * 3, spans  # today, this week, this pay period

    assert client.get("/operator/ledger").status_code == 403  # operators see their own only
    boss = Browserless(client)
    client.post("/operator/logout", data={"csrf_token": re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)})
    assert boss.login("chief", "secret-pass").status_code == 302
    html = client.get("/operator/ledger").get_data(as_text=True)
    row = html.split('data-operator="olga"')[1].split("</tr>")[0]
    assert '<td class="pay">10.00</td>' in row and 'id="total-pay">10.00<' in html
    exported = client.get("/operator/ledger?format=csv")
    assert exported.mimetype == "text/csv" and "attachment" in exported.headers["Content-Disposition"]
    lines = exported.get_data(as_text=True).splitlines()
    assert lines[0].startswith("operator_login,operator_name,period_start")
    assert lines[1].startswith("olga,") and lines[1].endswith(",2,1,40,2,0.00,10.00,0")
    assert client.get("/operator/ledger?day=2026-13-01").status_code == 400
    assert "Nothing recorded" in client.get("/operator/ledger?day=2001-01-01").get_data(as_text=True)


def test_a_supervisor_sets_rates_and_keeps_their_history(client, accounts_, db):
    ui, _ = logged_in(client, accounts_, "chief")
    db.execute(__import__("sqlalchemy").text("UPDATE operators SET role = 'supervisor' WHERE login = 'chief'"))
    db.commit()
    html = ui.post("/operator/rates", "/operator/rates", family="brkt", stage="in_production", per_piece="0.35",
                   valid_from="2026-01-01").get_data(as_text=True)
    assert "BRKT in in production: 0.35 per piece from 2026-01-01 00:00 UTC." in html
    ui.post("/operator/rates", "/operator/rates", family="BRKT", stage="in_production", per_piece="0.40",
            valid_from="2026-02-01")
    r = ui.post("/operator/rates", "/operator/rates", family="BRKT", stage="in_production", per_piece="-2")
    html = r.get_data(as_text=True)
    assert r.status_code == 422 and "No rate was set" in html and 'value="-2"' in html
    rows = re.findall(r'<td class="rate">([\d.]+)</td><td>([\d-]+)', client.get("/operator/rates").get_data(as_text=True))
    assert rows == [("0.40", "2026-02-01"), ("0.35", "2026-01-01")]


def test_an_operator_may_not_set_rates(client, accounts_):
    logged_in(client, accounts_, "olga")
    assert client.get("/operator/rates").status_code == 403


def test_a_supervisor_reassigns_and_the_floor_history_has_every_hand(client, accounts_, db):
    chief_ui, _ = logged_in(client, accounts_, "chief")
    db.execute(__import__("sqlalchemy").text("UPDATE operators SET role = 'supervisor' WHERE login = 'chief'"))
    db.commit()
    olga = operator_actor(accounts_.operator("olga", display_name="Olga K."))
    ivan = accounts_.operator("ivan", display_name="Ivan P.")
    partner = accounts_.partner()
    order_id = create_order(client, partner, quantity=5).get_json()["id"]
    page = f"/operator/orders/{order_id}"
    svc.claim(db, olga, order_id)
    html = chief_ui.post(f"{page}/reassign", page, operator=str(ivan.id)).get_data(as_text=True)
    assert f"Order {order_id} is now held by Ivan P." in html and 'id="holder">Ivan P.<' in html
    r = chief_ui.post(f"{page}/reassign", page, operator="99999")
    assert "No active operator" in r.get_data(as_text=True)
    # A partner's cancel ends the order: its holder is released, and the floor history says so.
    assert client.post(f"/api/v1/orders/{order_id}/cancel", json={"reason": "no longer needed"},
                       headers={"Authorization": partner["Authorization"]}).status_code == 200
    html = client.get(page).get_data(as_text=True)
    floor = html.split('id="floor"')[1].split("</table>")[0]
    rows = re.findall(r'<tr class="floor-(\w+)">.*?<td>[^<]*</td>\s*<td>([^<]*)</td><td>([^<]*)</td>', floor, re.S)
    assert rows == [("claim", "Olga K.", "Olga K."), ("reassign", "Ivan P.", "chief"),
                    ("release", "Ivan P.", "the order was closed")], rows
    assert 'id="holder">nobody<' in html and 'id="reassign-form"' not in html
    # Partners never see the floor's events.
    assert "Ivan" not in client.get(f"/api/v1/orders/{order_id}", headers={"Authorization": partner["Authorization"]}).get_data(as_text=True)
