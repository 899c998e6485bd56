"""The promise, forecast: how long each stage usually takes, when an open order will be finished, and
whether that keeps the promised date.

- **Stage norms** are learned from recent shipped orders: the working time (holds left out) each spent in
  each stage, as a median and an 85th percentile, per product family where the family has enough
  history, else over all families, else the configured defaults of a new installation.
- **Projected finish** = now + what remains of the current stage + the stages after it. A stage takes at
  least its median; where a queue waits at it, at least the time the stage needs to drain the queue at its
  recent throughput (Little's law: work in progress / exits per day). So a bottleneck pushes every order
  behind it, not only the ones that already wait there. A held order does not progress: the projection
  moves out with every hour it stays held.
- **Promise status** of an open order: `late` once the promised date has passed, `at_risk` when the
  projection falls after the promised date or within the margin before it, else `on_track`. A shipped
  order's promise was `met` or `missed`; a cancelled order has none.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from .errors import ValidationFailed
from .holds import EventKind
from .lifecycle import Status

S = Status
#: The stages an order passes before it ships, in order; norms and projections walk these.
STAGES: tuple[Status, ...] = (S.RECEIVED, S.QUEUED, S.IN_PRODUCTION, S.QUALITY_CHECK, S.PACKED)
#: Norms learn from the orders shipped within NORM_WINDOW; a stage's pace counts its exits within FLOW_WINDOW.
NORM_WINDOW = timedelta(days=90)
FLOW_WINDOW = timedelta(days=14)
#: A family needs this many shipped orders through a stage before its own norm replaces the overall one.
MIN_FAMILY_SAMPLES = 20
DAY = 86400.0


class Promise(StrEnum):
    ON_TRACK = "on_track"
    AT_RISK = "at_risk"
    LATE = "late"
    MET = "met"
    MISSED = "missed"


#: The promise statuses of open orders; a change among these is an event partners hear of.
OPEN_PROMISES: tuple[Promise, ...] = (Promise.ON_TRACK, Promise.AT_RISK, Promise.LATE)


def family_of(product: str) -> str:
    """The product family: the product code up to its first dash (BRKT-200 and BRKT-210 are BRKT)."""
    head = product.strip().split("-", 1)[0].strip().upper()
    return head[:32] or "-"


@dataclass(frozen=True)
class Policy:
    """The configured side of the promise: the at-risk margin and the default norms (days per stage)."""

    margin_days: int
    default_days: Mapping[str, float]


# ------------------------------------------------------------------------------------------------ norms
@dataclass(frozen=True)
class Norm:
    p50: float  # seconds
    p85: float
    samples: int  # 0 for a configured default


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between closest ranks, of values sorted ascending."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def norm_of(durations: Iterable[float]) -> Norm:
    values = sorted(durations)
    return Norm(p50=percentile(values, 0.5), p85=percentile(values, 0.85), samples=len(values))


@dataclass(frozen=True)
class StageEvent:
    """What stage accounting reads from one order event."""

    kind: EventKind
    to_status: Status
    at: datetime


def stage_durations(events: Iterable[StageEvent], now: datetime | None = None) -> dict[Status, float]:
    """Working seconds an order spent in each stage before it shipped (a stage visited twice, as by
    rework, counts both visits), from its events in order: time between entering a status and leaving
    it, less the holds in between. With `now`, the stage the order is in counts up to now."""
    spent: dict[Status, float] = {}
    stage: Status | None = None
    entered: datetime | None = None
    held_since: datetime | None = None
    held = 0.0

    def close(at: datetime) -> None:
        if stage in STAGES and entered is not None:
            running_hold = (at - held_since).total_seconds() if held_since is not None else 0.0
            spent[stage] = spent.get(stage, 0.0) + max((at - entered).total_seconds() - held - running_hold, 0.0)

    for e in events:
        if e.kind is EventKind.HOLD:
            held_since = e.at
        elif e.kind is EventKind.RELEASE and held_since is not None:
            held += (e.at - held_since).total_seconds()
            held_since = None
        elif e.kind is EventKind.STATUS:
            close(e.at)
            stage, entered, held, held_since = e.to_status, e.at, 0.0, None
            if stage is S.SHIPPED:
                return spent
    if now is not None:
        close(now)
    return spent


@dataclass(frozen=True)
class Norms:
    """Learned norms by (family, stage), family "" for all families, over configured defaults."""

    learned: Mapping[tuple[str, Status], Norm]
    defaults: Mapping[Status, Norm]

    def of(self, family: str, stage: Status) -> Norm:
        own = self.learned.get((family, stage))
        if own is not None and own.samples >= MIN_FAMILY_SAMPLES:
            return own
        overall = self.learned.get(("", stage))
        if overall is not None and overall.samples > 0:
            return overall
        return self.defaults[stage]


def default_norms(days: Mapping[str, float]) -> dict[Status, Norm]:
    """Configured median days per stage; the 85th percentile of a default is taken as 1.5 times it."""
    return {stage: Norm(p50=days[stage.value] * DAY, p85=days[stage.value] * DAY * 1.5, samples=0)
            for stage in STAGES}


def learn_norms(per_order: Iterable[tuple[str, Mapping[Status, float]]]) -> dict[tuple[str, Status], Norm]:
    """Norms from (family, stage durations) of shipped orders: per family and overall (family "")."""
    samples: dict[tuple[str, Status], list[float]] = {}
    for family, spent in per_order:
        for stage, seconds in spent.items():
            samples.setdefault((family, stage), []).append(seconds)
            samples.setdefault(("", stage), []).append(seconds)
    return {key: norm_of(values) for key, values in samples.items()}


# ------------------------------------------------------------------------------------------- projection
@dataclass(frozen=True)
class Flow:
    """A stage's queue now and how fast it drains: orders in it, and orders leaving it per day recently."""

    wip: int
    exits_per_day: float

    def drain_seconds(self, ahead: int) -> float:
        """How long `ahead` orders take to leave the stage at its recent pace (0 without a pace)."""
        if self.exits_per_day <= 0:
            return 0.0
        return ahead / self.exits_per_day * DAY


