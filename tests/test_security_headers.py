"""What responses tell browsers and caches: a Content-Security-Policy without inline script on the operator
UI, no framing, nosniff, a Referrer-Policy, nothing private stored by caches, and the session cookie's flags."""
from __future__ import annotations

import re
from importlib.resources import files

import pytest
from conftest import auth, create_order
from test_operator_ui import Browserless

from mes import create_app


def directives(response) -> dict[str, str]:
    policy = response.headers["Content-Security-Policy"]
    return {d.split()[0]: " ".join(d.split()[1:]) for d in (p.strip() for p in policy.split(";")) if d}


@pytest.fixture
def logged_in(client, accounts_):
    accounts_.operator("olga", "secret-pass")
    assert Browserless(client).login("olga", "secret-pass").status_code == 302
    return client


def assert_operator_page_headers(r):
    csp = directives(r)
    assert csp["frame-ancestors"] == "'none'"
    assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert "unsafe-inline" not in r.headers["Content-Security-Policy"]
    assert csp["default-src"] == "'none'" and csp["form-action"] == "'self'" and csp["base-uri"] == "'none'"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "same-origin"


@pytest.mark.parametrize("path", ["/operator/", "/operator/my-work", "/operator/orders/1", "/operator/orders/999"])
def test_authenticated_operator_pages_carry_the_policy_and_are_not_stored(logged_in, accounts_, path):
    create_order(logged_in, accounts_.partner())
    r = logged_in.get(path)
    assert r.status_code in (200, 404) and r.mimetype == "text/html"
    assert_operator_page_headers(r)
    assert r.headers["Cache-Control"] == "no-store"


def test_the_login_page_and_redirects_carry_the_policy(client):
    for r in (client.get("/operator/login"), client.get("/operator/")):
        assert_operator_page_headers(r)
        assert r.headers["Cache-Control"] == "no-store"


def test_the_stylesheet_is_nosniff_and_may_be_cached(client):
    r = client.get("/operator/static/mes.css")
    assert r.status_code == 200 and r.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" not in r.headers.get("Cache-Control", "")


TEMPLATES = files("mes.operator").joinpath("templates", "operator")
INLINE = re.compile(r"<script(?![^>]*\bsrc=)|\son[a-z]+\s*=|\sstyle\s*=|javascript:|<style", re.IGNORECASE)


@pytest.mark.parametrize("name", sorted(t.name for t in TEMPLATES.iterdir() if t.name.endswith(".html")))
def test_templates_hold_no_inline_script_handler_or_style(name):
    """The policy refuses them: they would silently not work in the browser."""
    assert INLINE.findall(TEMPLATES.joinpath(name).read_text()) == []


def test_api_answers_are_nosniff_and_private_ones_not_stored(client, accounts_):
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    for path in ("/api/v1/orders", f"/api/v1/orders/{oid}", f"/api/v1/orders/{oid}/status",
                 "/api/v1/status-changes"):
        r = client.get(path, headers=auth(partner))
        assert r.status_code == 200, path
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Cache-Control"] == "no-store", path
    created = create_order(client, partner, key="k2", reference="PO-2")
    assert created.status_code == 201 and created.headers["Cache-Control"] == "no-store"
    document = client.get("/api/v1/openapi.yaml")
    assert document.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" not in document.headers.get("Cache-Control", "")
    refused = client.get("/api/v1/orders")
    assert refused.status_code == 401 and refused.headers["X-Content-Type-Options"] == "nosniff"


def test_api_answers_carry_no_page_policy(client, accounts_):
    r = client.get("/api/v1/orders", headers=auth(accounts_.partner()))
    assert "Content-Security-Policy" not in r.headers


def session_cookie(response) -> str:
    return next(c for c in response.headers.getlist("Set-Cookie") if "_session=" in c)


def test_the_session_cookie_is_httponly_and_lax(client, accounts_):
    accounts_.operator("olga", "secret-pass")
    cookie = session_cookie(Browserless(client).login("olga", "secret-pass"))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert "Expires=" not in cookie  # gone when the browser closes


def test_the_session_cookie_is_secure_when_served_over_tls(backend, accounts_):
    app = create_app(backend.settings(session_cookie_secure=True))
    client = app.test_client()
    accounts_.operator("olga", "secret-pass")
    page = client.get("/operator/login", base_url="https://localhost")
    token = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', page.get_data(as_text=True)).group(1)
    r = client.post("/operator/login", base_url="https://localhost",
                    headers={"Referer": "https://localhost/operator/login"},  # CSRF checks it over TLS
                    data={"login": "olga", "password": "secret-pass", "csrf_token": token})
    assert r.status_code == 302
    cookie = session_cookie(r)
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    app.extensions["mes_engine"].dispose()
