"""What the terminal's one field takes: a scan or typed text naming an order.

An order's label carries a Code 128 barcode of `MES-<id>`; operators also type `#123`, `123`, or the
partner's reference (which may be all digits too). Exact hits open the order; anything else is a
case-insensitive prefix of a reference.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import inputs
from .errors import ValidationFailed

BARCODE_PREFIX = "MES-"
TERM_MAX_LENGTH = 64
_ORDER = re.compile(r"(?:MES-|#)?([0-9]{1,19})", re.IGNORECASE)


def barcode_value(order_id: int) -> str:
    return f"{BARCODE_PREFIX}{order_id}"


@dataclass(frozen=True)
class Scan:
    term: str                 # as scanned or typed, trimmed
    order_id: int | None      # the order it names, when it can name one
    only_an_order: bool       # MES-123 or #123: never a reference


def parse_scan(raw: str | None) -> Scan:
    """The term, and the order id it may name. Surrounding whitespace (a scanner's Enter or Tab) is
    no part of it."""
    term = (raw or "").strip()
    if not term:
        raise ValidationFailed("Scan a label or type an order number or reference.",
                               errors=[{"field": "q", "message": "is empty"}])
    if len(term) > TERM_MAX_LENGTH:
        raise ValidationFailed(f"At most {TERM_MAX_LENGTH} characters.",
                               errors=[{"field": "q", "message": f"at most {TERM_MAX_LENGTH} characters"}])
    try:
        inputs.check_text(term)
    except ValueError as err:
        raise ValidationFailed(str(err), errors=[{"field": "q", "message": str(err)}]) from None
    match = _ORDER.fullmatch(term)
    order_id = None
    if match:
        try:
            order_id = inputs.parse_row_id(match.group(1))
        except ValueError:
            order_id = None
    return Scan(term, order_id, bool(match) and not term.isdigit())


def like_prefix(term: str) -> str:
    """A LIKE pattern for `term` as a prefix, its own wildcards escaped (with backslash)."""
    return term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
