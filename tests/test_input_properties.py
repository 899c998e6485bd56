"""Properties of input handling on both pools, over generated input (tests/strategies.py): whatever is
sent, the answer is a success or a 4xx that explains itself (problem+json or a page), never a 5xx;
well-formed input is never refused; and what is accepted is stored as it was sent."""
from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from urllib.parse import quote

import pytest
from conftest import auth, create_order
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (any_cursor, any_text, digit_like, dirty_text, json_values, nested_json, plain_text,
                        references, well_typed_feed_cursors, well_typed_list_cursors, well_typed_queue_cursors)
from test_operator_ui import Browserless, csrf

from mes import create_app
from mes.services import accounts

PROBLEM = "application/problem+json"
# Fixtures hold for every example: each example only reads, or its writes are checked by itself.
FAST = settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FEW = settings(FAST, max_examples=30)


def assert_refusal(response, *slugs: str) -> None:
    assert response.mimetype == PROBLEM, response.get_data(as_text=True)[:500]
    assert response.get_json()["type"] in {f"/problems/{s}" for s in slugs}


@pytest.fixture
def partner(accounts_, client):
    partner = accounts_.partner()
    for i in range(3):
        create_order(client, partner, reference=f"SEED-{i}")
    return auth(partner)


# ------------------------------------------------------------------------------------ API query parameters
@FAST
@given(raw=digit_like | any_text)
def test_limit_is_accepted_exactly_when_it_is_an_ascii_integer_in_range(client, partner, raw):
    for path, high in (("/api/v1/orders", 200), ("/api/v1/status-changes", 500)):
        r = client.get(f"{path}?limit={quote(raw)}", headers=partner)
        valid = re.fullmatch(r"[0-9]{1,19}", raw) is not None and 1 <= int(raw) <= high
        if valid:
            assert r.status_code == 200
        else:
            assert r.status_code == 400
            assert_refusal(r, "bad-query")


ZONES = st.sampled_from(["Z", "+23:59", "-23:59", "+99:00", "-00:01", ""])


@FAST
@given(raw=any_text | st.datetimes().map(datetime.isoformat)
       | st.builds("{}T{}{}".format, st.dates(), st.times(), ZONES))
def test_updated_since_is_a_filter_or_a_bad_query(client, partner, raw):
    r = client.get(f"/api/v1/orders?updated_since={quote(raw)}", headers=partner)
    assert r.status_code in (200, 400)
    if r.status_code == 400:
        assert_refusal(r, "bad-query")


@FAST
@given(value=any_cursor)
def test_any_cursor_reads_a_page_or_is_refused_as_a_bad_cursor(client, partner, value):
    for url in (f"/api/v1/orders?cursor={quote(value)}", f"/api/v1/status-changes?after={quote(value)}"):
        r = client.get(url, headers=partner)
        assert r.status_code in (200, 400)
        if r.status_code == 400:
            assert_refusal(r, "bad-cursor")


@FAST
@given(list_cursor=well_typed_list_cursors, feed_cursor=well_typed_feed_cursors)
def test_well_typed_cursors_are_never_refused(client, partner, list_cursor, feed_cursor):
    assert client.get(f"/api/v1/orders?cursor={list_cursor}", headers=partner).status_code == 200
    assert client.get(f"/api/v1/status-changes?after={feed_cursor}", headers=partner).status_code == 200


# ------------------------------------------------------------------------------------ API bodies
@FEW
@given(product=plain_text | dirty_text | any_text, material=plain_text | dirty_text | any_text,
       notes=st.none() | plain_text | dirty_text | any_text, reference=references | references | any_text)
