"""Durable traces of status writes that the Redis cache may not have, settled by any process.

A worker's memory does not survive a reload or a recycle, so what the cache missed during a Redis
outage is kept in the database (table stale_status), in this order:

1. The write's own transaction inserts (order id, status version): a session hook, so no write path
   can forget it, and the trace commits exactly when the write does.
2. After the commit the write path puts the entry into Redis; only if that succeeded it deletes its
   trace. A put that failed leaves the trace behind, also when the process dies a moment later.
3. A settle reads the traces and the orders' current rows on the primary, puts those into Redis
   (put-if-newer, so a late fill with an older version cannot win afterwards) and deletes only the
   traces it read; one written meanwhile waits for the next round.
4. A process reads the cache only once it has settled since the last Redis failure it saw, and it
   settles again before a read at least every `interval` seconds, so that a process that saw nothing
   of an outage still finds the traces that another process left behind.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from sqlalchemy import delete, event, insert, inspect, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from .db import read_on_primary
from .models import Order, StaleStatus, iso
from .redis_client import Breaker
from .status_cache import StatusCache, StatusEntry

log = logging.getLogger("mes.stale_status")


def entry_of(order: Order) -> StatusEntry:
    return StatusEntry(id=order.id, partner_id=order.partner_id, status=order.status,
                       status_version=order.status_version, updated_at=iso(order.updated_at))


def trace_status_writes(factory: sessionmaker) -> None:
    """Make every session of `factory` leave a trace of each status write in the write's transaction."""
    event.listen(factory, "after_flush", _trace)


def _trace(session: Session, _flush_context) -> None:
    # After the flush the new orders have their ids; new, dirty and the attribute history still show
    # what this flush wrote.
    written = [o for o in session.new if isinstance(o, Order)]
    written += [o for o in session.dirty
                if isinstance(o, Order) and inspect(o).attrs.status_version.history.has_changes()]
    if written:
        session.connection().execute(insert(StaleStatus), [
            {"order_id": o.id, "status_version": o.status_version} for o in written])


def settle(session: Session, cache: StatusCache, *, batch: int = 500) -> bool:
    """Bring the cache up to the primary for every traced write; True when no trace is left."""
    def work() -> bool:
        traces = [tuple(t) for t in session.execute(
            select(StaleStatus.order_id, StaleStatus.status_version).limit(batch))]
        if not traces:
            return True
        orders = session.scalars(select(Order).where(Order.id.in_({order_id for order_id, _ in traces})))
        if not all(cache.put(entry_of(order)) for order in orders):
            return False
        session.execute(delete(StaleStatus).where(
            tuple_(StaleStatus.order_id, StaleStatus.status_version).in_(traces)))
        log.info("status cache entries rewritten after a redis failure", extra={"orders": len(traces)})
        return len(traces) < batch

    return read_on_primary(session, work)


class CacheSettler:
    """One per process: decides whether the cache may be read now, and settles traces when it is due."""

    def __init__(self, cache: StatusCache, breaker: Breaker, *, interval: float,
                 clock: Callable[[], float] = time.monotonic):
        self.cache, self.breaker, self.interval = cache, breaker, interval
        self._clock = clock
        self._settled_at = -math.inf
        self._failures_settled: int | None = None  # the breaker's count at the last settle

    def written(self, session: Session, entry: StatusEntry) -> None:
        """Right after a status write committed: put it, and drop its trace once Redis has it."""
        if not self.cache.put(entry):
            return  # the trace stays for a settle
        session.execute(delete(StaleStatus).where(StaleStatus.order_id == entry.id,
                                                  StaleStatus.status_version == entry.status_version))
        session.commit()

    def cache_readable(self, session: Session) -> bool:
        """Before a cache read: False sends the reader to the primary."""
        if not self.cache.enabled or self.breaker.open:
            return False
        failures = self.breaker.failures
        if failures == self._failures_settled and self._clock() - self._settled_at < self.interval:
            return True
        if not settle(session, self.cache):
            return False
        self._failures_settled, self._settled_at = failures, self._clock()
        return True
