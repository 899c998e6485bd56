"""The webhook delivery worker (`mes deliver-webhooks`): claims due deliveries, signs and sends them, and
records each attempt, the retry or the endpoint's failing.

A hand-written claim loop rather than a job library: procrastinate 3.10 and PgQueuer 1.6 (the well-kept
PostgreSQL ones on PyPI) run on psycopg 3 or asyncpg with their own job tables, so an event could not be
queued in the change's own psycopg2 transaction and the outbox would still need a relay into theirs. The
outbox rows already are the queue, and one `SELECT ... FOR UPDATE SKIP LOCKED` in a write transaction (which
Pgpool-II sends to the primary) is all the locking they would add, with no LISTEN/NOTIFY to lose in a failover.

A pass claims a batch, at most `webhook_endpoint_batch` deliveries of any one endpoint (a partner whose
receiver hangs or whose backlog is deep cannot hold up the others), and sends the whole batch at once from
a thread pool, each send ending within its connect and read timeouts.

Claiming moves a row's `next_attempt_at` a lease ahead (longer than a delivery can take) under a fresh
claim token and commits; the HTTP request runs outside any transaction, and its outcome is written only
while the token is still the row's. Several workers never hold one delivery at once; a worker that dies
mid-delivery leaves the row to be claimed again once its lease ends (at least once, never lost).

The address guard resolves the host and refuses the delivery if any address is not allowed; as requests
resolves it once more to connect, the connection itself checks its peer's address again before anything is
sent (a name whose answers changed in between gets nothing).

Tracing (`init_tracing`): each delivery is a span (endpoint, event type, attempt, status code) with the
HTTP request as its child (opentelemetry-instrumentation-requests). No trace context goes to the receiver:
partners' receivers are outside our systems, our trace ids mean nothing there and would only hand out
internal identifiers in headers the signature does not cover, so the adapter drops the propagation
headers the instrumentation adds.
"""
from __future__ import annotations

import logging
import random
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError
from opentelemetry import trace
from opentelemetry.propagate import get_global_textmap
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, lazyload, sessionmaker
from standardwebhooks.webhooks import Webhook

from .config import Settings
from .db import begin_write
from .metrics import BoundedLabels
from .domain import webhooks as rules
from .models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent, iso, utcnow
from .services.webhooks import enqueue, signing_secrets

log = logging.getLogger("mes.webhooks")
LEASE_MARGIN = timedelta(seconds=30)
#: Seconds from an event's creation to its first successful delivery.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 3 * 86400)
USER_AGENT = "mes-webhooks/1"
ENDPOINT_LABELS = 200  # endpoints with a failure series of their own, per worker
_tracer = trace.get_tracer("mes.webhooks")  # the process's provider once tracing is set up


def init_tracing() -> None:
    """Export the worker's spans like the app's (mes.tracing: OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is
    set; the service name from OTEL_SERVICE_NAME) and trace its outgoing requests. Only when spans are
    exported: the requests instrumentation is process-wide and injects a trace context into every request
    of the process, which a process that merely runs one pass (`--once` from another program) must not get."""
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    from .tracing import export_endpoint, tracer_provider

    provider = tracer_provider("mes-webhook-worker")
    if not export_endpoint():
        return
    if not RequestsInstrumentor().is_instrumented_by_opentelemetry:
        RequestsInstrumentor().instrument(tracer_provider=provider)


