"""JSON representations of orders and events, as the OpenAPI document describes them."""
from __future__ import annotations

from datetime import datetime

from ..domain import preconditions
from ..domain.actors import is_client_label
from ..domain.disclosure import partner_reason
from ..domain.lifecycle import Status
from ..domain.holds import EventKind
from ..domain.priority import Priority
from ..models import Order, OrderEvent, Shipment, iso


def order_json(order: Order) -> dict:
    base = f"/api/v1/orders/{order.id}"
    return {
        "id": order.id,
        "reference": order.reference,
        "partner_id": order.partner_id,
        "product": order.product,
        "material": order.material,
        "quantity": order.quantity,
        "notes": order.notes,
        "priority": Priority(order.priority).label,
        "promised_date": order.promised_date.isoformat(),
        "status": order.status,
        "status_version": order.status_version,
        "created_at": iso(order.created_at),
        "updated_at": iso(order.updated_at),
        "hold": hold_json(order),
        "promise_status": order.promise_status,
        "estimated_completion": iso(order.projected_finish) if order.projected_finish else None,
        "shipped_quantity": sum(s.quantity for s in order.shipments),
        "shipments": [shipment_json(s) for s in order.shipments],
        "delivery": delivery_json(order),
        "links": {"self": base, "status": f"{base}/status", "shipments": f"{base}/shipments"},
    }


def shipment_json(shipment: Shipment) -> dict:
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


def delivery_json(order: Order) -> dict | None:
    """When the delivery was confirmed, and whether the partner or the factory confirmed it."""
    if order.delivered_at is None:
        return None
    by = "partner" if order.delivered_by and is_client_label(order.delivered_by) else "factory"
    return {"confirmed_at": iso(order.delivered_at), "confirmed_by": by}


def hold_json(order: Order) -> dict | None:
    """What partners see of a hold: since when and the reason's label, never the operator's note."""
    if order.hold_since is None:
        return None
    code = order.hold_reason
    return {"since": iso(order.hold_since), "reason_code": code.code, "reason": code.label}


def event_json(event: OrderEvent, reference: str, cursor: str, shipments: list[Shipment] | None = None) -> dict:
    """A status change as every API key sees it: whose order it is (partner_id and the partner's reference,
    so that a reader of every partner's feed needs no lookup), the shop floor's notes replaced
    (mes.domain.disclosure); a hold or release carries its reason code's label, the internal note stays
    inside; every event says the order's promise status before and after it and the estimate after it.
    A change to shipped carries the shipments recorded with it."""
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
        "cursor": cursor,
        "type": kind,
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
    } | ({"shipments": [shipment_json(s) for s in shipments]} if shipments is not None else {})


def etag(order_id: int, version: int) -> str:
    """The tag of an order's status (GET /orders/{id}/status)."""
    return preconditions.status_tag(order_id, version)


def order_etag(body: dict) -> str:
    """The tag of an order as rendered by order_json (a stored answer has no row to read it from)."""
    return preconditions.order_tag(body["id"], body["status_version"], datetime.fromisoformat(body["updated_at"]))
