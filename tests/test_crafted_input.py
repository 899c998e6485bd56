"""Crafted input on both pools: each case once made a 500 (or reached the database unchecked); now a
400/422 problem+json on the API, a readable page on the operator UI, and nothing half done."""
from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest
from conftest import NEW_ORDER, auth, create_order
from test_api import assert_problem
from test_operator_ui import Browserless, csrf

ROW_ID_OVERFLOW = 2**70


def cursor(*values) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


@pytest.fixture
def partner(accounts_):
    return accounts_.partner()


@pytest.fixture
def ui(client, accounts_):
    accounts_.operator("olga", "secret-pass", role="supervisor")
    b = Browserless(client)
    assert b.login("olga", "secret-pass").status_code == 302
    return b


def assert_page(response, status: int, text: str):
    """A page an operator can read: HTML with the explanation, not a bare error."""
    html = response.get_data(as_text=True)
    assert response.status_code == status, html
    assert response.mimetype == "text/html" and text in html, html
    return html


# ------------------------------------------------------------------------------------ integers
@pytest.mark.parametrize("path", ["/api/v1/orders", "/api/v1/status-changes"])
@pytest.mark.parametrize("limit", ["²", "٣", "１", "+5", " 5", "5 ", "1e2", "9" * 30])
def test_limit_in_other_digits_than_ascii_is_400(client, partner, path, limit):
    body = assert_problem(client.get(f"{path}?limit={quote(limit)}", headers=auth(partner)), 400, "bad-query")
    assert body["errors"] == [{"field": "limit", "message": "must be an integer from 1 to "
                                                              f"{200 if path.endswith('orders') else 500}"}]


@pytest.mark.parametrize("path", ["/api/v1/orders/²", "/api/v1/orders/٣", "/api/v1/orders/٣/status",
                                  "/api/v1/orders/99999999999999999999"])
def test_order_id_in_other_digits_is_not_found(client, partner, path):
    create_order(client, partner)  # order 1..n exist: ٣ must not be read as 3
    assert_problem(client.get(path, headers=auth(partner)), 404, "not-found")


def test_queue_search_by_odd_digits_finds_nothing_instead_of_failing(ui, client, partner):
    create_order(client, partner)
    for search in ("²", "٣", "9" * 30, str(ROW_ID_OVERFLOW)):
        assert_page(client.get(f"/operator/?q={quote(search)}"), 200, "No orders match")


def test_operator_status_form_reads_the_version_as_ascii_digits(ui, client, partner):
    oid = create_order(client, partner).get_json()["id"]
    page = f"/operator/orders/{oid}"
    for version in ("²", "٣", "9" * 30):
        r = ui.post(f"{page}/status", page, target="queued", version=version)
        assert_page(r, 422, "Version: must be an integer")
    assert client.get(f"/api/v1/orders/{oid}", headers=auth(partner)).get_json()["status_version"] == 1


# ------------------------------------------------------------------------------------ cursors
LIST_CURSORS = [
    cursor("2026-01-01T00:00:00+00:00", "7"),  # a string where the id belongs
    cursor("2026-01-01T00:00:00+00:00", [7]),  # an array where the id belongs
    cursor("2026-01-01T00:00:00+00:00", True),
    cursor("2026-01-01T00:00:00+00:00", ROW_ID_OVERFLOW),
    cursor("2026-01-01T00:00:00+00:00", -1),
    cursor(["2026-01-01T00:00:00+00:00"], 7),  # an array where the time belongs
    cursor(1767225600, 7),  # a number where the time belongs
    cursor("2026-01-01T00:00:00", 7),  # a time without a zone
    cursor("9999-12-31T23:59:59-23:59", 7),
    cursor({"a": 1}, 7),
    cursor("2026-01-01T00:00:00+00:00", 7, 8),
    "not base64!",
    "A" * 600,
]


@pytest.mark.parametrize("value", LIST_CURSORS)
def test_order_list_cursor_with_wrong_types_is_400(client, partner, value):
    assert_problem(client.get(f"/api/v1/orders?cursor={quote(value)}", headers=auth(partner)), 400, "bad-cursor")


