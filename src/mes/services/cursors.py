"""Opaque pagination cursors: URL-safe base64 of a small JSON list, decoded with a type per position.

A cursor comes back from the client, so it is input like any other: each value is checked against
what its position holds (a row id, an instant, a day, a priority) before it reaches a query.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from ..domain import inputs
from ..domain.errors import BadQuery
from ..domain.priority import Priority

#: Longer than any cursor we issue (a few dozen characters), short enough to decode cheaply.
MAX_LENGTH = 512
#: The alphabet of URL-safe base64 without padding, as the OpenAPI document declares it.
PATTERN = r"^[A-Za-z0-9_-]+$"
_ALPHABET = re.compile(PATTERN)
_INVALID = "The cursor is not valid; use next_cursor from a previous page."

Field = Callable[[Any], Any]


class BadCursor(BadQuery):
    slug, title = "bad-cursor", "Invalid cursor"


def encode(*values) -> str:
    raw = json.dumps(list(values), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, *fields: Field) -> list:
    """The cursor's values, each converted by the field of its position; a 400 for anything else."""
    if len(cursor) > MAX_LENGTH or not _ALPHABET.match(cursor):
        raise BadCursor(_INVALID)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
        if not isinstance(values, list) or len(values) != len(fields):
            raise ValueError("wrong shape")
        return [field(value) for field, value in zip(fields, values)]
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise BadCursor(_INVALID) from None


def row_id(value: Any) -> int:
    """An id (or 0, before the first row); JSON's true and false are not numbers here."""
    if type(value) is not int or not 0 <= value <= inputs.MAX_ROW_ID:
        raise ValueError("not a row id")
    return value


def priority(value: Any) -> int:
    if type(value) is not int or value not in {int(p) for p in Priority}:
        raise ValueError("not a priority")
    return value


def instant(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("not an instant")
    return inputs.parse_instant(value)


def day(value: Any) -> date:
    if not isinstance(value, str):
        raise ValueError("not a day")
    return inputs.parse_day(value)
