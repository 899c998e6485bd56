"""Webhooks end to end on both databases: endpoints through the API and the CLI, the outbox written in the
change's own transaction, the worker delivering to a receiver in this process (on loopback, allowed by the
settings) that verifies each signature with the standardwebhooks library, retries on the backoff schedule
until the endpoint is failing, redirects, the address guard, replays, test events, secret rotation, and two
workers at once on PostgreSQL."""
from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from uuid import uuid4

import pytest
import requests
from click.testing import CliRunner
from conftest import auth, cancel_reason, create_order
from sqlalchemy import func, select, update
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from mes.cli import main
from mes.domain import webhooks as rules
from mes.domain.errors import ValidationFailed
from mes.domain.lifecycle import Status
from mes.models import (IdempotencyRecord, Order, WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent,
                        iso, utcnow)
from mes.services import holds, shipments
from mes.services import webhooks as svc_webhooks
from mes.services import orders as svc
from mes.services.accounts import operator_actor
from mes.webhook_worker import WebhookMetrics, run_once

S = Status
LOOPBACK = ("127.0.0.1/32",)
ALL_TYPES = list(rules.SUBSCRIBABLE)


class Receiver:
    """An HTTP receiver on 127.0.0.1: answers each POST with the next planned status (200 once the plan
    runs out) and keeps what it got."""

    def __init__(self):
        self.received: list[tuple[str, dict, bytes]] = []
        self.plan: list[int] = []
        self.delay = 0.0
        self.in_flight = self.most_in_flight = 0  # requests being answered at once
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.received.append((self.path, dict(self.headers), body))
                    status = receiver.plan.pop(0) if receiver.plan else 200
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.in_flight -= 1
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Type", "text/plain")
                reply = b"x" * 10000 if status >= 500 else b"ok"
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, path: str = "/hooks") -> list[dict]:
        return [json.loads(b) for p, _, b in self.received if p == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def settings(backend):
    """The tests' receiver is plain http on loopback: both allowed here, and only here."""
    return backend.settings(webhook_allow_http=True, webhook_allowed_networks=LOOPBACK)


@pytest.fixture
def boss(accounts_):
    return operator_actor(accounts_.operator("chief", role="supervisor"))


def register(client, headers, url, types=None, **extra):
    response = client.post("/api/v1/webhook-endpoints", headers={**auth(headers), "Idempotency-Key": str(uuid4())},
                           json={"url": url, "event_types": types or ALL_TYPES, **extra})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def with_key(headers, key):
    return {**auth(headers), **({"Idempotency-Key": key} if key else {})}


def deliver(app, **kw):
    kw.setdefault("metrics", WebhookMetrics())
    metrics = kw.pop("metrics")
    return run_once(app.extensions["mes_sessionmaker"], kw.pop("settings", app.extensions["mes_settings"]),
                    metrics, **kw)


def log_of(client, headers, endpoint) -> list[dict]:
    page = client.get(f"/api/v1/webhook-endpoints/{endpoint['id']}/deliveries", headers=auth(headers))
    return page.get_json()["items"]


def verified(secret: str, headers: dict, body: bytes) -> dict:
    return Webhook(secret).verify(body, headers)


# ----------------------------------------------------------------------------------------------- rules
def test_event_types_of_an_order_event():
    assert rules.types_of("status", None, "received", None, "on_track") == []  # creation
    assert rules.types_of("status", "packed", "shipped", "on_track", "met") == [
        "order.status_changed", "order.shipped", "order.promise_changed"]
    assert rules.types_of("status", "queued", "cancelled", "at_risk", "at_risk") == [
        "order.status_changed", "order.cancelled"]
    assert rules.types_of("hold", "queued", "queued", "on_track", "on_track") == ["order.on_hold"]
    assert rules.types_of("release", "queued", "queued", "late", "late") == ["order.hold_released"]
    assert rules.types_of("promise", "queued", "queued", "on_track", "at_risk") == ["order.promise_changed"]


def test_urls_and_addresses():
    strict = rules.AddressPolicy()
    assert rules.parse_url("https://hooks.example.com/mes", strict) == "https://hooks.example.com/mes"
    for bad in ("http://hooks.example.com/", "ftp://x/", "https://user:pw@x.example/", "https:///x",
                "https://10.0.0.5/", "https://127.0.0.1/", "https://[::1]/", "https://169.254.169.254/", 5, ""):
        with pytest.raises(ValidationFailed):
            rules.parse_url(bad, strict)
    assert not rules.address_allowed("192.168.1.1", strict)
    assert not rules.address_allowed("::ffff:127.0.0.1", strict)
    assert rules.address_allowed("8.8.8.8", strict)
    assert rules.address_allowed("127.0.0.1", rules.AddressPolicy(allowed_networks=LOOPBACK))


def test_the_backoff_grows_with_full_jitter_and_gives_up_after_three_days():
    policy = rules.RetryPolicy()
    start = utcnow()
    rng = random.Random(7)
    waits = [policy.next_attempt(n, start, start, rng) - start for n in range(1, 12)]
    assert all(timedelta(0) <= w <= policy.ceiling(n) for n, w in zip(range(1, 12), waits))
    assert policy.ceiling(1) == timedelta(seconds=30) and policy.ceiling(2) == timedelta(seconds=60)
    assert policy.ceiling(20) == timedelta(hours=6)
    assert policy.next_attempt(30, start, start + timedelta(days=3) - timedelta(seconds=1), rng) is not None
    assert policy.next_attempt(30, start, start + timedelta(days=3), rng) is None


# ----------------------------------------------------------------------------------------------- API
def test_a_partner_manages_its_own_endpoints_and_sees_no_one_elses(client, accounts_):
    acme, other = accounts_.partner(), accounts_.partner("globex-erp", "Globex")
    created = register(client, acme, "https://hooks.acme.example/mes", ["order.shipped"], description="ERP")
    assert created["secret"].startswith("whsec_") and created["event_types"] == ["order.shipped"]
    assert created["partner_id"] == acme["_partner_id"]
    path = f"/api/v1/webhook-endpoints/{created['id']}"
    shown = client.get(path, headers=auth(acme)).get_json()
    assert "secret" not in shown and shown["url"] == "https://hooks.acme.example/mes"
    assert client.get("/api/v1/webhook-endpoints", headers=auth(other)).get_json()["items"] == []
    assert client.get(path, headers=auth(other)).status_code == 404
    assert client.delete(path, headers=auth(other)).status_code == 404

    changed = client.patch(path, headers=auth(acme), json={"active": False, "event_types": ["order.on_hold"]})
    assert changed.status_code == 200 and changed.get_json()["active"] is False
    assert changed.get_json()["event_types"] == ["order.on_hold"]
    for body in ({"url": "ftp://hooks.acme.example/"}, {"event_types": ["order.exploded"]}, {"secret": "x"}):
        refused = client.patch(path, headers=auth(acme), json=body)
        assert refused.status_code == 422, body
    assert client.post("/api/v1/webhook-endpoints", headers={**auth(acme), "Idempotency-Key": "private"},
                       json={"url": "https://10.1.2.3/", "event_types": ALL_TYPES}).status_code == 422
    assert client.delete(path, headers=auth(acme)).status_code == 204
    assert client.get(path, headers=auth(acme)).status_code == 404


def test_the_cli_registers_rotates_lists_and_removes(app, backend, accounts_):
    accounts_.partner()
    env = {"DATABASE_URL": backend.app_url, "SECRET_KEY": "cli-test", "LOG_LEVEL": "WARNING"}
    run = lambda *a: CliRunner().invoke(main, list(a), env=env, catch_exceptions=False)  # noqa: E731
    added = run("webhook-endpoints", "add", "https://hooks.acme.example/mes", "--partner", "ACME",
                "--events", "order.shipped,order.cancelled")
    assert added.exit_code == 0, added.output
    secret = added.output.strip().splitlines()[-1]
    assert secret.startswith("whsec_")
    listed = run("webhook-endpoints", "list")
    assert "https://hooks.acme.example/mes" in listed.output and "order.shipped,order.cancelled" in listed.output
    endpoint_id = listed.output.splitlines()[1].split("\t")[0]
    rotated = run("webhook-endpoints", "rotate-secret", endpoint_id)
    assert rotated.exit_code == 0 and rotated.output.strip().splitlines()[-1] not in (secret, "")
    bad = run("webhook-endpoints", "add", "http://hooks.acme.example/")
    assert bad.exit_code == 1 and "https" in bad.output
    assert run("webhook-endpoints", "remove", endpoint_id).exit_code == 0
    assert run("webhook-endpoints", "list").output.strip().count("\n") == 0
    assert run("deliver-webhooks", "--once").output.strip() == "nothing due"


# ----------------------------------------------------------------------------------------------- outbox
def test_a_change_writes_its_events_and_one_delivery_per_matching_endpoint(client, accounts_, db, boss):
    acme, other = accounts_.partner(), accounts_.partner("globex-erp", "Globex")
    crm = accounts_.crm()
    every = register(client, acme, "https://a.example/h")
    only_cancel = register(client, acme, "https://b.example/h", ["order.cancelled"])
    register(client, other, "https://c.example/h")  # another partner's: hears nothing of ACME's orders
    everyone = register(client, crm, "https://crm.example/h", ["order.status_changed"])
    oid = create_order(client, acme).get_json()["id"]
    assert db.scalar(select(func.count()).select_from(WebhookEvent)) == 0  # creation is no event
    svc.change_status(db, boss, oid, S.QUEUED)
    db.rollback()
    events = list(db.scalars(select(WebhookEvent)))
    assert [e.type for e in events] == ["order.status_changed"]
    assert events[0].msg_id.startswith("msg_") and events[0].order_id == oid
    payload = json.loads(events[0].payload)
    assert payload["type"] == "order.status_changed"
    assert payload["data"]["partner_id"] == acme["_partner_id"] and payload["data"]["reference"] == "PO-1"
    assert payload["data"]["to_status"] == "queued"
    to = sorted(d.endpoint_id for d in db.scalars(select(WebhookDelivery)))
    assert to == sorted([every["id"], everyone["id"]])
    assert only_cancel["id"] not in to


def test_a_rolled_back_change_writes_no_outbox_row(client, accounts_, db, boss):
    acme = accounts_.partner()
    register(client, acme, "https://a.example/h")
    oid = create_order(client, acme).get_json()["id"]

    def fail(_order):
        raise RuntimeError("the change fails after its event was flushed")

    with pytest.raises(RuntimeError):
        svc.change_status(db, boss, oid, S.QUEUED, before_commit=fail)
    db.rollback()
    assert db.scalar(select(func.count()).select_from(WebhookEvent)) == 0
    assert db.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
    svc.change_status(db, boss, oid, S.QUEUED)  # the same session writes the next change's events only
    db.rollback()
    assert db.scalar(select(func.count()).select_from(WebhookEvent)) == 1


def test_holds_and_shipping_make_their_events_with_shipments(client, accounts_, db, boss):
    from mes.models import ReasonCode

    acme = accounts_.partner()
    register(client, acme, "https://a.example/h")
    oid = create_order(client, acme, quantity=5).get_json()["id"]
    machine_down = db.scalar(select(ReasonCode.id).where(ReasonCode.kind == "hold", ReasonCode.code == "machine_down"))
    holds.put_on_hold(db, boss, oid, machine_down, "spindle")
    holds.release_hold(db, boss, oid)
    for step in (S.QUEUED, S.IN_PRODUCTION, S.QUALITY_CHECK, S.PACKED):
        svc.change_status(db, boss, oid, step)
    db.rollback()
    version = db.get(Order, oid).status_version
    shipments.record(db, boss, oid, fields={"carrier": "DHL", "tracking_number": "JD1", "packages": "1",
                                            "quantity": "5"}, expected_version=version)
    db.rollback()
    by_type = {}
    for e in db.scalars(select(WebhookEvent).order_by(WebhookEvent.id)):
        by_type.setdefault(e.type, []).append(json.loads(e.payload)["data"])
    assert by_type["order.on_hold"][0]["reason"] == "Machine down" or by_type["order.on_hold"][0]["reason"]
    assert "spindle" not in json.dumps(by_type)  # the floor's note stays inside
    assert len(by_type["order.hold_released"]) == 1
    shipped = by_type["order.shipped"][0]
    assert [s["carrier"] for s in shipped["shipments"]] == ["DHL"] and shipped["to_status"] == "shipped"


# ----------------------------------------------------------------------------------------------- worker
def test_an_event_is_delivered_once_signed_and_logged(app, client, accounts_, db, boss, receiver):
    acme = accounts_.partner()
    endpoint = register(client, acme, receiver.url)
    oid = create_order(client, acme).get_json()["id"]
    svc.change_status(db, boss, oid, S.QUEUED)
    metrics = WebhookMetrics()
    assert deliver(app, metrics=metrics) == {"delivered": 1}
    assert deliver(app, metrics=metrics) == {}
    assert len(receiver.received) == 1
    _, headers, body = receiver.received[0]
    payload = verified(endpoint["secret"], headers, body)
    assert payload["type"] == "order.status_changed" and payload["data"]["order_id"] == oid
    assert headers["webhook-id"].startswith("msg_")
    assert metrics.deliveries.labels(outcome="delivered")._value.get() == 1
    assert metrics.latency._sum.get() >= 0 and metrics.backlog_age._value.get() == 0

    log = client.get(f"/api/v1/webhook-endpoints/{endpoint['id']}/deliveries", headers=auth(acme)).get_json()
    (item,) = log["items"]
    assert item["state"] == "delivered" and item["attempts"] == 1 and item["event_id"] == headers["webhook-id"]
    assert item["attempt_log"][0]["status_code"] == 200 and item["attempt_log"][0]["response_excerpt"] == "ok"
    assert item["attempt_log"][0]["latency_ms"] >= 0 and item["next_attempt_at"] is None


def test_a_failing_receiver_is_retried_on_the_schedule_then_marked_failing(app, client, accounts_, db, receiver):
    acme = accounts_.partner()
    endpoint = register(client, acme, receiver.url)
    queued = client.post(f"/api/v1/webhook-endpoints/{endpoint['id']}/test", headers=auth(acme))
    assert queued.status_code == 202
    receiver.plan = [500] * 1000
    policy = app.extensions["mes_settings"].webhook_retry_policy
    metrics, rng = WebhookMetrics(), random.Random(3)
    now, attempts = utcnow(), 0
    start = now
    while True:
        assert deliver(app, now=now, metrics=metrics, rng=rng)
        attempts += 1
        db.rollback()
        row = db.scalar(select(WebhookDelivery))
        assert row.attempts == attempts
        if row.state == "failed":
            break
        assert timedelta(0) <= row.next_attempt_at - now <= policy.ceiling(attempts)
        assert deliver(app, now=row.next_attempt_at - timedelta(microseconds=1), metrics=metrics) == {}  # not due
        now = row.next_attempt_at
        assert attempts < 200
    assert now - start >= timedelta(days=3)
    assert attempts == len(receiver.received)
    assert db.get(WebhookEndpoint, endpoint["id"]).failing_since is not None
    failing = select(func.count()).select_from(WebhookEvent).where(WebhookEvent.type == "webhook_endpoint.failing")
    assert db.scalar(failing) == 1
    assert metrics.endpoints_failing._value.get() == 1
    assert metrics.deliveries.labels(outcome="failed")._value.get() == 1
    assert metrics.failures.labels(endpoint=str(endpoint["id"]))._value.get() == attempts
    assert metrics.attempts.labels(endpoint=str(endpoint["id"]))._value.get() == attempts  # every one failed
    excerpt = client.get(f"/api/v1/webhook-endpoints/{endpoint['id']}/deliveries",
                         headers=auth(acme)).get_json()["items"][0]["attempt_log"][0]["response_excerpt"]
    assert len(excerpt) == 4096  # the body is read up to the limit

    receiver.plan = []  # it recovers: a replay of the event gets through and the endpoint is healthy again
    replayed = client.post(f"/api/v1/webhook-endpoints/{endpoint['id']}/deliveries/{row.id}/replay",
                           headers=auth(acme))
    assert replayed.status_code == 202 and replayed.get_json()["replay"] is True
    assert deliver(app, metrics=metrics) == {"delivered": 1}
    db.rollback()
    assert db.get(WebhookEndpoint, endpoint["id"]).failing_since is None
    ids = {h["webhook-id"] for _, h, _ in receiver.received}
    assert len(ids) == 1  # a replay is the same event: the receiver can tell it has seen it
    stranger = auth(accounts_.partner("x", "X"))
    assert client.get(f"/api/v1/webhook-endpoints/{endpoint['id']}/deliveries", headers=stranger).status_code == 404


def test_redirects_are_not_followed(app, client, accounts_, receiver):
    acme = accounts_.partner()
    endpoint = register(client, acme, receiver.url)
    client.post(f"/api/v1/webhook-endpoints/{endpoint['id']}/test", headers=auth(acme))
    receiver.plan = [302]
    assert deliver(app) == {"retry": 1}
    assert [p for p, _, _ in receiver.received] == ["/hooks"]
    item = log_of(client, acme, endpoint)[0]
    assert item["last_status_code"] == 302 and item["state"] == "pending" and item["next_attempt_at"]


def test_a_private_address_is_refused_unless_allowed(app, client, accounts_, receiver):
    acme = accounts_.partner()
    by_name = receiver.url.replace("127.0.0.1", "localhost")
    endpoint = register(client, acme, by_name)
    client.post(f"/api/v1/webhook-endpoints/{endpoint['id']}/test", headers=auth(acme))
    strict = replace(app.extensions["mes_settings"], webhook_allowed_networks=())
    assert deliver(app, settings=strict) == {"refused": 1}
    assert receiver.received == []
    item = log_of(client, acme, endpoint)[0]
    assert "not public" in item["attempt_log"][0]["error"] and item["attempt_log"][0]["status_code"] is None
    # With loopback allowed (the tests' settings) the same delivery goes through on its next try.
    later = utcnow() + timedelta(hours=7)
    assert deliver(app, now=later) == {"delivered": 1}
    assert len(receiver.received) == 1
    strict_app_url = client.post("/api/v1/webhook-endpoints", headers=with_key(acme, "loopback"),
                                 json={"url": "http://127.0.0.1:9/x", "event_types": ALL_TYPES})
    assert strict_app_url.status_code == 201  # allowed by these settings; refused by default (test_urls_and_addresses)


def test_a_rotated_secret_overlaps_then_only_the_new_one_signs(app, client, accounts_, receiver):
    acme = accounts_.partner()
    endpoint = register(client, acme, receiver.url)
    path = f"/api/v1/webhook-endpoints/{endpoint['id']}"
    rotated = client.post(f"{path}/rotate-secret", headers=auth(acme)).get_json()
    new, old = rotated["secret"], endpoint["secret"]
    assert new != old and rotated["previous_secret_expires_at"]
    client.post(f"{path}/test", headers=auth(acme))
    assert deliver(app) == {"delivered": 1}
    _, headers, body = receiver.received[0]
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verified(old, headers, body)["type"] == "webhook.test"
    assert verified(new, headers, body)["type"] == "webhook.test"

    client.post(f"{path}/test", headers=auth(acme))
    assert deliver(app, now=utcnow() + timedelta(hours=24, minutes=1)) == {"delivered": 1}
    _, headers, body = receiver.received[1]
    assert len(headers["webhook-signature"].split(" ")) == 1
    assert verified(new, headers, body)["type"] == "webhook.test"
    with pytest.raises(WebhookVerificationError):
        verified(old, headers, body)


@pytest.mark.postgresql_only
def test_two_workers_at_once_never_deliver_one_event_twice(app, client, accounts_, receiver):
    acme = accounts_.partner()
    endpoint = register(client, acme, receiver.url)
    for _ in range(30):
        client.post(f"/api/v1/webhook-endpoints/{endpoint['id']}/test", headers=auth(acme))
    receiver.delay = 0.01
    small = replace(app.extensions["mes_settings"], webhook_batch=3)
    errors = []

    def worker():
        try:
            while deliver(app, settings=small):
                pass
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    ids = [h["webhook-id"] for _, h, _ in receiver.received]
    assert len(ids) == 30 and len(set(ids)) == 30


def test_a_slow_receiver_holds_up_no_other_partner_and_a_batch_is_sent_at_once(app, client, accounts_):
    """One partner's receiver takes a second per answer and its events are the oldest: a pass still takes
    at most `webhook_endpoint_batch` of them and the other partner's events beside them, and sends the
    batch at once (the slow receiver has all of its requests before it answers the first)."""
    slow, quick = Receiver(), Receiver()
    try:
        slow.delay = 1.0
        acme, globex = accounts_.partner(), accounts_.partner("globex-erp", "GLOBEX")
        slow_endpoint, quick_endpoint = register(client, acme, slow.url), register(client, globex, quick.url)
        for _ in range(8):
            client.post(f"/api/v1/webhook-endpoints/{slow_endpoint['id']}/test", headers=auth(acme))
        for _ in range(3):
            client.post(f"/api/v1/webhook-endpoints/{quick_endpoint['id']}/test", headers=auth(globex))
        small = replace(app.extensions["mes_settings"], webhook_batch=6, webhook_endpoint_batch=3)
        assert deliver(app, settings=small) == {"delivered": 6}
        assert len(quick.received) == 3 and len(slow.received) == 3
        assert slow.most_in_flight == 3
        while deliver(app, settings=small):
            pass
        assert len({h["webhook-id"] for _, h, _ in slow.received}) == 8 == len(slow.received)
    finally:
        slow.close()
        quick.close()


def test_delivered_payloads_match_the_documents_webhooks_section(app, client, accounts_, db, boss, receiver):
    import jsonschema

    from mes.api.routes import OPENAPI

    acme = accounts_.partner()
    endpoint = register(client, acme, receiver.url)
    oid = create_order(client, acme).get_json()["id"]
    svc.change_status(db, boss, oid, S.QUEUED)
    svc.change_status(db, boss, oid, S.CANCELLED, cancel_reason_id=cancel_reason(db))
    client.post(f"/api/v1/webhook-endpoints/{endpoint['id']}/test", headers=auth(acme))
    deliver(app)
    seen = set()
    for _, headers, body in receiver.received:
        payload = json.loads(body)
        operation = OPENAPI["webhooks"][payload["type"]]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        jsonschema.validate(payload, {**schema, "components": OPENAPI["components"]})
        assert {p["name"] for p in operation["parameters"]} <= {k.lower() for k in headers}
        seen.add(payload["type"])
    assert seen >= {"order.status_changed", "order.cancelled", "webhook.test"}


def test_a_claim_whose_lease_ran_out_records_nothing(app, client, accounts_, db):
    """A worker that took longer than its lease has lost the row to another: only the new holder's
    outcome counts, so one attempt is never recorded twice."""
    from mes.webhook_worker import Outcome, claim, lease, record

    acme = accounts_.partner()
    endpoint = register(client, acme, "https://hooks.acme.example/mes")
    client.post(f"/api/v1/webhook-endpoints/{endpoint['id']}/test", headers=auth(acme))
    cfg, metrics = app.extensions["mes_settings"], WebhookMetrics()
    now = utcnow()
    (slow,) = claim(db, cfg, now)
    assert claim(db, cfg, now) == []  # leased: nobody else takes it meanwhile
    (fast,) = claim(db, cfg, now + lease(cfg) + timedelta(seconds=1))
    assert record(db, slow, Outcome(200, 5, "ok", None), now, cfg, metrics) == "lost"
    assert record(db, fast, Outcome(200, 5, "ok", None), now, cfg, metrics) == "delivered"
    db.rollback()
    (row,) = db.scalars(select(WebhookDelivery))
    assert (row.state, row.attempts, len(row.attempt_log)) == ("delivered", 1, 1)


def test_the_connection_itself_refuses_a_peer_that_is_not_allowed(receiver):
    """Should a name resolve to a private address only when requests connects (after the guard looked),
    the connection checks its peer before sending anything."""
    import requests

    from mes.webhook_worker import http_session

    with pytest.raises(requests.ConnectionError, match="not public and not allowed"):
        http_session(rules.AddressPolicy(allow_http=True)).post(receiver.url, data=b"{}", timeout=2)
    assert receiver.received == []
    allowed = http_session(rules.AddressPolicy(allow_http=True, allowed_networks=LOOPBACK))
    assert allowed.post(receiver.url, data=b"{}", timeout=2).status_code == 200


# ----------------------------------------------------------------------------------------------- range replay
def replay_range(client, headers, endpoint, key="replay-1", **body):
    return client.post(f"/api/v1/webhook-endpoints/{endpoint['id']}/replay", json=body,
                       headers={**auth(headers), **({"Idempotency-Key": key} if key else {})})


def hour_around_now() -> dict:
    now = utcnow()
    return {"from": iso(now - timedelta(hours=1)), "to": iso(now + timedelta(minutes=1))}


def test_a_range_replay_sends_an_endpoint_registered_later_its_partners_events(app, client, accounts_, db, boss,
                                                                             receiver):
    """The outbox keeps every event, subscriber or not: an endpoint registered afterwards gets the range
    again, its own partner's events only, each with the event's webhook-id; a retry with the key
    replays the answer and queues nothing."""
    acme, other, crm = accounts_.partner(), accounts_.partner("globex-erp", "Globex"), accounts_.crm()
    for who, ref in ((acme, "PO-1"), (acme, "PO-2"), (other, "PO-9")):
        oid = create_order(client, who, reference=ref).get_json()["id"]
        svc.change_status(db, boss, oid, S.QUEUED)
    svc.change_status(db, boss, oid, S.CANCELLED, cancel_reason_id=cancel_reason(db))  # Globex's
    db.rollback()
    assert db.scalar(select(func.count()).select_from(WebhookDelivery)) == 0  # nobody listened
    endpoint = register(client, acme, receiver.url)

    queued = replay_range(client, acme, endpoint, **hour_around_now())
    assert queued.status_code == 202, queued.get_json()
    body = queued.get_json()
    assert body["queued"] == 2 and body["endpoint_id"] == endpoint["id"] and body["event_types"] == ALL_TYPES
    again = replay_range(client, acme, endpoint, **{k: body[k] for k in ("from", "to")})
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == body
    assert deliver(app) == {"delivered": 2}
    acme_events = {e.msg_id for e in db.scalars(select(WebhookEvent).where(
        WebhookEvent.partner_id == acme["_partner_id"]))}
    assert {h["webhook-id"] for _, h, _ in receiver.received} == acme_events
    for _, headers, raw in receiver.received:
        assert verified(endpoint["secret"], headers, raw)["data"]["partner_id"] == acme["_partner_id"]
    assert all(item["replay"] for item in log_of(client, acme, endpoint))

    reused = replay_range(client, acme, endpoint, event_types=["order.cancelled"], **hour_around_now())
    assert reused.status_code == 422 and reused.get_json()["type"] == "/problems/idempotency-key-reused"
    # The CRM's endpoint hears every partner; a type filter narrows the range.
    everyone = register(client, crm, receiver.url + "/crm", ["order.status_changed", "order.cancelled"])
    assert replay_range(client, crm, everyone, **hour_around_now()).get_json()["queued"] == 5
    only = replay_range(client, crm, everyone, key="replay-2", event_types=["order.cancelled"],
                        **hour_around_now())
    assert only.get_json()["queued"] == 1 and only.get_json()["event_types"] == ["order.cancelled"]


def test_a_range_replay_refuses_what_it_cannot_do_and_queues_nothing(client, accounts_, db, boss, settings):
    acme = accounts_.partner()
    for ref in ("PO-1", "PO-2", "PO-3"):
        svc.change_status(db, boss, create_order(client, acme, reference=ref).get_json()["id"], S.QUEUED)
    endpoint = register(client, acme, "https://hooks.acme.example/mes", ["order.status_changed"])
    now = utcnow()

    def refused(status, slug, field=None, key="k", **body):
        r = replay_range(client, acme, endpoint, key=key, **body)
        assert r.status_code == status and r.mimetype == "application/problem+json", r.get_data(as_text=True)
        assert r.get_json()["type"] == f"/problems/{slug}", r.get_json()
        if field:
            assert [e["field"] for e in r.get_json()["errors"]] == [field]
        return r.get_json()

    refused(400, "idempotency-key-missing", key=None, **hour_around_now())
    refused(422, "validation-failed", "to", **{"from": iso(now), "to": iso(now - timedelta(seconds=1))})
    refused(422, "validation-failed", "to", **{"from": iso(now - timedelta(days=8)), "to": iso(now)})
    too_old = refused(422, "validation-failed", "from", **{"from": iso(now - timedelta(days=31)),
                                                           "to": iso(now - timedelta(days=30, hours=12))})
    assert "retention of 30 days" in too_old["detail"]
    refused(422, "validation-failed", "from", **{"from": "yesterday", "to": iso(now)})
    refused(422, "validation-failed", "event_types", event_types=["order.shipped"], **hour_around_now())
    refused(422, "validation-failed", "since", since=iso(now), **hour_around_now())
    stranger = accounts_.partner("globex-erp", "Globex")
    assert replay_range(client, stranger, endpoint, **hour_around_now()).status_code == 404
    settings.webhook_replay_max_events = 2  # beyond the cap: refused whole, never cut short
    big = refused(422, "replay-too-large", **hour_around_now())
    assert big["events"] == 3 and big["max_events"] == 2 and "shorter ranges" in big["detail"]
    client.patch(f"/api/v1/webhook-endpoints/{endpoint['id']}", headers=auth(acme), json={"active": False})
    refused(409, "conflict", **hour_around_now())
    db.rollback()
    assert db.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
    assert db.scalar(select(func.count()).select_from(IdempotencyRecord).where(IdempotencyRecord.key == "k")) == 0


def test_the_cli_replays_a_range(app, backend, client, accounts_, db, boss):
    acme = accounts_.partner()
    svc.change_status(db, boss, create_order(client, acme).get_json()["id"], S.QUEUED)
    endpoint = register(client, acme, "https://hooks.acme.example/mes")
    env = {"DATABASE_URL": backend.app_url, "SECRET_KEY": "cli-test", "LOG_LEVEL": "WARNING"}
    run = lambda *a: CliRunner().invoke(main, list(a), env=env, catch_exceptions=False)  # noqa: E731
    span = hour_around_now()
    done = run("webhook-endpoints", "replay", str(endpoint["id"]), "--from", span["from"], "--to", span["to"],
               "--events", "order.status_changed")
    assert done.exit_code == 0, done.output
    assert done.output.strip() == f"1 deliveries queued for endpoint {endpoint['id']}"
    backwards = run("webhook-endpoints", "replay", str(endpoint["id"]), "--from", span["to"], "--to", span["from"])
    assert backwards.exit_code == 1 and "to must be later than from" in backwards.output
    db.rollback()
    assert [d.replay for d in db.scalars(select(WebhookDelivery))] == [True]


# ----------------------------------------------------------------------------------------------- idempotent POSTs
def count(db, model) -> int:
    db.rollback()
    return db.scalar(select(func.count()).select_from(model))


def reused(response) -> bool:
    return response.status_code == 422 and response.get_json()["type"] == "/problems/idempotency-key-reused"


def test_a_retried_register_gets_the_first_endpoint_and_secret_and_registers_nothing(client, accounts_, db):
    """A key is required, as for an order's create: a second endpoint would hear every event twice."""
    acme, globex = accounts_.partner(), accounts_.partner("globex-erp", "Globex")
    body = {"url": "https://hooks.acme.example/mes", "event_types": ["order.shipped"]}
    first = client.post("/api/v1/webhook-endpoints", headers=with_key(acme, "reg-1"), json=body)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = client.post("/api/v1/webhook-endpoints", headers=with_key(acme, "reg-1"),
                        json={"event_types": ["order.shipped"], "url": "https://hooks.acme.example/mes"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json() and again.get_json()["secret"].startswith("whsec_")
    assert again.headers["Location"] == first.headers["Location"]
    assert count(db, WebhookEndpoint) == 1

    assert reused(client.post("/api/v1/webhook-endpoints", headers=with_key(acme, "reg-1"),
                              json={**body, "url": "https://hooks.acme.example/other"}))
    missing = client.post("/api/v1/webhook-endpoints", headers=auth(acme), json=body)
    assert missing.status_code == 400 and missing.get_json()["type"] == "/problems/idempotency-key-missing"
    assert "registers it twice" in missing.get_json()["detail"]
    blank = client.post("/api/v1/webhook-endpoints", headers=with_key(acme, " "), json=body)
    assert blank.status_code == 400 and blank.mimetype == "application/problem+json"
    # A refused register stores nothing: the same key works once the body is right.
    bad = client.post("/api/v1/webhook-endpoints", headers=with_key(acme, "reg-2"), json={**body, "url": "ftp://x/"})
    assert bad.status_code == 422 and bad.get_json()["type"] == "/problems/validation-failed"
    assert client.post("/api/v1/webhook-endpoints", headers=with_key(acme, "reg-2"), json=body).status_code == 201
    # Keys belong to their client: another partner's same key is its own.
    theirs = client.post("/api/v1/webhook-endpoints", headers=with_key(globex, "reg-1"), json=body)
    assert theirs.status_code == 201 and "Idempotent-Replayed" not in theirs.headers
    assert theirs.get_json()["id"] != first.get_json()["id"]
    assert count(db, WebhookEndpoint) == 3
    # A key is shared with the orders' POSTs: an order's create with it is a different request.
    assert reused(create_order(client, acme, key="reg-1", reference="PO-1"))
    # Once the endpoint is removed, its key names nothing: a retry is told so rather than shown it.
    assert client.delete(first.headers["Location"], headers=auth(acme)).status_code == 204
    gone = client.post("/api/v1/webhook-endpoints", headers=with_key(acme, "reg-1"), json=body)
    assert gone.status_code == 409 and "new key" in gone.get_json()["detail"]
    assert count(db, WebhookEndpoint) == 2


def test_a_retried_rotation_gets_the_first_new_secret_and_rotates_nothing(app, client, accounts_, db, receiver):
    acme = accounts_.partner()
    endpoint, other = register(client, acme, receiver.url), register(client, acme, receiver.url + "/b")
    path = f"/api/v1/webhook-endpoints/{endpoint['id']}"
    first = client.post(f"{path}/rotate-secret", headers=with_key(acme, "rot-1"))
    again = client.post(f"{path}/rotate-secret", headers=with_key(acme, "rot-1"))
    assert first.status_code == again.status_code == 200
    assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    new = first.get_json()["secret"]
    db.rollback()
    row = db.get(WebhookEndpoint, endpoint["id"])
    assert (row.secret, row.previous_secret) == (new, endpoint["secret"])  # the old one still signs beside it
    client.post(f"{path}/test", headers=auth(acme))
    assert deliver(app) == {"delivered": 1}
    _, headers, body = receiver.received[0]
    assert verified(endpoint["secret"], headers, body) == verified(new, headers, body)

    assert reused(client.post(f"/api/v1/webhook-endpoints/{other['id']}/rotate-secret",
                              headers=with_key(acme, "rot-1")))
    db.rollback()
    assert db.get(WebhookEndpoint, other["id"]).secret == other["secret"]
    stranger = accounts_.partner("globex-erp", "Globex")
    assert client.post(f"{path}/rotate-secret", headers=with_key(stranger, "rot-1")).status_code == 404
    # Without a key each call rotates, as before.
    plain = client.post(f"{path}/rotate-secret", headers=auth(acme)).get_json()["secret"]
    assert plain != new and client.post(f"{path}/rotate-secret", headers=auth(acme)).get_json()["secret"] != plain


def test_a_retried_test_event_or_delivery_replay_queues_nothing_new(client, accounts_, db):
    acme = accounts_.partner()
    endpoint, other = (register(client, acme, "https://hooks.acme.example/mes"),
                       register(client, acme, "https://hooks.acme.example/other"))
    path = f"/api/v1/webhook-endpoints/{endpoint['id']}"
    first = client.post(f"{path}/test", headers=with_key(acme, "test-1"))
    again = client.post(f"{path}/test", headers=with_key(acme, "test-1"))
    assert first.status_code == again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert (count(db, WebhookEvent), count(db, WebhookDelivery)) == (1, 1)
    assert reused(client.post(f"/api/v1/webhook-endpoints/{other['id']}/test", headers=with_key(acme, "test-1")))

    delivery = first.get_json()["id"]
    replayed = client.post(f"{path}/deliveries/{delivery}/replay", headers=with_key(acme, "again-1"))
    retried = client.post(f"{path}/deliveries/{delivery}/replay", headers=with_key(acme, "again-1"))
    assert replayed.status_code == retried.status_code == 202 and replayed.get_json()["replay"] is True
    assert "Idempotent-Replayed" not in replayed.headers and retried.headers["Idempotent-Replayed"] == "true"
    assert retried.get_json() == replayed.get_json()
    assert count(db, WebhookDelivery) == 2
    assert reused(client.post(f"{path}/deliveries/{replayed.get_json()['id']}/replay",
                              headers=with_key(acme, "again-1")))
    assert reused(client.post(f"{path}/test", headers=with_key(acme, "again-1")))
    assert count(db, WebhookDelivery) == 2
    # Without a key each call queues, as before.
    assert client.post(f"{path}/test", headers=auth(acme)).status_code == 202
    assert client.post(f"{path}/deliveries/{delivery}/replay", headers=auth(acme)).status_code == 202
    assert count(db, WebhookDelivery) == 4


def at_once(live_server, headers, path: str, key: str, **kw) -> list:
    """Six POSTs with one key, released together: retries that overlap the first request."""
    start = threading.Barrier(6)

    def post(_):
        with requests.Session() as s:
            start.wait(10)
            return s.post(f"{live_server.url}/api/v1/webhook-endpoints{path}", headers=with_key(headers, key),
                          timeout=30, **kw)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, range(6)))
    assert len({(r.status_code, r.text) for r in answers}) == 1, [r.text for r in answers]
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) == 5
    return answers


