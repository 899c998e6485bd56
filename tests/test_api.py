"""API v1 against the real database backends: every endpoint, its errors, and the partner boundary."""
from __future__ import annotations

import json
import time
from datetime import date, timedelta

from conftest import NEW_ORDER, auth, create_order

from mes.domain.lifecycle import Status
from mes.services import orders as svc
from mes.services.accounts import operator_actor

PROBLEM = "application/problem+json"


def assert_problem(response, status: int, slug: str):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json()
    assert body["status"] == status and body["type"] == f"/problems/{slug}"
    assert body["title"] and body["detail"] and body["request_id"]
    return body


def test_create_returns_201_with_location_and_defaults(client, accounts_):
    partner = accounts_.partner()
    r = create_order(client, partner)
    assert r.status_code == 201
    body = r.get_json()
    assert r.headers["Location"] == f"/api/v1/orders/{body['id']}"
    assert body["status"] == "received" and body["status_version"] == 1
    assert body["priority"] == "normal" and body["partner_id"] == partner["_partner_id"]
    assert date.fromisoformat(body["promised_date"]) == date.today() + timedelta(days=21)
    assert body["created_at"].endswith("Z")


def test_same_key_same_body_replays_the_first_response(client, accounts_, db):
    partner = accounts_.partner()
    first = create_order(client, partner, key="k-1")
    again = create_order(client, partner, key="k-1")
    assert again.status_code == 201 and again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert svc.status_counts(db)["received"] == 1


def test_same_key_different_body_is_refused(client, accounts_):
    partner = accounts_.partner()
    create_order(client, partner, key="k-1")
    assert_problem(create_order(client, partner, key="k-1", quantity=11), 422, "idempotency-key-reused")


def test_idempotency_keys_are_scoped_per_client(client, accounts_):
    a, b = accounts_.partner("a", "A"), accounts_.partner("b", "B")
    ra, rb = create_order(client, a, key="same"), create_order(client, b, key="same")
    assert ra.status_code == rb.status_code == 201
    assert ra.get_json()["id"] != rb.get_json()["id"]


def test_missing_idempotency_key_is_400(client, accounts_):
    partner = accounts_.partner()
    r = client.post("/api/v1/orders", json=NEW_ORDER, headers=auth(partner))
    assert_problem(r, 400, "idempotency-key-missing")


def test_fields_clients_may_not_set_are_rejected(client, accounts_):
    partner = accounts_.partner()
    for field, value in (("status", "shipped"), ("partner_id", 2), ("id", 5), ("status_version", 9)):
        r = create_order(client, partner, key=f"k-{field}", **{field: value})
        body = assert_problem(r, 422, "validation-failed")
        assert {"field": field, "message": "may not be set by clients"} in body["errors"]


def test_invalid_fields_are_listed(client, accounts_):
    partner = accounts_.partner()
    r = create_order(client, partner, quantity=0, product="", priority="asap", reference="bad ref")
    fields = {e["field"] for e in assert_problem(r, 422, "validation-failed")["errors"]}
    assert fields == {"quantity", "product", "priority", "reference"}
    r = create_order(client, partner, key="k-str", quantity="10")
    assert_problem(r, 422, "validation-failed")


def test_promised_date_earlier_than_lead_time_is_422(client, accounts_):
    partner = accounts_.partner()
    r = create_order(client, partner, promised_date=(date.today() + timedelta(days=3)).isoformat())
    assert "promised_date" in {e["field"] for e in assert_problem(r, 422, "validation-failed")["errors"]}
    later = (date.today() + timedelta(days=40)).isoformat()
    assert create_order(client, partner, key="k2", promised_date=later).get_json()["promised_date"] == later


def test_malformed_json_wrong_type_and_big_body(client, accounts_):
    h = {**auth(accounts_.partner()), "Idempotency-Key": "k"}
    r = client.post("/api/v1/orders", data="{not json", headers=h, content_type="application/json")
    assert_problem(r, 400, "bad-request")
    r = client.post("/api/v1/orders", data="reference=x", headers=h, content_type="application/x-www-form-urlencoded")
    assert_problem(r, 415, "unsupported-media-type")
    r = client.post("/api/v1/orders", json=[1, 2], headers=h)
    assert_problem(r, 422, "validation-failed")
    r = client.post("/api/v1/orders", json={**NEW_ORDER, "notes": "x" * 70_000}, headers=h)
    assert_problem(r, 413, "body-too-large")


