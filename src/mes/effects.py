"""What follows a committed change: the business metrics (and, later, caches). One place, so
that the API and the operator UI cannot drift apart in what they report."""
from __future__ import annotations

from .domain.lifecycle import Status
from .metrics import business_metrics
from .services.orders import StatusChanged


def order_created() -> None:
    metrics = business_metrics()
    metrics.orders_received.inc()
    metrics.transitions.labels(from_status="none", to_status=Status.RECEIVED.value).inc()


def status_changed(change: StatusChanged) -> None:
    business_metrics().transitions.labels(from_status=change.previous.value, to_status=change.order.status).inc()