def test_registers_and_rotations_sent_at_once_with_one_key_happen_once(live_server, client, accounts_, db):
    acme = accounts_.partner()
    body = {"url": "https://hooks.acme.example/mes", "event_types": ALL_TYPES}
    created = at_once(live_server, acme, "", "same", json=body)[0]
    assert created.status_code == 201 and count(db, WebhookEndpoint) == 1
    endpoint = created.json()
    rotated = at_once(live_server, acme, f"/{endpoint['id']}/rotate-secret", "rotate-once")[0]
    assert rotated.status_code == 200
    db.rollback()
    row = db.get(WebhookEndpoint, endpoint["id"])
    assert (row.secret, row.previous_secret) == (rotated.json()["secret"], endpoint["secret"])  # rotated once


def test_stored_answers_that_carry_a_secret_are_purged_like_every_other(app, client, accounts_, db):
    from mes.scheduler import jobs

    acme = accounts_.partner()
    created = client.post("/api/v1/webhook-endpoints", headers=with_key(acme, "reg-old"),
                          json={"url": "https://hooks.acme.example/mes", "event_types": ALL_TYPES}).get_json()
    rotated = client.post(f"/api/v1/webhook-endpoints/{created['id']}/rotate-secret",
                          headers=with_key(acme, "rot-old")).get_json()
    young = register(client, acme, "https://hooks.acme.example/young")
    db.rollback()
    stored = {r.key: json.loads(r.response_body)["secret"] for r in db.scalars(select(IdempotencyRecord))}
    assert stored["reg-old"] == created["secret"] and stored["rot-old"] == rotated["secret"]
    cfg = app.extensions["mes_settings"]
    db.execute(update(IdempotencyRecord).where(IdempotencyRecord.key.in_(["reg-old", "rot-old"]))
               .values(created_at=utcnow() - cfg.idempotency_retention - timedelta(minutes=1)))
    db.commit()
    (job,) = [j for j in jobs(cfg) if j.name == "purge-idempotency-keys"]
    assert job.run(db) == "2 idempotency keys purged"
    db.rollback()
    left = [json.loads(r.response_body)["secret"] for r in db.scalars(select(IdempotencyRecord))]
    assert left == [young["secret"]]