def test_reused_reference_is_a_conflict_naming_the_order(client, accounts_):
    partner = accounts_.partner()
    first = create_order(client, partner, key="k-1").get_json()
    body = assert_problem(create_order(client, partner, key="k-2"), 409, "reference-conflict")
    assert body["existing_order_id"] == first["id"]


def test_auth_missing_and_wrong_keys(client, accounts_):
    for headers in ({}, {"Authorization": "Bearer mes_0000_nope"}, {"Authorization": "Basic abc"}):
        r = client.get("/api/v1/orders", headers=headers)
        assert_problem(r, 401, "unauthorized")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    partner = accounts_.partner()
    assert client.get("/api/v1/orders", headers=auth(partner)).status_code == 200
    # Revoked keys: test_revocation_takes_effect_within_the_key_cache_ttl


def test_another_partners_order_is_404_like_a_missing_one(client, accounts_):
    a, b = accounts_.partner("a", "A"), accounts_.partner("b", "B")
    oid = create_order(client, a).get_json()["id"]
    for path in (f"/api/v1/orders/{oid}", f"/api/v1/orders/{oid}/status", "/api/v1/orders/999999"):
        assert_problem(client.get(path, headers=auth(b)), 404, "not-found")
    assert_problem(client.post(f"/api/v1/orders/{oid}/cancel", headers=auth(b)), 404, "not-found")
    assert client.get("/api/v1/orders", headers=auth(b)).get_json()["items"] == []
    assert client.get("/api/v1/status-changes", headers=auth(b)).get_json()["items"] == []


def test_crm_reads_everything_and_writes_nothing(client, accounts_):
    a, b, crm = accounts_.partner("a", "A"), accounts_.partner("b", "B"), accounts_.crm()
    ids = {create_order(client, a).get_json()["id"], create_order(client, b).get_json()["id"]}
    assert {o["id"] for o in client.get("/api/v1/orders", headers=auth(crm)).get_json()["items"]} == ids
    assert {e["order_id"] for e in client.get("/api/v1/status-changes", headers=auth(crm)).get_json()["items"]} == ids
    assert_problem(create_order(client, crm, key="crm-1"), 403, "forbidden")
    assert_problem(client.post(f"/api/v1/orders/{min(ids)}/cancel", headers=auth(crm)), 403, "forbidden")


def test_list_pages_with_cursor_and_filters(client, accounts_, db):
    partner = accounts_.partner()
    ids = [create_order(client, partner, key=f"k{i}", reference=f"R-{i}").get_json()["id"] for i in range(7)]
    seen, url = [], "/api/v1/orders?limit=3"
    while url:
        r = client.get(url, headers=auth(partner))
        page = r.get_json()
        assert len(page["items"]) <= 3
        seen += [o["id"] for o in page["items"]]
        url = r.headers.get("Link", "").partition(">")[0].lstrip("<") or None
        assert (url is None) == (page["next_cursor"] is None)
    assert seen == ids  # oldest change first, each order once
    client.post(f"/api/v1/orders/{ids[2]}/cancel", headers=auth(partner))
    cancelled = client.get("/api/v1/orders?status=cancelled", headers=auth(partner)).get_json()["items"]
    assert [o["id"] for o in cancelled] == [ids[2]]
    since = cancelled[0]["updated_at"]
    recent = client.get(f"/api/v1/orders?updated_since={since}", headers=auth(partner)).get_json()["items"]
    assert [o["id"] for o in recent] == [ids[2]]


def test_list_rejects_bad_query_parameters(client, accounts_):
    h = auth(accounts_.partner())
    for query in ("limit=0", "limit=201", "limit=x", "status=done", "cursor=%%%", "cursor=WzFd",
                  "updated_since=yesterday", "updated_since=2026-01-01T00:00:00", "stauts=queued", "cursor="):
        assert client.get(f"/api/v1/orders?{query}", headers=h).status_code == 400, query