@dataclass(frozen=True)
class Position:
    """Where an open order stands: its family, stage, working seconds in the stage so far, and how many
    orders of its stage come before it in the queue."""

    family: str
    stage: Status
    worked_seconds: float
    ahead_in_stage: int


@dataclass(frozen=True)
class Projection:
    finish: datetime
    remaining_seconds: float
    bottleneck: Status | None  # the stage whose queue, not its norm, sets most of the remaining time


def worked_in_stage(now: datetime, entered: datetime, hold_seconds_total: int, hold_seconds_at_entry: int) -> float:
    """Working seconds in the current stage: time since entering it less the hold time since then."""
    return max((now - entered).total_seconds() - (hold_seconds_total - hold_seconds_at_entry), 0.0)


def project(now: datetime, pos: Position, norms: Norms, flows: Mapping[Status, Flow]) -> Projection:
    """When the order will be ready to ship, as of now (see the module's docstring)."""
    if pos.stage not in STAGES:
        raise ValueError(f"no projection for an order in status {pos.stage.value!r}")
    empty = Flow(wip=0, exits_per_day=0.0)
    i = STAGES.index(pos.stage)
    by_norm = max(norms.of(pos.family, pos.stage).p50 - pos.worked_seconds, 0.0)
    by_queue = flows.get(pos.stage, empty).drain_seconds(pos.ahead_in_stage)
    remaining, queue_excess, bottleneck = max(by_norm, by_queue), max(by_queue - by_norm, 0.0), None
    if queue_excess > 0:
        bottleneck = pos.stage
    for stage in STAGES[i + 1:]:
        norm = norms.of(pos.family, stage).p50
        flow = flows.get(stage, empty)
        drain = flow.drain_seconds(flow.wip)
        remaining += max(norm, drain)
        if drain - norm > queue_excess:
            queue_excess, bottleneck = drain - norm, stage
    return Projection(finish=now + timedelta(seconds=remaining), remaining_seconds=remaining, bottleneck=bottleneck)


def promise_status(status: Status, promised: date, today: date, *, projected: datetime | None,
                   shipped_on: date | None, margin_days: int) -> Promise | None:
    """The promise status (see the module's docstring); `projected` is needed for an open order."""
    if status is S.CANCELLED:
        return None
    if status in (S.SHIPPED, S.DELIVERED):
        return Promise.MET if shipped_on is not None and shipped_on <= promised else Promise.MISSED
    if promised < today:
        return Promise.LATE
    if projected is None:
        raise ValueError("an open order's promise needs its projection")
    if projected.date() > promised - timedelta(days=margin_days):
        return Promise.AT_RISK
    return Promise.ON_TRACK


def promise_of(value: str | None) -> Promise | None:
    """A stored promise status (None: cancelled, or not projected yet)."""
    return Promise(value) if value else None


def late_reason_owed(promise: Promise | None, recorded: bool) -> bool:
    """An order at risk or late whose cause nobody has recorded in this spell: the next operator action
    on it asks why, so that every miss has a cause."""
    return promise in (Promise.AT_RISK, Promise.LATE) and not recorded


def check_late_reason(promise: Promise | None, recorded: bool, given: bool) -> bool:
    """Whether this action records a late reason; refuses an action on an order at risk or late whose
    cause nobody has recorded yet in this spell, when the operator gave none."""
    if not late_reason_owed(promise, recorded):
        return False
    if not given:
        word = "late" if promise is Promise.LATE else "at risk of missing its promised date"
        raise ValidationFailed(f"This order is {word}: choose why (the late reason) before moving it on.",
                               errors=[{"field": "late_reason", "message": "required while the order is "
                                                                           f"{promise.value.replace('_', ' ')}"}])
    return True


STAGE_WORDS: dict[Status, str] = {
    S.RECEIVED: "order review", S.QUEUED: "the production queue", S.IN_PRODUCTION: "production",
    S.QUALITY_CHECK: "quality check", S.PACKED: "packing",
}


def partner_reason(promise: Promise | None, projection: Projection | None, hold_reason: str | None) -> str | None:
    """What a partner reads when the promise status changes: the cause in the factory's public words
    (a hold's reason label, a queue, a slow stage), never an operator's note."""
    if promise is Promise.LATE:
        return "The promised date has passed."
    if promise is Promise.AT_RISK:
        if hold_reason:
            return f"On hold: {hold_reason}."
        if projection is not None and projection.bottleneck is not None:
            return f"Waiting in the queue for {STAGE_WORDS[projection.bottleneck]}."
        return "Taking longer than usual; the estimate is after or close to the promised date."
    if promise is Promise.ON_TRACK:
        return "Back on schedule."
    return None
