"""What the service accepts from outside as text, integers, instants and JSON: plain rules, no Flask.

Every value a client or an operator sends passes one of these before it reaches a query, so that
input the database cannot store or compare (a NUL, a number beyond 64 bits, an instant beyond year
9999 once moved to UTC) is refused as the client's mistake instead of failing as ours. Each parser
raises ValueError with a message that reads after the field's name ("... must be ...").
"""
from __future__ import annotations

import re
from datetime import date, datetime, timezone

#: Ids are PostgreSQL BIGINTs.
MAX_ROW_ID = 2**63 - 1
#: JSON bodies are flat objects; anything nested deeper than this is refused before it is parsed.
MAX_JSON_DEPTH = 16

# One line of text (a product, a login): no control characters at all. Free text (notes, reasons)
# may also hold tabs and line breaks. Lone surrogates cannot be encoded as UTF-8.
_SINGLE_LINE_BAD = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_MULTI_LINE_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
#: The same rules as JSON Schema patterns (ECMA-262), for the OpenAPI document.
SINGLE_LINE_PATTERN = r"^[^\x00-\x1F\x7F]*$"
MULTI_LINE_PATTERN = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F\x7F]*$"
#: A partner's own order reference: an identifier, compared exactly (case included), never free text.
REFERENCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"
MAX_REFERENCE_LENGTH = 64

_DIGITS = re.compile(r"[0-9]{1,19}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# RFC 3339 date-time, ASCII digits only, with a zone (Z or +hh:mm); `+` is `%2B` in a query string.
_INSTANT = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]+)?"
                      r"([Zz]|[+-][0-9]{2}:[0-9]{2})")
# A string token may also run to the end of the text: every match then succeeds, so the scan stays
# linear even on a body of unterminated strings.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)


def check_text(value: str, *, multiline: bool = False) -> str:
    """The value itself, unless it holds characters no field may hold (NUL and other controls)."""
    if (_MULTI_LINE_BAD if multiline else _SINGLE_LINE_BAD).search(value):
        allowed = " except tabs and line breaks" if multiline else ""
        raise ValueError(f"must not contain control characters (such as NUL){allowed}")
    return value


def parse_int(raw: str, low: int, high: int) -> int:
    """A decimal integer written with ASCII digits (not `²` or `٣`, which Python's int() reads)."""
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise ValueError(f"must be an integer from {low} to {high}")
    return int(raw)


def parse_instant(raw: str, *, clamp: bool = False) -> datetime:
    """An RFC 3339 date-time with a zone, as an aware datetime in UTC.

    Near the ends of the calendar an offset can move a valid date-time past year 9999 or before
    year 1 once in UTC. With `clamp` (a filter: "changed since") such an instant becomes the last or
    first one we can store, which filters exactly alike; without it (a cursor) it is refused."""
    match = _INSTANT.fullmatch(raw)
    if not match:
        raise ValueError("must be an RFC 3339 date-time with a zone, e.g. 2026-01-31T12:00:00Z "
                         "(write + as %2B in a query string)")
    day, time, fraction, zone = match.groups()
    fraction = (fraction or "")[:7]  # microseconds are as precise as we store
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        value = datetime.fromisoformat(f"{day}T{time}{fraction}{zone}")
    except ValueError:
        raise ValueError("must be a real date and time, with an offset under 24 hours") from None
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        if not clamp:
            raise ValueError("must lie between years 1 and 9999 once in UTC") from None
        edge = datetime.max if value.year == datetime.max.year else datetime.min
        return edge.replace(tzinfo=timezone.utc)


def parse_day(raw: str) -> date:
    """A calendar date, YYYY-MM-DD."""
    try:
        if _DAY.fullmatch(raw):
            return date.fromisoformat(raw)
    except ValueError:
        pass
    raise ValueError("must be a date, YYYY-MM-DD")


def parse_row_id(raw: str) -> int:
    """An order id as typed by a person (the queue's search box)."""
    return parse_int(raw, 1, MAX_ROW_ID)


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when arrays and objects nest deeper than `limit` (strings are skipped, not counted).

    Checked before parsing, because the parser recurses once per level and a 2 KB body of brackets
    reaches Python's recursion limit."""
    depth = 0
    for token in _JSON_TOKENS.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False