def test_status_endpoint_etag_and_304(client, accounts_):
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    r = client.get(f"/api/v1/orders/{oid}/status", headers=auth(partner))
    assert r.get_json() == {"id": oid, "status": "received", "status_version": 1,
                            "updated_at": r.get_json()["updated_at"]}
    etag = r.headers["ETag"]
    r2 = client.get(f"/api/v1/orders/{oid}/status", headers={**auth(partner), "If-None-Match": etag})
    assert r2.status_code == 304 and r2.data == b""
    client.post(f"/api/v1/orders/{oid}/cancel", headers=auth(partner))
    r3 = client.get(f"/api/v1/orders/{oid}/status", headers={**auth(partner), "If-None-Match": etag})
    assert r3.status_code == 200 and r3.get_json()["status"] == "cancelled" and r3.headers["ETag"] != etag


def test_cancel_then_cancel_again_answers_the_cancelled_order(client, accounts_, db):
    """A retried cancel (no key) is no conflict: the state asked for holds, nothing is written again."""
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    r = client.post(f"/api/v1/orders/{oid}/cancel", json={"reason": "customer withdrew"}, headers=auth(partner))
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled" and r.get_json()["status_version"] == 2
    again = client.post(f"/api/v1/orders/{oid}/cancel", json={"reason": "other words"}, headers=auth(partner))
    assert again.status_code == 200 and again.get_json() == r.get_json()
    assert "Idempotent-Replayed" not in again.headers and again.headers["ETag"] == r.headers["ETag"]
    assert [e.reason for e in svc.history(db, oid)] == [None, "customer withdrew"]
    r = client.post(f"/api/v1/orders/{oid}/cancel", json={"why": 1}, headers=auth(partner))
    assert_problem(r, 422, "validation-failed")


def test_cancel_is_refused_once_production_started(client, accounts_, db):
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    boss = operator_actor(accounts_.operator("chief", role="supervisor"))
    svc.change_status(db, boss, oid, Status.QUEUED)
    svc.change_status(db, boss, oid, Status.IN_PRODUCTION)
    body = assert_problem(client.post(f"/api/v1/orders/{oid}/cancel", headers=auth(partner)), 409,
                          "invalid-transition")
    # quality_check is the factory's step: a partner is told of the moves it may make only (none here).
    assert body["current_status"] == "in_production" and body["allowed_transitions"] == []


def test_status_change_feed_with_cursor(client, accounts_, db):
    partner = accounts_.partner()
    oid = create_order(client, partner).get_json()["id"]
    feed = client.get("/api/v1/status-changes", headers=auth(partner)).get_json()
    assert [(e["order_id"], e["from_status"], e["to_status"]) for e in feed["items"]] == [(oid, None, "received")]
    cursor = feed["next_cursor"]
    assert client.get(f"/api/v1/status-changes?after={cursor}", headers=auth(partner)).get_json() == {
        "items": [], "next_cursor": cursor}
    client.post(f"/api/v1/orders/{oid}/cancel", json={"reason": "dup"}, headers=auth(partner))
    later = client.get(f"/api/v1/status-changes?after={cursor}", headers=auth(partner)).get_json()
    assert [(e["from_status"], e["to_status"], e["status_version"], e["reason"]) for e in later["items"]] == [
        ("received", "cancelled", 2, "dup")]
    assert client.get("/api/v1/status-changes?after=garbage", headers=auth(partner)).status_code == 400


