"""Prometheus metrics: RED per URL rule (prometheus-flask-exporter) and the business counters.

Under gunicorn with several workers PROMETHEUS_MULTIPROC_DIR is set, and every worker's
samples are merged at scrape time; without it (tests, `make dev`) each app has its own registry.
"""
from __future__ import annotations

import os
import time

from flask import Flask, current_app, request
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

from .services.orders import count_overdue
from .web import db_session, today

OVERDUE_REFRESH_SECONDS = 15


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
        self._overdue_at = 0.0

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
