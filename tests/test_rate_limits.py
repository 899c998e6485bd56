"""The API's rate limit contract: one budget per client and tier across every endpoint, RateLimit-Reset in
seconds until the window resets, Retry-After only where the client must wait (429; 503 elsewhere)."""
from __future__ import annotations

import time

from conftest import auth, create_order


def test_one_budget_per_client_across_endpoints(client, accounts_, one_rate_window):
    slow, other = accounts_.partner("slow", "S", tier="tiny"), accounts_.partner("fast", "F")
    created = create_order(client, slow)
    oid = created.get_json()["id"]
    answers = [created] + [client.get(path, headers=auth(slow)) for path in
                           (f"/api/v1/orders/{oid}", "/api/v1/status-changes", f"/api/v1/orders/{oid}/status",
                            "/api/v1/orders")]
    assert [r.status_code for r in answers] == [201, 200, 200, 429, 429]
    assert [r.headers["RateLimit-Remaining"] for r in answers] == ["2", "1", "0", "0", "0"]
    assert client.get("/api/v1/orders", headers=auth(other)).status_code == 200


def test_rate_limit_reset_is_seconds_until_the_window_resets(client, accounts_, one_rate_window):
    slow = accounts_.partner("slow", "S", tier="tiny")
    for r in [client.get("/api/v1/orders", headers=auth(slow)) for _ in range(4)]:
        assert 0 <= int(r.headers["RateLimit-Reset"]) <= 60, r.headers["RateLimit-Reset"]
    assert time.time() > 60  # an epoch time would have failed above


def test_retry_after_only_on_a_refusal_to_wait_for(client, accounts_, one_rate_window):
    slow = accounts_.partner("slow", "S", tier="tiny")
    answers = [client.get("/api/v1/orders", headers=auth(slow)) for _ in range(4)]
    assert ["Retry-After" in r.headers for r in answers] == [False, False, False, True]
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 60
    assert int(answers[3].headers["Retry-After"]) >= int(answers[3].headers["RateLimit-Reset"])


def test_the_document_is_not_counted(client, accounts_):
    for _ in range(5):
        r = client.get("/api/v1/openapi.json")
        assert r.status_code == 200 and "Retry-After" not in r.headers
