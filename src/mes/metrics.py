"""Prometheus metrics: RED per URL rule (prometheus-flask-exporter) and the business counters.

Under gunicorn with several workers PROMETHEUS_MULTIPROC_DIR is set, and every worker's
samples are merged at scrape time; without it (tests, `make dev`) each app has its own registry.
"""
from __future__ import annotations

import os
import time
from datetime import date, datetime

from flask import Flask, current_app, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

from .domain.forecast import Promise, promise_status
from .domain.lifecycle import Status
from .services.orders import count_overdue
from .web import db_session, today

OVERDUE_REFRESH_SECONDS = 15
#: Lead time (receipt to shipping) in days, around the default 21-day promise (MES_PROMISE_LEAD_DAYS).
LEAD_TIME_BUCKETS_DAYS = (3, 7, 14, 21, 28, 35, 42, 63, 90)
DAY_SECONDS = 86400.0


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
        self._overdue_at = 0.0

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

    return business


def business_metrics() -> BusinessMetrics:
    return current_app.extensions["mes_metrics"]