def test_an_order_with_any_text_is_stored_as_sent_or_refused(client, partner, product, material, notes, reference):
    body = {"reference": reference, "product": product, "material": material, "quantity": 1, "notes": notes}
    r = client.post("/api/v1/orders", json=body, headers={**partner, "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code in (201, 409, 422), r.get_data(as_text=True)
    if r.status_code == 201:
        stored = client.get(r.headers["Location"], headers=partner).get_json()
        assert {k: stored[k] for k in body} == body  # nothing altered, nothing dropped
    else:
        assert_refusal(r, "validation-failed", "reference-conflict")


@FEW
@given(body=nested_json() | json_values.map(json.dumps))
def test_any_json_body_is_answered_without_a_server_error(client, partner, body):
    h = {**partner, "Idempotency-Key": "same-key-every-time"}
    for path in ("/api/v1/orders", "/api/v1/orders/1/cancel"):
        r = client.post(path, data=body, content_type="application/json", headers=h)
        assert r.status_code < 500, r.get_data(as_text=True)[:500]
        if r.status_code >= 400:
            assert r.mimetype == PROBLEM


# ------------------------------------------------------------------------------------ operator UI
@pytest.fixture
def operator_app(backend):
    """Both pools with a login limit that generated logins do not reach, and a supervisor."""
    app = create_app(backend.settings(login_limit="100000/minute"))
    session = app.extensions["mes_sessionmaker"]()
    accounts.create_operator(session, "olga", "secret-pass", role="supervisor")
    session.close()
    yield app
    app.extensions["mes_engine"].dispose()
    backend.reset()


@pytest.fixture
def partner_key(operator_app) -> dict:
    session = operator_app.extensions["mes_sessionmaker"]()
    issued = accounts.create_client(session, "p", scope="partner", partner_name="P")
    session.close()
    return {"Authorization": f"Bearer {issued.key}"}


@pytest.fixture
def supervisor(operator_app):
    client = operator_app.test_client()
    assert Browserless(client).login("olga", "secret-pass").status_code == 302
    return client


@settings(FEW, max_examples=15)  # two password checks per example, each deliberately slow
@given(login=dirty_text | any_text, password=any_text, target=any_text | st.just("/operator/my-work"))
def test_login_form_with_any_input_answers_with_a_page_or_a_local_redirect(operator_app, login, password, target):
    client = operator_app.test_client()
    page = client.get("/operator/login").get_data(as_text=True)
    r = client.post("/operator/login", data={"login": login, "password": password, "next": target,
                                             "csrf_token": csrf(page)})
    assert r.status_code in (400, 401), r.get_data(as_text=True)[:500]
    assert r.mimetype == "text/html"
    r = client.post("/operator/login", data={"login": "olga", "password": "secret-pass", "next": target,
                                             "csrf_token": csrf(page)})
    assert r.status_code == 302 and re.fullmatch(r"/(?!/)[!-\[\]-~]*", r.headers["Location"])


@FAST
@given(q=dirty_text | any_text | digit_like, after=st.none() | any_cursor | well_typed_queue_cursors,
       status=st.sampled_from(["open", "all", "queued"]) | any_text)
def test_queue_with_any_filter_is_a_page(supervisor, q, after, status):
    args = {"q": q, "status": status, **({"after": after} if after is not None else {})}
    r = supervisor.get("/operator/?" + "&".join(f"{k}={quote(v)}" for k, v in args.items()))
    assert r.status_code in (200, 400, 422), r.get_data(as_text=True)[:500]
    assert r.mimetype == "text/html"
    if after is not None and r.status_code == 400 and "cursor" not in r.get_data(as_text=True):
        assert "Query parameter q" in r.get_data(as_text=True)


@FEW
@given(target=st.sampled_from(["queued", "cancelled", "in_production"]) | any_text,
       version=st.sampled_from(["1", "2", "01"]) | digit_like | any_text, reason=dirty_text | any_text)
def test_status_form_with_any_input_changes_the_order_only_by_a_valid_move(partner_key, supervisor, target,
                                                                          version, reason):
    partner = partner_key
    oid = create_order(supervisor, partner, key=uuid.uuid4().hex, reference=uuid.uuid4().hex).get_json()["id"]
    page = f"/operator/orders/{oid}"
    token = csrf(supervisor.get(page).get_data(as_text=True))
    r = supervisor.post(f"{page}/status", data={"target": target, "version": version, "reason": reason,
                                                "csrf_token": token})
    assert r.status_code in (302, 422), r.get_data(as_text=True)[:500]
    assert r.mimetype == "text/html" or r.status_code == 302
    now = supervisor.get(f"/api/v1/orders/{oid}", headers=partner).get_json()
    if now["status_version"] != 1:  # moved: only along the lifecycle, from the version shown
        assert r.status_code == 302 and now["status"] == target in ("queued", "cancelled")
        assert re.fullmatch("0*1", version)
    if r.status_code == 422:
        assert now["status_version"] == 1
