"""Requests per API client (mes.metrics): attributed to the client and its key id, 401s and 429s
included, with the number of client labels bounded per process."""
from __future__ import annotations

import hashlib
import re
import threading

import pytest
from conftest import auth

from mes import create_app
from mes.extensions import limiter
from mes.metrics import OTHER_CLIENT, BoundedLabels


def client_samples(client) -> dict[tuple[str, str, str], float]:
    """mes_api_client_requests_total as {(client, key_id, status): value}, from the app's /metrics."""
    text = client.get("/metrics").get_data(as_text=True)
    found = {}
    for m in re.finditer(r'^mes_api_client_requests_total\{client="([^"]*)",key_id="([^"]*)",status="(\d+)"\} (\S+)$',
                         text, re.M):
        found[m.group(1), m.group(2), m.group(3)] = float(m.group(4))
    return found


def key_id_of(headers: dict) -> str:
    return hashlib.sha256(headers["Authorization"].split()[1].encode()).hexdigest()[:8]


def test_the_first_values_keep_their_label_and_the_rest_are_other():
    labels = BoundedLabels(3)
    assert [labels(v) for v in ["a", "b", "a", "c", "d", "e", "b"]] == ["a", "b", "a", "c", OTHER_CLIENT,
                                                                       OTHER_CLIENT, "b"]
    assert labels("c") == "c" and labels("f") == OTHER_CLIENT


def test_the_bound_holds_under_concurrent_first_requests():
    labels, kept = BoundedLabels(5), []
    barrier = threading.Barrier(40)

    def first_request(i):
        barrier.wait()
        kept.append(labels(f"client-{i}"))

    threads = [threading.Thread(target=first_request, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({k for k in kept if k != OTHER_CLIENT}) == 5
    assert kept.count(OTHER_CLIENT) == 35


def test_requests_401s_and_429s_are_counted_per_client_and_key_id(client, accounts_):
    flooder = accounts_.partner("flood-erp", "Flood", tier="tiny")  # 3/minute
    quiet = accounts_.partner("quiet-erp", "Quiet")
    for _ in range(5):
        client.get("/api/v1/orders", headers=auth(flooder))
    assert client.get("/api/v1/orders", headers=auth(quiet)).status_code == 200
    client.get("/api/v1/orders", headers={"Authorization": "Bearer mes_00000000_not-a-key"})
    client.get("/api/v1/orders")
    samples = client_samples(client)
    assert samples[("flood-erp", key_id_of(flooder), "200")] == 3
    assert samples[("flood-erp", key_id_of(flooder), "429")] == 2
    assert samples[("quiet-erp", key_id_of(quiet), "200")] == 1
    # No valid key: one label for all of them, whatever was sent (a made-up key adds no series).
    assert samples[("none", "none", "401")] == 2
    assert not any(kid.startswith("mes_") or "not-a-key" in kid for _, kid, _ in samples)


def test_clients_beyond_the_limit_share_the_other_label(backend, accounts_, monkeypatch):
    monkeypatch.setenv("MES_METRICS_CLIENT_LABELS", "2")
    app = create_app(backend.settings())
    try:
        client = app.test_client()
        keys = [accounts_.partner(f"erp-{i}", f"P{i}") for i in range(4)]
        for headers in keys:
            assert client.get("/api/v1/orders", headers=auth(headers)).status_code == 200
        samples = client_samples(client)
        assert {c for c, _, _ in samples} == {"erp-0", "erp-1", OTHER_CLIENT}
        assert samples[(OTHER_CLIENT, OTHER_CLIENT, "200")] == 2
    finally:
        app.extensions["mes_engine"].dispose()
        limiter.reset()
        backend.reset()


@pytest.mark.parametrize("path", ["/healthz/live", "/operator/login"])
def test_requests_outside_the_api_are_not_counted(client, path):
    client.get(path)
    assert client_samples(client) == {}


def histogram(client, name: str) -> tuple[float, float]:
    """(count, sum) of an unlabelled histogram of the app's /metrics."""
    text = client.get("/metrics").get_data(as_text=True)
    count = re.search(rf"^{name}_count (\S+)$", text, re.M)
    total = re.search(rf"^{name}_sum (\S+)$", text, re.M)
    return float(count.group(1)), float(total.group(1))


def test_database_time_is_observed_once_per_request_and_not_for_probes(client, accounts_):
    partner = accounts_.partner()
    before = histogram(client, "mes_request_db_seconds")
    for _ in range(3):
        assert client.get("/api/v1/orders", headers=auth(partner)).status_code == 200
    client.get("/healthz/ready")
    count, total = histogram(client, "mes_request_db_seconds")
    assert count - before[0] == 3
    assert total > before[1]  # the key lookup and the list read ran SQL