class WebhookMetrics:
    """The worker's metrics (its own registry, served by `--metrics-port`). The backlog age is a gauge
    the worker sets after each pass, not an exporter query: it is the age of the oldest due delivery."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "mes_webhook_deliveries_total", "Delivery attempts by outcome: delivered, retry (failed, tried again "
            "later), failed (retries ran out), refused (the address guard sent nothing)", ["outcome"],
            registry=self.registry)
        for outcome in ("delivered", "retry", "failed", "refused"):
            self.deliveries.labels(outcome=outcome)
        self.latency = Histogram(
            "mes_webhook_delivery_latency_seconds", "From an event's creation to its first successful delivery "
            "to an endpoint (replays left out)", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.backlog_age = Gauge(
            "mes_webhook_backlog_age_seconds", "Age of the oldest delivery that is due and not yet delivered "
            "(0: none), set after each pass", registry=self.registry)
        self.failures = Counter(
            "mes_webhook_endpoint_failures_total", "Failed delivery attempts per endpoint id (the first "
            f"{ENDPOINT_LABELS} endpoints a worker sees keep their own label, later ones count as 'other')",
            ["endpoint"], registry=self.registry)
        self.attempts = Counter(
            "mes_webhook_endpoint_attempts_total", "Delivery attempts per endpoint id, whatever their outcome (the "
            "denominator of an endpoint's failure ratio; labels as mes_webhook_endpoint_failures_total)",
            ["endpoint"], registry=self.registry)
        self._endpoint_label = BoundedLabels(ENDPOINT_LABELS)
        self.endpoints_failing = Counter(
            "mes_webhook_endpoints_failing_total", "Endpoints marked failing (a delivery ran out of retries)",
            registry=self.registry)


    def endpoint_label(self, endpoint_id: int) -> str:
        return self._endpoint_label(str(endpoint_id))


@dataclass
class Claimed:
    delivery_id: int
    claim: str
    endpoint_id: int
    url: str
    secrets: list[str]
    msg_id: str
    event_type: str
    payload: str
    event_created_at: datetime
    queued_at: datetime
    attempts: int
    replay: bool


@dataclass
class Outcome:
    status_code: int | None
    latency_ms: int | None
    excerpt: str | None
    error: str | None
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def lease(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.webhook_connect_timeout + settings.webhook_read_timeout) + LEASE_MARGIN


def fair_share(settings: Settings, now: datetime):
    """The ids of the oldest due deliveries, at most `webhook_endpoint_batch` of each endpoint: an
    endpoint with a deep backlog (or one that hangs until its timeouts) cannot fill a whole batch and make
    every other partner's events wait behind its own."""
    ranked = (select(WebhookDelivery.id, WebhookDelivery.next_attempt_at,
                     func.row_number().over(partition_by=WebhookDelivery.endpoint_id,
                                            order_by=(WebhookDelivery.next_attempt_at, WebhookDelivery.id))
                     .label("n"))
              .where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now).subquery())
    return (select(ranked.c.id).where(ranked.c.n <= settings.webhook_endpoint_batch)
            .order_by(ranked.c.next_attempt_at).limit(2 * settings.webhook_batch))


def claim(session: Session, settings: Settings, now: datetime) -> list[Claimed]:
    """Take up to a batch of due deliveries for this worker, a fair share of each endpoint (SKIP LOCKED:
    rows another worker is claiming are passed over, not waited for)."""
    begin_write(session)
    try:
        rows = list(session.scalars(
            # The due conditions again on the locked rows: a row another worker claimed (and committed)
            # after this statement's snapshot is re-checked on its new version here, not in the subquery.
            select(WebhookDelivery).where(WebhookDelivery.id.in_(fair_share(settings, now)),
                                          WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at).limit(settings.webhook_batch)
            .options(lazyload(WebhookDelivery.attempt_log))  # the log is not needed to send
            .with_for_update(skip_locked=True, of=WebhookDelivery)))
        claimed = []
        endpoints = {e.id: e for e in session.scalars(
            select(WebhookEndpoint).where(WebhookEndpoint.id.in_({r.endpoint_id for r in rows})))} if rows else {}
        until = now + lease(settings)
        for row in rows:
            endpoint = endpoints[row.endpoint_id]
            row.claim, row.next_attempt_at = uuid.uuid4().hex, until
            claimed.append(Claimed(row.id, row.claim, endpoint.id, endpoint.url, signing_secrets(endpoint, now),
                                   row.event.msg_id, row.event.type, row.event.payload, row.event.created_at, row.created_at,
                                   row.attempts, row.replay))
        session.commit()
        return claimed
    except BaseException:
        session.rollback()
        raise