@pytest.mark.parametrize("value", [cursor("7"), cursor([7]), cursor(True), cursor(False), cursor(1.5),
                                   cursor(ROW_ID_OVERFLOW), cursor(-1), cursor(None), cursor(7, 8, 9),
                                   cursor(7, "8"), cursor([7], 8), cursor(-1, 8), cursor(7, ROW_ID_OVERFLOW)])
def test_feed_cursor_with_wrong_types_is_400(client, partner, value):
    assert_problem(client.get(f"/api/v1/status-changes?after={value}", headers=auth(partner)), 400, "bad-cursor")


QUEUE_CURSORS = [cursor("x", 2, 7), cursor(1, 2, 7), cursor(["2026-01-01"], 2, 7), cursor("2026-01-01", "2", 7),
                 cursor("2026-01-01", [2], 7), cursor("2026-01-01", 2, [7]), cursor("2026-01-01", 2, "7"),
                 cursor("2026-01-01", ROW_ID_OVERFLOW, 7), cursor("2026-01-01", 2, ROW_ID_OVERFLOW),
                 cursor("2026-01-01", True, 7), cursor("2026-01-01", 9, 7), cursor("2026-02-30", 2, 7)]


def test_queue_cursor_with_wrong_types_is_a_400_page(ui, client):
    for value in QUEUE_CURSORS:
        assert_page(client.get(f"/operator/?after={value}"), 400, "The cursor is not valid")


# ------------------------------------------------------------------------------------ NUL and other controls
@pytest.mark.parametrize("field", ["product", "material", "notes", "reference"])
@pytest.mark.parametrize("bad", ["a\x00b", "\x00", "a\x1bb"])
def test_nul_in_an_order_field_is_422_and_the_key_stays_usable(client, partner, field, bad):
    r = create_order(client, partner, key="k-1", **{field: bad})
    body = assert_problem(r, 422, "validation-failed")
    assert [e["field"] for e in body["errors"]] == [field]
    # Nothing was stored under the key: the corrected request is a first request, not a reuse.
    assert create_order(client, partner, key="k-1").status_code == 201


def test_line_breaks_stay_allowed_in_notes_but_not_in_one_line_fields(client, partner):
    r = create_order(client, partner, notes="dock 3\r\n\tgate B")
    assert r.status_code == 201 and r.get_json()["notes"] == "dock 3\r\n\tgate B"
    assert_problem(create_order(client, partner, key="k-2", reference="R-2", product="a\nb"), 422,
                   "validation-failed")


def test_nul_in_the_cancel_reason_is_422_and_the_order_is_unchanged(client, partner):
    oid = create_order(client, partner).get_json()["id"]
    r = client.post(f"/api/v1/orders/{oid}/cancel", json={"reason": "dup\x00"}, headers=auth(partner))
    assert assert_problem(r, 422, "validation-failed")["errors"][0]["field"] == "reason"
    assert client.get(f"/api/v1/orders/{oid}", headers=auth(partner)).get_json()["status"] == "received"


@pytest.mark.parametrize("key", ["k\x00", "k\ty", "ключ"])
def test_idempotency_key_outside_visible_ascii_is_422(client, partner, key):
    r = client.post("/api/v1/orders", json=NEW_ORDER,
                    headers={**auth(partner), "Idempotency-Key": key.encode().decode("latin-1")})
    assert assert_problem(r, 422, "validation-failed")["errors"][0]["field"] == "Idempotency-Key"


@pytest.mark.parametrize("header", ["Bearer mes_0000\x00_x", "Bearer mes_ab'cd_x", "Bearer \x00"])
def test_malformed_api_key_is_401_without_asking_the_database(client, header):
    assert_problem(client.get("/api/v1/orders", headers={"Authorization": header}), 401, "unauthorized")


def test_nul_in_the_login_form_is_a_400_page(client, accounts_):
    accounts_.operator("olga", "secret-pass")
    r = Browserless(client).login("ol\x00ga", "secret-pass")
    assert_page(r, 400, "must not contain control characters")


def test_nul_in_the_queue_search_is_a_400_page(ui, client):
    for search in ("a\x00b", "\x00", "R-1\x1b"):
        assert_page(client.get(f"/operator/?q={quote(search)}"), 400, "Query parameter q must not contain")