# ----------------------------------------------------------------------------------------------- retention
def age(db, days: float, *event_ids: int) -> None:
    db.execute(update(WebhookEvent).where(WebhookEvent.id.in_(event_ids))
               .values(created_at=utcnow() - timedelta(days=days)))
    db.commit()


def test_finished_events_past_the_retention_are_pruned_in_batches_and_pending_ones_kept(app, client, accounts_, db,
                                                                                       settings):
    from mes.scheduler import jobs

    acme = accounts_.partner()
    endpoint = register(client, acme, "https://hooks.acme.example/mes")
    path = f"/api/v1/webhook-endpoints/{endpoint['id']}"
    for _ in range(6):
        client.post(f"{path}/test", headers=auth(acme))
    cfg, metrics = app.extensions["mes_settings"], WebhookMetrics()
    from mes.webhook_worker import Outcome, claim, record

    for c in claim(db, replace(cfg, webhook_batch=4), utcnow()):  # four delivered, two left pending
        record(db, c, Outcome(200, 5, "ok", None), utcnow(), cfg, metrics)
    db.rollback()
    delivered = [d.event_id for d in db.scalars(select(WebhookDelivery).where(WebhookDelivery.state == "delivered"))]
    pending = [d.event_id for d in db.scalars(select(WebhookDelivery).where(WebhookDelivery.state == "pending"))]
    recent = delivered.pop()  # finished but inside the retention
    age(db, 31, *delivered, *pending)
    bare = enqueue_old_event(db)  # no endpoint wanted it

    assert svc_webhooks.prune_outbox(db, cfg.webhook_retention, batch=2, max_batches=1) == 2
    (job,) = [j for j in jobs(cfg) if j.name == "prune-webhook-outbox"]
    assert job.run(db) == "2 webhook events pruned"
    db.rollback()
    left = set(db.scalars(select(WebhookEvent.id)))
    assert left == {recent, *pending}
    assert bare not in left
    assert db.scalar(select(func.count()).select_from(WebhookAttempt)) == 1  # the recent one's
    # A single replay does not reach past the retention either.
    old_delivery = db.scalar(select(WebhookDelivery.id).where(WebhookDelivery.event_id == pending[0]))
    stale = client.post(f"{path}/deliveries/{old_delivery}/replay", headers=auth(acme))
    assert stale.status_code == 409 and "retention" in stale.get_json()["detail"]


