"""Write-through cache of order status in Redis, never older than the last acknowledged change.

- The write path puts the new status after its transaction commits and before it answers.
- Every put compares versions inside Redis (one Lua script), so an older value (a slow writer,
  or a reader filling a miss) never overwrites a newer one.
- A miss is filled from the primary, never from a replica that may lag.
- Entries expire after `ttl` as a safety net only.
- Redis down: reads go to the database, writes still succeed. What a failed put leaves behind is
  settled from the database (mes.stale_status), not from this process's memory. Redis itself keeps
  no persistence (see group_vars), so a restarted Redis starts empty.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import redis

from .redis_client import RedisSkipped

log = logging.getLogger("mes.status_cache")

# KEYS[1] = entry; ARGV = version, payload, ttl. Set only if the stored version is older.
_PUT_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'v')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


@dataclass(frozen=True)
class StatusEntry:
    id: int
    partner_id: int
    status: str
    status_version: int
    updated_at: str  # ISO 8601, UTC


class StatusCache:
    """Status entries keyed by order id; `enabled` is False without Redis (the embedded default)."""

    def __init__(self, client: redis.Redis | None, *, ttl: int, prefix: str = "mes:status:"):
        self.client = client
        self.ttl = ttl
        self.prefix = prefix
        self._script = client.register_script(_PUT_IF_NEWER) if client is not None else None

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def key(self, order_id: int) -> str:
        return f"{self.prefix}{order_id}"

    def get(self, order_id: int) -> StatusEntry | None:
        """The cached entry, or None on a miss or when Redis is down."""
        if not self.enabled:
            return None
        try:
            raw = self.client.hget(self.key(order_id), "d")
        except redis.RedisError as exc:
            _failed(exc)
            return None
        return StatusEntry(**json.loads(raw)) if raw else None

    def put(self, entry: StatusEntry) -> bool:
        """Store the entry unless Redis has the same or a newer version. True when Redis has this
        version or a newer one afterwards; never raises."""
        if not self.enabled:
            return False
        try:
            self._script(keys=[self.key(entry.id)], args=[entry.status_version, json.dumps(asdict(entry)), self.ttl])
            return True
        except redis.RedisError as exc:
            _failed(exc)
            return False


def _failed(exc: Exception) -> None:
    if not isinstance(exc, RedisSkipped):  # logged once, when it failed
        log.warning("redis unavailable, status cache bypassed", extra={"error": str(exc)})
