"""Prometheus metrics: RED per URL rule (prometheus-flask-exporter), the API's requests per client, and
the business counters.

Under gunicorn with several workers PROMETHEUS_MULTIPROC_DIR is set, and every worker's
samples are merged at scrape time; without it (tests, `make dev`) each app has its own registry.

Requests per API client (`mes_api_client_requests_total{client,key_id,status}`): every answer of the API
blueprint, the 401s of the key check and flask-limiter's 429s included. The client set is not fixed, so
its labels are bounded: each process gives its own label to the first CLIENT_LABELS_PER_PROCESS clients
it serves and counts every later one as client="other"; a request without a valid key is client="none".
So a pool has at most processes x (CLIENT_LABELS_PER_PROCESS + 2) x statuses series, and a flood of made-up
keys adds none. key_id is the start of the key's SHA-256 (mes.services.accounts.key_id), the id
HAProxy logs (key=...) for its own refusals, which never reach the app.

Database time per request (`mes_request_db_seconds`): the time a request's SQL statements took (cursor
execute to its end, summed; from SQLAlchemy's engine events, for every engine), observed once per request
beside the latency histogram, health probes and /metrics left out. Waiting for a connection (the pool,
Pgpool-II's client slots) is not in it.
"""
from __future__ import annotations

import os
import re
import threading
import time
from datetime import date, datetime

from flask import Flask, current_app, g, has_request_context, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics
from sqlalchemy import event
from sqlalchemy.engine import Engine

from .domain.forecast import Promise, promise_status
from .domain.lifecycle import Status
from .services.orders import count_overdue
from .web import db_session, today

OVERDUE_REFRESH_SECONDS = 15
#: Lead time (receipt to shipping) in days, around the default 21-day promise (MES_PROMISE_LEAD_DAYS).
LEAD_TIME_BUCKETS_DAYS = (3, 7, 14, 21, 28, 35, 42, 63, 90)
DAY_SECONDS = 86400.0
#: API clients with a label of their own per process (MES_METRICS_CLIENT_LABELS overrides); the rest: "other".
CLIENT_LABELS_PER_PROCESS = 50
OTHER_CLIENT = "other"
NO_CLIENT = "none"
#: Database time of one request, in seconds (the latency histogram's range, from a millisecond).
DB_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_UNTIMED = re.compile(r"^/metrics$|^/healthz/")


class BoundedLabels:
    """Label values of an open set, at most `limit` of them: the first `limit` distinct values keep their
    own, every later one is `other`. Per process (and thread-safe): what bounds the series a process
    writes, whatever its clients send."""

    def __init__(self, limit: int, other=OTHER_CLIENT):
        self.limit, self.other = limit, other
        self._seen: set = set()
        self._lock = threading.Lock()

    def __call__(self, value):
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen or len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return self.other


class ClientMetrics:
    """Requests per API client and status: which partner is hammering us (module docstring)."""

    def __init__(self, registry: CollectorRegistry | None, limit: int = CLIENT_LABELS_PER_PROCESS):
        self.requests = Counter(
            "mes_api_client_requests_total",
            "API requests per client (its name and key id; 'other' beyond the per-process label limit, "
            "'none' without a valid key) and HTTP status", ["client", "key_id", "status"], registry=registry)
        self._labels = BoundedLabels(limit, other=(OTHER_CLIENT, OTHER_CLIENT))

    def observe(self, client: str | None, key_id: str | None, status: int) -> None:
        name, kid = self._labels((client, key_id)) if client else (NO_CLIENT, NO_CLIENT)
        self.requests.labels(client=name, key_id=kid, status=str(status)).inc()


class BusinessMetrics:
    def __init__(self, registry: CollectorRegistry | None):
        self.orders_received = Counter(
            "mes_orders_received_total", "Orders accepted through the API (replays not counted)",
            registry=registry)
        self.transitions = Counter(
            "mes_status_transitions_total", "Order status changes", ["from_status", "to_status"],
            registry=registry)
        self.overdue = Gauge(
            "mes_orders_overdue", "Open orders past their promised date, refreshed at scrape time",
            multiprocess_mode="mostrecent", registry=registry)
        self.shipped = Counter(
            "mes_orders_shipped_total",
            "Orders shipped, by promise: met (shipped on or before the promised date, UTC calendar) or missed",
            ["promise"], registry=registry)
        for outcome in (Promise.MET, Promise.MISSED):  # both series exist from the start, at 0
            self.shipped.labels(promise=outcome.value)
        self.lead_time = Histogram(
            "mes_order_lead_time_days", "Days from an order's receipt to its shipping, observed when it ships",
            buckets=LEAD_TIME_BUCKETS_DAYS, registry=registry)
        self.db_time = Histogram(
            "mes_request_db_seconds", "Time a request's SQL statements took, summed (no connection wait)",
            buckets=DB_TIME_BUCKETS, registry=registry)
        self._overdue_at = 0.0
        self.clients = ClientMetrics(registry, int(os.environ.get("MES_METRICS_CLIENT_LABELS",
                                                                  CLIENT_LABELS_PER_PROCESS)))

    def order_shipped(self, created_at: datetime, shipped_at: datetime, promised: date) -> None:
        """An order just shipped: its promise kept or not (mes.domain.forecast's rule), and its lead time."""
        outcome = promise_status(Status.SHIPPED, promised, shipped_at.date(), projected=None,
                                 shipped_on=shipped_at.date(), margin_days=0)
        self.shipped.labels(promise=outcome.value).inc()
        self.lead_time.observe(max((shipped_at - created_at).total_seconds(), 0.0) / DAY_SECONDS)

    def refresh_overdue(self, session, today) -> None:
        if time.monotonic() - self._overdue_at >= OVERDUE_REFRESH_SECONDS:
            self.overdue.set(count_overdue(session, today))
            self._overdue_at = time.monotonic()


@event.listens_for(Engine, "before_cursor_execute")
def _statement_started(conn, cursor, statement, parameters, context, executemany):
    if context is not None and has_request_context():
        context._mes_started = time.perf_counter()


@event.listens_for(Engine, "after_cursor_execute")
def _statement_done(conn, cursor, statement, parameters, context, executemany):
    started = getattr(context, "_mes_started", None)
    if started is not None:  # a statement that failed is not timed (its error ends the request anyway)
        g._mes_db_seconds = g.get("_mes_db_seconds", 0.0) + time.perf_counter() - started


def init_metrics(app: Flask, pool: str) -> BusinessMetrics:
    options = dict(group_by="url_rule", default_labels={"pool": pool},
                   excluded_paths=["^/metrics$", "^/healthz/"])
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        GunicornInternalPrometheusMetrics(app, **options)
        business = BusinessMetrics(None)  # samples go to the shared files; the scrape collects them
    else:
        registry = CollectorRegistry(auto_describe=True)
        PrometheusMetrics(app, registry=registry, **options)
        business = BusinessMetrics(registry)

    @app.before_request
    def _refresh_gauges():
        if request.path == "/metrics":
            business.refresh_overdue(db_session(), today())

    @app.after_request
    def _per_request(response):
        if request.blueprint == "api":  # only where the public pool's API is served
            holder = g.get("client")
            business.clients.observe(holder.actor.name if holder else None, g.get("key_id"), response.status_code)
        if not _UNTIMED.match(request.path):
            business.db_time.observe(g.get("_mes_db_seconds", 0.0))
        return response

    return business


def business_metrics() -> BusinessMetrics:
    return current_app.extensions["mes_metrics"]
