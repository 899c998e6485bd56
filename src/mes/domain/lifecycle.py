"""The order lifecycle: which status may follow which, enforced on the server."""
from __future__ import annotations

from enum import StrEnum

from .errors import InvalidTransition, ValidationFailed


class Status(StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    IN_PRODUCTION = "in_production"
    QUALITY_CHECK = "quality_check"
    PACKED = "packed"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


S = Status
TRANSITIONS: dict[Status, tuple[Status, ...]] = {
    S.RECEIVED: (S.QUEUED, S.CANCELLED),
    S.QUEUED: (S.IN_PRODUCTION, S.CANCELLED),
    S.IN_PRODUCTION: (S.QUALITY_CHECK,),
    S.QUALITY_CHECK: (S.PACKED, S.IN_PRODUCTION),  # back to production is rework
    S.PACKED: (S.SHIPPED,),
    S.SHIPPED: (S.DELIVERED,),
    S.DELIVERED: (),
    S.CANCELLED: (),
}

#: Statuses the factory still has to work on; the operator queue shows these.
OPEN_STATUSES: tuple[Status, ...] = (S.RECEIVED, S.QUEUED, S.IN_PRODUCTION, S.QUALITY_CHECK, S.PACKED)
#: After these the promised date no longer matters: the order has left or died.
FINISHED_STATUSES: tuple[Status, ...] = (S.SHIPPED, S.DELIVERED, S.CANCELLED)

#: Words for the buttons of the operator UI, one per target status.
ACTION_LABELS: dict[Status, str] = {
    S.QUEUED: "Queue for production",
    S.IN_PRODUCTION: "Start production",
    S.QUALITY_CHECK: "Send to quality check",
    S.PACKED: "Pass QC and pack",
    S.SHIPPED: "Ship",
    S.DELIVERED: "Confirm delivery",
    S.CANCELLED: "Cancel order",
}


def parse_status(value: str) -> Status:
    """Turn user input into a Status, or explain which values exist."""
    try:
        return Status(value)
    except ValueError:
        raise ValidationFailed(
            f"Unknown status {value!r}.",
            errors=[{"field": "status", "message": "must be one of " + ", ".join(s.value for s in Status)}],
        ) from None


def is_rework(current: Status, target: Status) -> bool:
    return current is S.QUALITY_CHECK and target is S.IN_PRODUCTION


def check_transition(current: Status, target: Status, reason: str | None = None) -> None:
    """Raise unless `current -> target` is a lifecycle edge (rework needs a reason)."""
    allowed = TRANSITIONS[current]
    if target not in allowed:
        raise InvalidTransition(
            f"An order in status {current.value!r} cannot move to {target.value!r}.",
            current_status=current.value,
            allowed_transitions=[s.value for s in allowed],
        )
    if is_rework(current, target) and not (reason and reason.strip()):
        raise ValidationFailed(
            "Sending an order back to production (rework) needs a reason.",
            errors=[{"field": "reason", "message": "required for rework"}],
        )
