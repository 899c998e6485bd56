"""The rate-limit headers of the API, as the README and the OpenAPI document promise them.

flask-limiter's own headers give the reset as an epoch time and add Retry-After to every answer; ours
give the seconds until the window resets, and Retry-After only on a 429 (errors.py sets it on a 503).
"""
from __future__ import annotations

import logging
import math
import time

from flask import Response

from ..extensions import limiter
from . import bp

log = logging.getLogger("mes.rate_limits")


def seconds_until(reset_at: float, now: float, window: int) -> int:
    """Whole seconds left until `reset_at` (rounded up: a client that waits them is not refused), never
    more than the window (the storage keeps the reset time in whole seconds, a second late)."""
    return min(window, max(0, math.ceil(reset_at - now)))


@bp.after_request
def rate_limit_headers(response: Response) -> Response:
    current = limiter.current_limit
    if current is None:  # not counted: the OpenAPI document, or refused before the limiter (401)
        return response
    try:
        reset_in = seconds_until(current.reset_at, time.time(), current.limit.get_expiry())
        remaining = current.remaining
    except Exception as exc:  # the storage went away since the check: the answer goes out without them
        log.warning("rate-limit headers left out", extra={"error": type(exc).__name__})
        return response
    response.headers["RateLimit-Limit"] = str(current.limit.amount)
    response.headers["RateLimit-Remaining"] = str(remaining)
    response.headers["RateLimit-Reset"] = str(reset_in)
    if response.status_code == 429:
        response.headers["Retry-After"] = str(max(1, reset_in))
    return response
