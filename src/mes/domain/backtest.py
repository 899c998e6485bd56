"""How good the promise's forecasts were: replay the order history and ask, at each past day, what the
projection would have said (mes.domain.forecast), then compare with what happened.

- **Mean absolute error** (days) between the finish projected on each day an order was open and the day
  it really shipped, over the orders shipped in the window.
- **Warning**: for each order that missed its promised date, how many days before that date the
  projection first said `at_risk` (negative: only after the date passed); and the share of orders that
  kept their date but were flagged at some point (false alarms).

The replay rebuilds each day's queues (orders per stage, their order of entry, exits per day over the 14
days before) from the status events, so that a bottleneck is seen as it was then. It uses today's norms
for every past day: a mild look-ahead, said so in the report.
"""
from __future__ import annotations

import bisect
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from .forecast import (
    DAY, FLOW_WINDOW, STAGES, Flow, Norms, Position, Promise, StageEvent, project, promise_status, stage_durations,
)
from .holds import EventKind
from .lifecycle import Status


@dataclass
class Track:
    """One order's history as the replay needs it."""

    order_id: int
    family: str
    promised: date
    events: list[StageEvent] = field(default_factory=list)  # in time order

    @property
    def shipped(self) -> datetime | None:
        return next((e.at for e in self.events if e.kind is EventKind.STATUS and e.to_status is Status.SHIPPED), None)


@dataclass(frozen=True)
class Report:
    orders: int  # shipped in the window: their projections are scored
    projections: int
    mean_abs_error_days: float | None
    missed: int  # of those orders, shipped after their promised date
    flagged_in_time: int  # missed orders flagged at risk before their promised date
    median_warning_days: float | None  # for missed orders flagged at all
    false_alarm_share: float | None  # orders that kept their date but were flagged at risk on some day
    note: str = "today's norms are used for every past day"


def _stage_at(events: list[StageEvent], at: datetime) -> tuple[Status | None, datetime | None]:
    stage, entered = None, None
    for e in events:
        if e.at > at:
            break
        if e.kind is EventKind.STATUS:
            stage, entered = e.to_status, e.at
    return stage, entered


def replay(tracks: Iterable[Track], norms: Norms, *, since: datetime, until: datetime, margin_days: int) -> Report:
    """Score the projections of the orders shipped in [since, until) at each midnight they were open."""
    tracks = list(tracks)
    scored = {t.order_id for t in tracks if t.shipped is not None and since <= t.shipped < until}
    by_id = {t.order_id: t for t in tracks}
    changes = sorted(((e.at, t.order_id, e.to_status) for t in tracks for e in t.events if e.kind is EventKind.STATUS),
                     key=lambda c: c[0])
    first_day = min((e.at for t in tracks if t.order_id in scored for e in t.events), default=until)
    day = datetime.combine(first_day.date() + timedelta(days=1), datetime.min.time(), tzinfo=first_day.tzinfo)
    where: dict[int, tuple[Status, datetime]] = {}
    entries: dict[Status, list[tuple[datetime, int]]] = {s: [] for s in STAGES}
    exits: dict[Status, deque[datetime]] = {s: deque() for s in STAGES}
    open_scored: set[int] = set()  # scored orders in a stage before shipping on this day
    errors: list[float] = []
    first_flag: dict[int, date] = {}
    i = 0
    while day < until:
        while i < len(changes) and changes[i][0] <= day:
            at, oid, to = changes[i]
            if oid in where:
                old, entered = where.pop(oid)
                if old in entries:
                    queue = entries[old]
                    del queue[bisect.bisect_left(queue, (entered, oid))]
                    if to is not Status.CANCELLED:
                        exits[old].append(at)
            if to in entries:
                bisect.insort(entries[to], (at, oid))
                if oid in scored:
                    open_scored.add(oid)
            else:
                open_scored.discard(oid)
            where[oid] = (to, at)
            i += 1
        flows = {}
        for s in STAGES:
            while exits[s] and exits[s][0] < day - FLOW_WINDOW:
                exits[s].popleft()
            flows[s] = Flow(wip=len(entries[s]), exits_per_day=len(exits[s]) / FLOW_WINDOW.days)
        for oid in open_scored:
            stage, entered = where[oid]
            track = by_id[oid]
            ahead = bisect.bisect_left(entries[stage], (entered, oid))
            worked = stage_durations([e for e in track.events if e.at <= day], now=day).get(stage, 0.0)
            p = project(day, Position(track.family, stage, worked, ahead), norms, flows)
            errors.append(abs((p.finish - track.shipped).total_seconds()) / DAY)
            promise = promise_status(stage, track.promised, day.date(), projected=p.finish, shipped_on=None,
                                     margin_days=margin_days)
            if promise in (Promise.AT_RISK, Promise.LATE) and oid not in first_flag:
                first_flag[oid] = day.date()
        day += timedelta(days=1)
    missed = [oid for oid in scored if by_id[oid].shipped.date() > by_id[oid].promised]
    kept = [oid for oid in scored if oid not in set(missed)]
    warnings = [(by_id[oid].promised - first_flag[oid]).days for oid in missed if oid in first_flag]
    return Report(
        orders=len(scored), projections=len(errors),
        mean_abs_error_days=round(statistics.fmean(errors), 2) if errors else None,
        missed=len(missed), flagged_in_time=sum(1 for w in warnings if w > 0),
        median_warning_days=statistics.median(warnings) if warnings else None,
        false_alarm_share=round(sum(1 for oid in kept if oid in first_flag) / len(kept), 3) if kept else None)
