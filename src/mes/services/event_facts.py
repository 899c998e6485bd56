"""What a partner may read of an order event and of a shipment: one rendering for the status-change
feed (mes.api.render) and the webhooks' payloads (mes.services.webhooks), so that the shop floor's notes
stay inside in both (mes.domain.disclosure)."""
from __future__ import annotations

from ..domain.actors import is_client_label
from ..domain.disclosure import partner_reason
from ..domain.holds import EventKind
from ..domain.lifecycle import Status
from ..models import OrderEvent, Shipment, iso


def shipment_facts(shipment: Shipment) -> dict:
    """A shipment as partners see it: the carrier's facts, never the name of the operator who recorded it."""
    return {
        "id": shipment.id,
        "carrier": shipment.carrier,
        "tracking_number": shipment.tracking_number,
        "tracking_url": shipment.tracking_url,
        "packages": shipment.packages,
        "quantity": shipment.quantity,
        "shipped_at": iso(shipment.created_at),
    }


def event_facts(event: OrderEvent, reference: str, shipments: list[Shipment] | None = None) -> dict:
    """An order event as every API key sees it: whose order it is (partner_id and the partner's reference,
    so that a reader of every partner's events needs no lookup), the shop floor's notes replaced; a hold or
    release carries its reason code's label, the internal note stays inside; every event says the order's
    promise status before and after it and the estimate after it. A change to shipped carries the
    shipments recorded with it."""
    kind = event.kind or EventKind.STATUS.value
    if kind == EventKind.STATUS.value:
        current = Status(event.from_status) if event.from_status else None
        reason = partner_reason(current, Status(event.to_status), event.reason,
                                written_by_client=is_client_label(event.actor))
    elif kind == EventKind.PROMISE.value:
        reason = event.reason  # written in partners' words (mes.domain.forecast.partner_reason)
    else:
        reason = event.reason_code.label if event.reason_code else None
    return {
        "order_id": event.order_id,
        "partner_id": event.partner_id,
        "reference": reference,
        "from_status": event.from_status,
        "to_status": event.to_status,
        "status_version": event.status_version,
        "reason": reason,
        "previous_promise_status": event.from_promise,
        "promise_status": event.to_promise,
        "estimated_completion": iso(event.estimated_completion) if event.estimated_completion else None,
        "occurred_at": iso(event.created_at),
    } | ({"shipments": [shipment_facts(s) for s in shipments]} if shipments is not None else {})
