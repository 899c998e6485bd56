"""Read-your-writes behind Pgpool-II: after an actor's write, that actor's reads go to the primary
until every streaming replica has replayed it.

The write path records the primary's WAL position after its commit (keyed by actor, in Redis so
that every worker and instance sees it, and in this process for when Redis is unreachable). A later
request of the same actor asks the primary whether every replica has replayed it: the app's role
cannot read pg_stat_replication's replay_lsn, so it calls mes_replicas_replayed(), a SECURITY DEFINER
function that answers only that (postgresql/roles.sql.j2). While any replica is behind, or none is
connected, the request's reads carry pgpool's /*NO LOAD BALANCE*/ hint. Requests of actors with no
recent write read the replica as before; a marker is forgotten once replayed, or after `window`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from .db import use_primary
from .redis_client import RedisSkipped

log = logging.getLogger("mes.consistency")

_CURRENT_LSN = text("SELECT pg_current_wal_lsn()::text")
_REPLICAS_CAUGHT_UP = text("SELECT public.mes_replicas_replayed(CAST(:lsn AS pg_lsn))")


class WriteTracker:
    """Remembers each actor's last write position for `window` seconds (the longest lag we route around)."""

    def __init__(self, client: redis.Redis | None, *, enabled: bool, window: int = 300,
                 clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.enabled = enabled
        self.window = window
        self._clock = clock
        self._local: dict[str, tuple[str, float]] = {}  # actor -> (position, until): when Redis fails

    @staticmethod
    def _key(actor_key: str) -> str:
        return f"mes:rw:{actor_key}"

    def remember(self, session: Session, actor_key: str) -> None:
        """Call right after a write committed."""
        if not self.enabled:
            return
        use_primary(session)
        lsn = session.scalar(_CURRENT_LSN)
        session.commit()
        self._local[actor_key] = (lsn, self._clock() + self.window)
        if self.client is not None:
            try:
                self.client.set(self._key(actor_key), lsn, ex=self.window)
            except RedisSkipped:
                pass  # Redis failed a moment ago; this process's own marker stands in
            except redis.RedisError as exc:
                log.warning("could not record write position", extra={"error": str(exc)})

    def route(self, session: Session, actor_key: str) -> bool:
        """Send this request's reads to the primary if the actor's last write is not on every replica yet."""
        if not self.enabled:
            return False
        lsn = self._local_position(actor_key)
        if self.client is not None:
            try:
                lsn = self.client.get(self._key(actor_key)) or lsn
            except redis.RedisError:
                pass  # fall back to what this process knows
        if lsn is None:
            return False
        use_primary(session)
        if session.scalar(_REPLICAS_CAUGHT_UP, {"lsn": lsn}):
            self._forget(actor_key)
            session.commit()
            session.info.pop("primary")  # every replica has the write: back to load balancing
            return False
        return True

    def _local_position(self, actor_key: str) -> str | None:
        lsn, until = self._local.get(actor_key, (None, 0.0))
        if lsn is not None and self._clock() >= until:
            del self._local[actor_key]  # as old as the longest lag we route around
            return None
        return lsn

    def _forget(self, actor_key: str) -> None:
        self._local.pop(actor_key, None)
        if self.client is not None:
            try:
                self.client.delete(self._key(actor_key))
            except redis.RedisError:
                pass