def enqueue_old_event(db) -> int:
    from mes.services.webhooks import enqueue

    ev = enqueue(db, "order.status_changed", {"order_id": 1, "partner_id": None}, utcnow() - timedelta(days=40), [])
    db.commit()
    return ev.id


def test_the_retention_must_outlast_the_retries(monkeypatch):
    from mes.config import Settings

    monkeypatch.setenv("DATABASE_URL", "sqlite:///unused.db")
    monkeypatch.setenv("MES_WEBHOOK_RETENTION_DAYS", "3")
    with pytest.raises(RuntimeError, match="MES_WEBHOOK_RETENTION_DAYS must be longer than the retries"):
        Settings.from_env()
    monkeypatch.setenv("MES_WEBHOOK_RETENTION_DAYS", "14")
    assert Settings.from_env().webhook_retention == timedelta(days=14)


# ----------------------------------------------------------------------------------------------- tracing
def test_the_worker_traces_each_delivery_and_its_request_and_sends_no_trace_context(backend, client, accounts_,
                                                                                    receiver):
    """`mes deliver-webhooks` as it runs in production, exporting to an OTLP receiver: a span per delivery
    with the request's client span under it; the partner's receiver gets no traceparent."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mes.testing.otlp import OtlpReceiver

    acme = accounts_.partner()
    endpoint = register(client, acme, receiver.url)
    client.post(f"/api/v1/webhook-endpoints/{endpoint['id']}/test", headers=auth(acme))
    root = Path(__file__).resolve().parents[1]
    with OtlpReceiver() as otlp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(DATABASE_URL=backend.app_url, SECRET_KEY="worker-test", LOG_LEVEL="WARNING",
                   PYTHONPATH=f"{root / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}",
                   MES_WEBHOOK_ALLOW_HTTP="1", MES_WEBHOOK_ALLOWED_NETWORKS=",".join(LOOPBACK),
                   OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint, OTEL_TRACES_SAMPLER="always_on",
                   OTEL_SERVICE_NAME="mes-webhook-worker", OTEL_BSP_SCHEDULE_DELAY="200")
        done = subprocess.run([sys.executable, "-m", "mes", "deliver-webhooks", "--once"], env=env, cwd=root,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "1 delivered", done.stdout + done.stderr[-3000:]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(s.name == "webhook delivery" for s in list(otlp.spans)):
            time.sleep(0.2)
        (delivery,) = [s for s in list(otlp.spans) if s.name == "webhook delivery"]
        spans = otlp.wait_for_trace(delivery.trace_id, lambda found: any(s.name == "POST" for s in found))
    assert delivery.service == "mes-webhook-worker"
    assert delivery.attributes["mes.webhook.endpoint_id"] == endpoint["id"]
    assert delivery.attributes["mes.webhook.event_type"] == "webhook.test"
    assert delivery.attributes["mes.webhook.attempt"] == 1
    assert delivery.attributes["http.response.status_code"] == 200
    assert delivery.attributes["mes.webhook.outcome"] == "delivered"
    (request,) = [s for s in spans if s.name == "POST"]
    assert request.kind == 3 and request.parent_id == delivery.span_id  # CLIENT, under the delivery
    assert (request.attributes.get("http.status_code") or request.attributes.get("http.response.status_code")) == 200
    (_, headers, _) = receiver.received[0]
    assert not {"traceparent", "tracestate", "baggage"} & {k.lower() for k in headers}


def test_the_document_describes_every_event_sent_and_the_range_replay():
    from mes.api.routes import OPENAPI

    assert set(OPENAPI["webhooks"]) == {*rules.SUBSCRIBABLE, rules.TEST_EVENT}
    assert OPENAPI["components"]["schemas"]["WebhookEventType"]["enum"] == list(rules.SUBSCRIBABLE)
    for name, item in OPENAPI["webhooks"].items():
        body = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["type"] == {"const": name}
        assert {p["name"] for p in item["post"]["parameters"]} == {"webhook-id", "webhook-timestamp",
                                                                     "webhook-signature"}
    replay = OPENAPI["paths"]["/webhook-endpoints/{endpoint_id}/replay"]["post"]
    assert {"202", "404", "409", "422"} <= set(replay["responses"])
    assert replay["parameters"] == [{"$ref": "#/components/parameters/IdempotencyKeyReplay"}]
    assert "304" in OPENAPI["paths"]["/orders/{order_id}"]["get"]["responses"]