def test_rate_limit_per_client_with_headers(client, accounts_, one_rate_window):
    slow, other = accounts_.partner("slow", "S", tier="tiny"), accounts_.partner("fast", "F")
    answers = [client.get("/api/v1/orders", headers=auth(slow)) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert answers[0].headers["RateLimit-Limit"] == "3" and answers[0].headers["RateLimit-Remaining"] == "2"
    body = assert_problem(answers[3], 429, "rate-limited")
    assert int(answers[3].headers["Retry-After"]) > 0 and body["detail"]
    assert client.get("/api/v1/orders", headers=auth(other)).status_code == 200


def test_request_id_is_echoed_or_generated(client, accounts_):
    h = auth(accounts_.partner())
    assert client.get("/api/v1/orders", headers={**h, "X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    generated = client.get("/api/v1/orders", headers={**h, "X-Request-ID": "bad id <script>"}).headers["X-Request-ID"]
    assert len(generated) == 32 and "<" not in generated


def test_openapi_document_is_served(client):
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200 and r.get_json()["openapi"].startswith("3.1")
    assert "/orders/{order_id}/status" in r.get_json()["paths"]
    assert client.get("/api/v1/openapi.yaml").status_code == 200


def test_health_endpoints(client, backend):
    assert client.get("/healthz/live").get_json() == {"status": "ok"}
    assert client.get("/healthz/ready").get_json() == {"status": "ok", "database": "ok"}


def test_readiness_fails_when_the_database_is_unreachable(backend):
    from mes import create_app
    bad = "sqlite:////nonexistent/dir/mes.db" if backend.name == "sqlite" else \
        backend.app_url.replace("app-pw", "wrong-password")
    app = create_app(backend.settings(database_url=bad))
    r = app.test_client().get("/healthz/ready")
    assert r.status_code == 503 and r.get_json()["status"] == "unavailable"


def test_unknown_api_path_and_method_are_problem_json(client, accounts_):
    h = auth(accounts_.partner())
    assert_problem(client.get("/api/v1/nothing", headers=h), 404, "not-found")
    assert_problem(client.delete("/api/v1/orders", headers=h), 405, "method-not-allowed")


def test_public_pool_alone_has_no_operator_routes(backend):
    from mes import create_app
    app = create_app(backend.settings(pools=("public",)))
    c = app.test_client()
    for path in ("/operator/", "/operator/login", "/operator/orders/1"):
        r = c.get(path)
        assert r.status_code == 404 and r.mimetype == PROBLEM
    assert c.get("/").get_json()["api"] == "/api/v1"


def test_operator_pool_alone_has_no_api(backend):
    from mes import create_app
    app = create_app(backend.settings(pools=("operator",)))
    assert app.test_client().get("/api/v1/orders").status_code == 404
    assert app.test_client().get("/").headers["Location"].endswith("/operator/")


def test_reads_of_the_response_are_json(client, accounts_):
    r = create_order(client, accounts_.partner())
    assert json.loads(r.data)["reference"] == "PO-1"



def test_revocation_takes_effect_within_the_key_cache_ttl(backend, accounts_, db):
    """Each process remembers a key for MES_API_KEY_CACHE_SECONDS: a revoked key keeps working there
    at most that much longer; 0 turns the memory off and makes revocation immediate."""
    from mes import create_app
    from mes.services.accounts import revoke_key
    remembering, brief, none = (create_app(backend.settings(api_key_cache_seconds=s)) for s in (3600, 0.5, 0))
    partner = accounts_.partner()
    for app in (remembering, brief, none):
        assert app.test_client().get("/api/v1/orders", headers=auth(partner)).status_code == 200
    revoke_key(db, "acme-erp")
    assert remembering.test_client().get("/api/v1/orders", headers=auth(partner)).status_code == 200
    assert_problem(none.test_client().get("/api/v1/orders", headers=auth(partner)), 401, "unauthorized")
    time.sleep(0.5)  # the brief cache's TTL
    assert_problem(brief.test_client().get("/api/v1/orders", headers=auth(partner)), 401, "unauthorized")
    for app in (remembering, brief, none):
        app.extensions["mes_engine"].dispose()


def test_a_new_key_works_at_once_and_the_replaced_one_stops_within_the_ttl(backend, accounts_, db):
    from mes import create_app
    from mes.services.accounts import find_client, issue_key
    app = create_app(backend.settings(api_key_cache_seconds=0.5))
    client = app.test_client()
    partner = accounts_.partner()
    assert client.get("/api/v1/orders", headers=auth(partner)).status_code == 200
    new_key = {"Authorization": f"Bearer {issue_key(db, find_client(db, 'acme-erp')).key}"}
    assert client.get("/api/v1/orders", headers=new_key).status_code == 200  # unknown keys are never remembered
    time.sleep(0.5)
    assert_problem(client.get("/api/v1/orders", headers=auth(partner)), 401, "unauthorized")
    assert client.get("/api/v1/orders", headers=new_key).status_code == 200
    app.extensions["mes_engine"].dispose()
