"""How a rate limit is shared out when it cannot be counted in one place."""
from __future__ import annotations

import math

from limits import parse_many


def share_of_limit(limit: str, processes: int) -> str:
    """One process's share of `limit` ("600/minute", or several separated by ';') when each of
    `processes` processes counts on its own: together they allow about the budget, not `processes`
    times it. Never below one request per window, so that no client is locked out entirely."""
    if processes <= 1:
        return limit
    return ";".join(f"{max(1, math.ceil(item.amount / processes))} per {item.multiples} {item.GRANULARITY.name}"
                    for item in parse_many(limit))