def signed_headers(c: Claimed, sent_at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers: one signature per secret that signs now, space-separated."""
    signatures = " ".join(Webhook(s).sign(c.msg_id, sent_at, c.payload) for s in c.secrets)
    return {"webhook-id": c.msg_id, "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signatures, "content-type": "application/json", "user-agent": USER_AGENT}


def refused_address(url: str, policy: rules.AddressPolicy) -> str | None:
    """Why this URL may not be sent to now (its scheme, or an address its host resolves to), or None."""
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and policy.allow_http):
        return f"scheme {parts.scheme!r} is not allowed"
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        return f"cannot resolve {parts.hostname}: {err}"
    for info in infos:
        address = info[4][0].split("%")[0]
        if not rules.address_allowed(address, policy):
            return f"address {address} is not public and not allowed"
    return None


def send(http: requests.Session, c: Claimed, settings: Settings) -> Outcome:
    """POST the event once: no redirects followed, connect and read timeouts, the body read up to the
    excerpt's length."""
    why = refused_address(c.url, settings.webhook_address_policy)
    if why is not None:
        return Outcome(None, None, None, why, refused=True)
    started = time.monotonic()
    try:
        with http.post(c.url, data=c.payload.encode(), headers=signed_headers(c, utcnow()), allow_redirects=False,
                       stream=True, timeout=(settings.webhook_connect_timeout, settings.webhook_read_timeout)) as resp:
            body = resp.raw.read(settings.webhook_excerpt_bytes, decode_content=True) or b""
            latency = int((time.monotonic() - started) * 1000)
            return Outcome(resp.status_code, latency, rules.excerpt(body, settings.webhook_excerpt_bytes), None)
    except requests.RequestException as err:
        return Outcome(None, int((time.monotonic() - started) * 1000), None, f"{type(err).__name__}: {err}"[:500])


def record(session: Session, c: Claimed, outcome: Outcome, now: datetime, settings: Settings,
           metrics: WebhookMetrics, rng: random.Random | None = None) -> str:
    """Write the attempt and what follows from it; the outcome's name. Nothing is written when the claim
    was lost (the lease ran out and another worker took the row)."""
    attempts = c.attempts + 1
    values: dict = {"attempts": attempts, "last_status_code": outcome.status_code, "claim": None}
    failing = False
    if outcome.ok:
        name = "delivered"
        values.update(state="delivered", delivered_at=now, next_attempt_at=None)
    else:
        nxt = settings.webhook_retry_policy.next_attempt(attempts, c.queued_at, now, rng)
        if nxt is None:
            name, failing = "failed", True
            values.update(state="failed", next_attempt_at=None)
        else:
            name = "refused" if outcome.refused else "retry"
            values.update(next_attempt_at=nxt)
    begin_write(session)
    try:
        won = session.execute(update(WebhookDelivery).where(WebhookDelivery.id == c.delivery_id,
                                                             WebhookDelivery.claim == c.claim)
                              .values(**values).execution_options(synchronize_session=False)).rowcount == 1
        if not won:
            session.rollback()
            return "lost"
        session.add(WebhookAttempt(delivery_id=c.delivery_id, attempted_at=now, status_code=outcome.status_code,
                                   latency_ms=outcome.latency_ms, error=outcome.error,
                                   response_excerpt=outcome.excerpt))
        endpoint = session.get(WebhookEndpoint, c.endpoint_id)
        newly_failing = False
        if outcome.ok and endpoint.failing_since is not None:
            endpoint.failing_since = None
        if failing and endpoint.failing_since is None:
            endpoint.failing_since, newly_failing = now, True
            enqueue(session, rules.ENDPOINT_FAILING, {"endpoint_id": endpoint.id, "partner_id": endpoint.partner_id,
                                                      "url": endpoint.url, "since": iso(now)}, now, [])
        session.commit()
    except BaseException:
        session.rollback()
        raise
    metrics.deliveries.labels(outcome=name).inc()
    metrics.attempts.labels(endpoint=metrics.endpoint_label(c.endpoint_id)).inc()
    if not outcome.ok:
        metrics.failures.labels(endpoint=metrics.endpoint_label(c.endpoint_id)).inc()
    if outcome.ok and not c.replay:
        metrics.latency.observe(max((now - c.event_created_at).total_seconds(), 0.0))
    if newly_failing:
        metrics.endpoints_failing.inc()
        log.warning("webhook endpoint %s is failing: a delivery ran out of retries", c.endpoint_id)
    return name


def backlog_age(session: Session, now: datetime) -> float:
    """Seconds since the oldest due, undelivered delivery was queued (0 when none is due)."""
    oldest = session.scalar(select(func.min(WebhookDelivery.created_at)).where(
        WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now))
    session.rollback()
    return max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0


def _guarded(connection_class: type, pool_class: type, policy: rules.AddressPolicy) -> type:
    """A connection pool whose connections refuse a peer the policy does not allow, once connected and
    before a byte is sent."""
    class Connection(connection_class):
        def _new_conn(self):
            sock = super()._new_conn()
            peer = sock.getpeername()[0]
            if not rules.address_allowed(peer.split("%")[0], policy):
                sock.close()
                raise NewConnectionError(self, f"address {peer} is not public and not allowed")
            return sock

    return type(f"Guarded{pool_class.__name__}", (pool_class,), {"ConnectionCls": Connection})


class GuardedAdapter(HTTPAdapter):
    def __init__(self, policy: rules.AddressPolicy, connections: int = 10):
        self.policy = policy
        super().__init__(pool_maxsize=connections)

    def send(self, request, *args, **kwargs):
        """Send without the trace context the requests instrumentation added (see the module's doc)."""
        for name in get_global_textmap().fields:
            request.headers.pop(name, None)
        return super().send(request, *args, **kwargs)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _guarded(HTTPConnection, HTTPConnectionPool, self.policy),
            "https": _guarded(HTTPSConnection, HTTPSConnectionPool, self.policy)}


