"""Write-through cache of order status in Redis, never older than the last acknowledged change.

- The write path puts the new status after its transaction commits and before it answers.
- Every put compares versions inside Redis (one Lua script), so an older value (a slow writer,
  or a reader filling a miss) never overwrites a newer one.
- A miss is filled from the primary, never from a replica that may lag.
- Entries expire after `ttl` as a safety net only.
- Redis down: reads go to the database, writes still succeed. A put that could not be made
  leaves the order id in a pending set that a background thread deletes from Redis as soon as
  it answers again, so no stale entry survives Redis's return. Redis itself keeps no
  persistence (see group_vars), so a restarted Redis starts empty.
"""
from __future__ import annotations

import json
import logging
import threading
import time
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

    RETRY_SECONDS = 0.5

    def __init__(self, client: redis.Redis | None, *, ttl: int, prefix: str = "mes:status:"):
        self.client = client
        self.ttl = ttl
        self.prefix = prefix
        self._script = client.register_script(_PUT_IF_NEWER) if client is not None else None
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self._retrier: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def key(self, order_id: int) -> str:
        return f"{self.prefix}{order_id}"

    def get(self, order_id: int) -> StatusEntry | None:
        """The cached entry, or None on a miss, when Redis is down, or while the id may be stale."""
        if not self.enabled or order_id in self._pending:
            return None
        try:
            raw = self.client.hget(self.key(order_id), "d")
        except redis.RedisError as exc:
            self._failed(exc)
            return None
        return StatusEntry(**json.loads(raw)) if raw else None

    def put(self, entry: StatusEntry) -> None:
        """Store the entry unless Redis has the same or a newer version; never raises."""
        if not self.enabled:
            return
        try:
            self._script(keys=[self.key(entry.id)], args=[entry.status_version, json.dumps(asdict(entry)), self.ttl])
            return
        except redis.RedisError as exc:
            self._failed(exc)
        self._remember_stale(entry.id)

    # --- failure handling -----------------------------------------------------------------------
    @staticmethod
    def _failed(exc: Exception) -> None:
        if isinstance(exc, RedisSkipped):
            return  # logged once, when it failed
        log.warning("redis unavailable, status cache bypassed", extra={"error": str(exc)})

    def _remember_stale(self, order_id: int) -> None:
        with self._lock:
            self._pending.add(order_id)
            if self._retrier is None or not self._retrier.is_alive():
                self._retrier = threading.Thread(target=self._drain, name="status-cache-retry", daemon=True)
                self._retrier.start()

    def _drain(self) -> None:
        """Delete the entries we could not update, as soon as Redis answers again."""
        while True:
            time.sleep(self.RETRY_SECONDS)
            with self._lock:
                pending = list(self._pending)
            if not pending:
                return
            try:
                self.client.delete(*(self.key(i) for i in pending))
            except redis.RedisError:
                continue
            with self._lock:
                self._pending.difference_update(pending)
            log.info("stale status entries removed after redis came back", extra={"orders": len(pending)})

