"""Shipments: what left the factory for an order, with which carrier, under which tracking number.

An order may leave in several shipments (partial shipments). The first is recorded when the operator
ships the order: it moves from packed to shipped in the same step. More may follow while the order is
shipped, until everything shippable has left; once its delivery is confirmed nothing more is shipped.
The order's shipped quantity is the sum of its shipments.

What may be shipped is what was made (mes.domain.production), never more than was ordered. An order
whose production was never recorded may ship up to the quantity ordered: the records are the floor's
tally, not a gate the factory had before them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from . import inputs
from .errors import Conflict, ValidationFailed
from .lifecycle import Status

MAX_CARRIER = 64
MAX_TRACKING_NUMBER = 64
MAX_TRACKING_URL = 500
MAX_PACKAGES = 10_000
#: Statuses in which a shipment can be recorded: packed (it ships the order) and shipped (a further one).
SHIPPING_STATUSES: tuple[Status, ...] = (Status.PACKED, Status.SHIPPED)

_DIGITS = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class Shipment:
    """A shipment that passed the rules, ready to be stored."""

    carrier: str
    tracking_number: str | None
    tracking_url: str | None
    packages: int
    quantity: int


def shippable(ordered: int, produced: int, production_recorded: bool) -> int:
    """How many pieces may leave in all: those made, at most those ordered (see the module's docstring)."""
    return min(ordered, produced) if production_recorded else ordered


def check_may_ship(status: Status) -> None:
    """Shipments are recorded on packed orders (shipping them) and on shipped ones (partial shipments)."""
    if status not in SHIPPING_STATUSES:
        raise Conflict(f"An order in status {status.value!r} takes no shipment: it ships once packed, "
                       "and nothing more leaves once its delivery is confirmed.", current_status=status.value)


def parse(*, carrier: object, tracking_number: object = None, tracking_url: object = None, packages: object = 1,
          quantity: object, left: int) -> Shipment:
    """A shipment from what the operator typed, or one error naming every wrong field.

    `left` is how many pieces may still leave (shippable less shipped)."""
    errors: list[dict] = []
    name = _text(carrier, "carrier", MAX_CARRIER, errors, required=True)
    number = _text(tracking_number, "tracking_number", MAX_TRACKING_NUMBER, errors)
    url = _url(tracking_url, errors)
    boxes = _count(packages, "packages", errors, high=MAX_PACKAGES)
    pieces = _count(quantity, "quantity", errors)
    if pieces is not None and pieces > left:
        errors.append({"field": "quantity", "message": f"must be at most {left} (the pieces not shipped yet)" if left
                       else "is too many: every piece made has left already"})
        pieces = None
    if boxes is not None and pieces is not None and boxes > pieces:
        errors.append({"field": "packages", "message": f"must not be more than the pieces ({boxes} for {pieces})"})
    if errors:
        raise ValidationFailed("Check the shipment: " + "; ".join(
            f"{e['field'].replace('_', ' ')} {e['message']}" for e in errors) + ".", errors=errors)
    return Shipment(carrier=name, tracking_number=number, tracking_url=url, packages=boxes, quantity=pieces)


def _text(value: object, field: str, max_length: int, errors: list[dict], *, required: bool = False) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            errors.append({"field": field, "message": "is required"})
        return None
    if not isinstance(value, str):
        errors.append({"field": field, "message": "must be text"})
        return None
    value = value.strip()
    try:
        inputs.check_text(value)
    except ValueError as err:
        errors.append({"field": field, "message": str(err)})
        return None
    if len(value) > max_length:
        errors.append({"field": field, "message": f"must be at most {max_length} characters"})
        return None
    return value


def _url(value: object, errors: list[dict]) -> str | None:
    """A tracking link partners can open safely: https, with a host, no spaces."""
    text = _text(value, "tracking_url", MAX_TRACKING_URL, errors)
    if text is None:
        return None
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme.lower() != "https" or not host or " " in text or parts.username:
        errors.append({"field": "tracking_url", "message": "must be an https:// link to the carrier's tracking page"})
        return None
    return text


def _count(value: object, field: str, errors: list[dict], high: int | None = None) -> int | None:
    """A positive whole number, as an int or as ASCII digits typed or scanned."""
    if isinstance(value, str):
        value = value.strip()
        if not value:
            errors.append({"field": field, "message": "is required"})
            return None
        if not _DIGITS.fullmatch(value):
            errors.append({"field": field, "message": "must be a whole number"})
            return None
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append({"field": field, "message": "must be a whole number"})
        return None
    if value < 1:
        errors.append({"field": field, "message": "must be at least 1"})
        return None
    if high is not None and value > high:
        errors.append({"field": field, "message": f"must be at most {high}"})
        return None
    return value
