"""The date the factory promises, and whether an order is late."""
from __future__ import annotations

from datetime import date, timedelta

from .errors import ValidationFailed
from .lifecycle import FINISHED_STATUSES, Status


def earliest_promise(received: date, lead_days: int) -> date:
    return received + timedelta(days=lead_days)


def promised_date(received: date, lead_days: int, requested: date | None) -> date:
    """Default lead time, or a later date the client asks for; never earlier."""
    earliest = earliest_promise(received, lead_days)
    if requested is None:
        return earliest
    if requested < earliest:
        raise ValidationFailed(
            f"The earliest date the factory can promise is {earliest.isoformat()}.",
            errors=[{"field": "promised_date", "message": f"must be {earliest.isoformat()} or later"}],
        )
    return requested


def is_overdue(status: Status, promised: date, today: date) -> bool:
    return status not in FINISHED_STATUSES and promised < today
