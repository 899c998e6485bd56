"""JSON representations of orders and events, as the OpenAPI document describes them."""
from __future__ import annotations

from datetime import datetime

from ..domain import preconditions
from ..domain.actors import is_client_label
from ..domain.holds import EventKind
from ..domain.priority import Priority
from ..models import Order, OrderEvent, Shipment, iso
from ..services.event_facts import event_facts, shipment_facts


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
    return shipment_facts(shipment)


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
    """A feed item: its cursor and kind, and what partners read of the event (mes.services.event_facts)."""
    return {"cursor": cursor, "type": event.kind or EventKind.STATUS.value,
            **event_facts(event, reference, shipments)}


def etag(order_id: int, version: int) -> str:
    """The tag of an order's status (GET /orders/{id}/status)."""
    return preconditions.status_tag(order_id, version)


def order_etag(body: dict) -> str:
    """The tag of an order as rendered by order_json (a stored answer has no row to read it from)."""
    estimate = body.get("estimated_completion")
    return preconditions.order_tag(body["id"], body["status_version"], datetime.fromisoformat(body["updated_at"]),
                                   datetime.fromisoformat(estimate) if estimate else None)