def test_nul_in_the_rework_reason_is_refused_and_the_text_shown_again(ui, client, partner):
    oid = create_order(client, partner).get_json()["id"]
    page = f"/operator/orders/{oid}"
    ui.post(f"{page}/claim", page)
    for target, version in (("queued", 1), ("in_production", 2), ("quality_check", 3)):
        assert "is now" in ui.post(f"{page}/status", page, target=target, version=version).get_data(as_text=True)
    r = ui.post(f"{page}/status", page, target="in_production", version=4, reason="burr on edge\x00")
    html = assert_page(r, 422, "Reason: must not contain control characters")
    assert "burr on edge" in html.split("<textarea")[1]  # what was typed is still there
    assert client.get(f"/api/v1/orders/{oid}", headers=auth(partner)).get_json()["status_version"] == 4


def test_login_redirect_target_that_is_not_a_plain_local_path_goes_to_the_queue(client, accounts_):
    accounts_.operator("olga", "secret-pass")
    for target in ("/x\r\nSet-Cookie: a=b", "/\\evil.example", "//evil.example", "/\x00"):
        page = client.get(f"/operator/login?next={quote(target)}").get_data(as_text=True)
        r = client.post("/operator/login", data={"login": "olga", "password": "secret-pass", "next": target,
                                                 "csrf_token": csrf(page)})
        assert r.status_code == 302 and r.headers["Location"] == "/operator/", target


# ------------------------------------------------------------------------------------ nesting
@pytest.mark.parametrize("depth", [17, 1000, 30_000])
def test_deeply_nested_json_is_400(client, partner, depth):
    oid = create_order(client, partner).get_json()["id"]
    deep = "[" * depth + "]" * depth
    h = {**auth(partner), "Idempotency-Key": "deep"}
    for path, body in (("/api/v1/orders", deep), (f"/api/v1/orders/{oid}/cancel", f'{{"reason": {deep}}}')):
        r = client.post(path, data=body, content_type="application/json", headers=h)
        if len(body) > 64 * 1024:
            assert_problem(r, 413, "body-too-large")
        else:
            assert "nests" in assert_problem(r, 400, "bad-request")["detail"]


def test_brackets_inside_strings_do_not_count_as_nesting(client, partner):
    r = create_order(client, partner, notes="[" * 1500 + '"{' * 100)
    assert r.status_code == 201


# ------------------------------------------------------------------------------------ instants
@pytest.mark.parametrize("value", ["2026-01-01T00:00:00+99:00", "2026-01-01T00:00:00-24:00",
                                   "2026-01-01T00:00:00+00:00\x00", "٢٠٢٦-01-01T00:00:00Z", "2026-02-30T00:00:00Z",
                                   "2026-01-01T24:00:00Z", "2026-01-01T00:00:00", "2026-01-01 00:00:00+02:00"])
def test_updated_since_malformed_is_400(client, partner, value):
    body = assert_problem(client.get(f"/api/v1/orders?updated_since={quote(value)}", headers=auth(partner)),
                          400, "bad-query")
    assert body["errors"][0]["field"] == "updated_since"


@pytest.mark.parametrize("value, found", [
    # Valid RFC 3339 whose offset moves it past the calendar's ends in UTC: as late (early) as can be.
    ("9999-12-31T23:59:59-23:59", False), ("9999-12-31T23:59:59.999999-00:01", False),
    ("0001-01-01T00:00:00+23:59", True), ("0001-01-01T00:00:00+00:01", True),
    ("9999-12-31T23:59:59+23:59", False), ("0001-01-01T00:00:00-23:59", True),
    ("2000-01-01T00:00:00.123456789Z", True), ("2000-01-01t00:00:00z", True)])
def test_updated_since_at_the_ends_of_the_calendar_filters_exactly(client, partner, value, found):
    oid = create_order(client, partner).get_json()["id"]
    r = client.get(f"/api/v1/orders?updated_since={quote(value)}", headers=auth(partner))
    assert r.status_code == 200, r.get_data(as_text=True)
    assert [o["id"] for o in r.get_json()["items"]] == ([oid] if found else [])