def http_session(policy: rules.AddressPolicy, connections: int = 10) -> requests.Session:
    """Connections that check their peer's address; no proxies from the environment (they would
    bypass the address guard), no stored cookies; up to `connections` kept per receiver (a batch is
    sent at once)."""
    http = requests.Session()
    http.trust_env = False
    adapter = GuardedAdapter(policy, connections)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


def _send_traced(http: requests.Session, c: Claimed, settings: Settings) -> tuple[Outcome, trace.Span]:
    """Send in a thread of the pool, inside the delivery's span (the HTTP request becomes its child);
    the span is ended by whoever records the outcome."""
    span = _tracer.start_span("webhook delivery", kind=SpanKind.INTERNAL, attributes={
        "mes.webhook.endpoint_id": c.endpoint_id, "mes.webhook.event_type": c.event_type,
        "mes.webhook.event_id": c.msg_id, "mes.webhook.attempt": c.attempts + 1, "mes.webhook.replay": c.replay})
    with trace.use_span(span, end_on_exit=False):
        return send(http, c, settings), span


def run_once(factory: sessionmaker, settings: Settings, metrics: WebhookMetrics, *, now: datetime | None = None,
             http: requests.Session | None = None, rng: random.Random | None = None,
             pool: ThreadPoolExecutor | None = None) -> dict[str, int]:
    """One pass: claim what is due at `now` (the wall clock by default; tests move it), send the batch at
    once (each delivery must end within its lease, which one slow receiver in a serial batch would
    exceed for the rest), record each outcome as it comes, in this thread (the session's)."""
    given = now
    http = http or http_session(settings.webhook_address_policy, settings.webhook_batch)
    counts: dict[str, int] = {}
    with ExitStack() as stack, factory() as session:
        if pool is None:
            pool = stack.enter_context(ThreadPoolExecutor(settings.webhook_batch, thread_name_prefix="webhook"))
        sending = {pool.submit(_send_traced, http, c, settings): c for c in claim(session, settings, given or utcnow())}
        for future in as_completed(sending):
            c, (outcome, span) = sending[future], future.result()
            try:
                name = record(session, c, outcome, given or utcnow(), settings, metrics, rng)
                if outcome.status_code is not None:
                    span.set_attribute("http.response.status_code", outcome.status_code)
                span.set_attribute("mes.webhook.outcome", name)
                if not outcome.ok:
                    span.set_status(StatusCode.ERROR, outcome.error or f"HTTP {outcome.status_code}")
            finally:
                span.end()
            counts[name] = counts.get(name, 0) + 1
        metrics.backlog_age.set(backlog_age(session, given or utcnow()))
    return counts


def serve(factory: sessionmaker, settings: Settings, metrics: WebhookMetrics,
          stop: threading.Event | None = None) -> None:
    """Deliver until SIGTERM or SIGINT (or `stop`); a database outage is waited out, not fatal."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    http = http_session(settings.webhook_address_policy, settings.webhook_batch)
    with ThreadPoolExecutor(settings.webhook_batch, thread_name_prefix="webhook") as pool:
        while not stop.is_set():
            try:
                counts = run_once(factory, settings, metrics, http=http, pool=pool)
            except DBAPIError as err:
                log.warning("webhook worker: database unavailable (%s); retrying", type(err.orig).__name__)
                stop.wait(max(settings.webhook_poll_seconds, 1.0))
                continue
            if not counts:
                stop.wait(settings.webhook_poll_seconds)
