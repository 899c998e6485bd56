"""Query parameters of both pools, read through the rules of `mes.domain.inputs`.

Views ask for a parameter by name and kind; whatever cannot be used becomes a 400 naming the
parameter (problem+json on the API, the error page on the operator UI), never a value that
reaches a query.
"""
from __future__ import annotations

import re
from datetime import date, datetime

from flask import request

from .domain import inputs
from .domain.errors import BadQuery


def bad_query(name: str, message: str) -> BadQuery:
    return BadQuery(f"Query parameter {name} {message}.", errors=[{"field": name, "message": message}])


def integer(name: str, *, default: int | None, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return inputs.parse_int(raw, low, high)
    except ValueError as err:
        raise bad_query(name, str(err)) from None


def instant(name: str) -> datetime | None:
    """A date-time to filter by: one beyond the calendar's ends filters as the end itself."""
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return inputs.parse_instant(raw, clamp=True)
    except ValueError as err:
        raise bad_query(name, str(err)) from None


def day(name: str) -> date | None:
    """A calendar day, YYYY-MM-DD, between the years 2000 and 2999."""
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        value = date.fromisoformat(raw) if len(raw) == 10 and raw.isascii() else None
    except ValueError:
        value = None
    if value is None or not 2000 <= value.year <= 2999:
        raise bad_query(name, "must be a day as YYYY-MM-DD")
    return value


def choice(name: str, values: list[str]) -> str | None:
    raw = request.args.get(name)
    if raw is not None and raw not in values:
        raise bad_query(name, "must be one of " + ", ".join(values))
    return raw


def text(name: str, *, max_length: int) -> str | None:
    """Free text (a search term), stripped; None when absent or blank."""
    raw = request.args.get(name)
    if raw is None:
        return None
    if len(raw) > max_length:
        raise bad_query(name, f"must be at most {max_length} characters")
    try:
        return inputs.check_text(raw).strip() or None
    except ValueError as err:
        raise bad_query(name, str(err)) from None


def matching(name: str, pattern: str, *, max_length: int, what: str) -> str | None:
    """A value that must match `pattern` exactly as sent (an identifier: not stripped, case kept)."""
    raw = request.args.get(name)
    if raw is None:
        return None
    if not raw or len(raw) > max_length or not re.fullmatch(pattern, raw):
        raise bad_query(name, f"must be {what} of 1 to {max_length} characters")
    return raw


def cursor(name: str) -> str | None:
    """An opaque cursor; its content is checked where it is decoded (`mes.services.cursors`)."""
    raw = request.args.get(name)
    if raw is not None and not raw:
        raise bad_query(name, "must not be empty; leave it out to start from the beginning")
    return raw
