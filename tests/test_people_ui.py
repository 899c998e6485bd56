"""Supervisors manage operators (every change in the audit log, never a secret); a shared terminal
changes hands by badge and PIN."""
from __future__ import annotations

import re

from test_operator_ui import Browserless, csrf

from mes.models import AuditEntry


def supervisor(client, accounts_) -> Browserless:
    accounts_.operator("chief", "secret-pass", role="supervisor", display_name="The Chief")
    b = Browserless(client)
    assert b.login("chief", "secret-pass").status_code == 302
    return b


def operator_id(html: str, login: str) -> int:
    row = html.split(f'data-login="{login}"')[1].split("</tr>")[0]
    return int(re.search(r"/operator/operators/(\d+)/", row).group(1))


def test_a_supervisor_creates_an_operator_sets_a_pin_and_the_operator_logs_in_with_badge_and_pin(client, accounts_, db):
    boss = supervisor(client, accounts_)
    html = boss.post("/operator/operators", "/operator/operators", login="Olga", display_name="Olga K.",
                     role="operator", password="first-pass").get_data(as_text=True)
    assert "Olga K. (olga) can log in now." in html
    olga = operator_id(html, "olga")
    r = boss.post(f"/operator/operators/{olga}/pin", "/operator/operators", secret="12ab")
    assert r.status_code == 422 and "A PIN is 4 to 8 digits." in r.get_data(as_text=True)
    html = boss.post(f"/operator/operators/{olga}/pin", "/operator/operators", secret="4711").get_data(as_text=True)
    assert "PIN is set" in html
    row = html.split('data-login="olga"')[1].split("</tr>")[0]
    assert "<td>set</td>" in row
    audit = [(e.action, e.subject) for e in db.query(AuditEntry).order_by(AuditEntry.id)]
    assert audit == [("operator created", "olga"), ("PIN set", "olga")]
    assert not [e for e in db.query(AuditEntry) if "4711" in (e.detail or "") or "first-pass" in (e.detail or "")]

    # The terminal changes hands: the supervisor switches, Olga scans her badge and types her PIN.
    page = client.get("/operator/").get_data(as_text=True)
    r = client.post("/operator/switch", data={"csrf_token": csrf(page)})
    assert r.status_code == 302 and r.headers["Location"].endswith("/operator/login")
    assert client.get("/operator/").status_code == 302  # this browser's session has ended
    login_page = client.get("/operator/login").get_data(as_text=True)
    assert "Login or badge" in login_page
    r = client.post("/operator/login", data={"login": "OP-olga", "password": "4711", "csrf_token": csrf(login_page)})
    assert r.status_code == 302
    assert "Olga K. (operator)" in client.get("/operator/").get_data(as_text=True)
    assert client.get("/operator/operators").status_code == 403


def test_a_deactivated_operator_cannot_log_in_and_a_wrong_pin_is_a_wrong_password(client, accounts_):
    boss = supervisor(client, accounts_)
    accounts_.operator("ivan", "ivan-pass1")
    html = client.get("/operator/operators").get_data(as_text=True)
    ivan = operator_id(html, "ivan")
    boss.post(f"/operator/operators/{ivan}/pin", "/operator/operators", secret="2468")
    boss.post(f"/operator/operators/{ivan}/deactivate", "/operator/operators")
    other = Browserless(client.application.test_client())
    assert other.login("OP-ivan", "2468").status_code == 401
    boss.post(f"/operator/operators/{ivan}/reactivate", "/operator/operators")
    assert other.login("ivan", "2469").status_code == 401
    assert other.login("ivan", "2468").status_code == 302
