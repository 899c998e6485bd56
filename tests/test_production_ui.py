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
    assert 'name="good" inputmode="numeric" pattern="[0-9]*" maxlength="12" value="11"' in html  # kept
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
