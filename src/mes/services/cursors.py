"""Opaque pagination cursors: URL-safe base64 of a small JSON list."""
from __future__ import annotations

import base64
import json

from ..domain.errors import BadQuery


class BadCursor(BadQuery):
    slug, title = "bad-cursor", "Invalid cursor"


def encode(*values) -> str:
    raw = json.dumps(list(values), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, arity: int) -> list:
    """Return the values, or a 400 that says the cursor is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (ValueError, TypeError):
        raise BadCursor("The cursor is not valid; use next_cursor from a previous page.") from None
    if not isinstance(values, list) or len(values) != arity:
        raise BadCursor("The cursor is not valid; use next_cursor from a previous page.")
    return values
