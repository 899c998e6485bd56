"""The flow board's arithmetic: windows of days, shipments per day, lead-time percentiles, the on-time
rate, orders at risk grouped by stage and partner, a Pareto of causes, and the geometry of the bars.

Plain numbers in, plain numbers out: the queries (mes.services.board) hand over counts and durations
that the database has already narrowed to a window, so that nothing here depends on the table's size.
Empty input is a normal case (a new installation, a quiet month): every function answers it with an
empty result or None, never a division by zero.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from itertools import chain, repeat

from .forecast import DAY, STAGES, percentile

#: Throughput is drawn per day over this many days, today included.
THROUGHPUT_DAYS = 14
#: Lead time, the on-time rate and the causes of missed promises look back this many days, today included.
RECENT_DAYS = 30
#: The partners with the most orders at risk listed by name; the rest are added up.
TOP_PARTNERS = 5
#: Lead times are counted per quarter hour (far finer than the tenth of a day the board shows).
LEAD_STEP_SECONDS = 900
#: A Pareto's "vital few": the causes that together reach this share.
VITAL_SHARE = 0.8


# ---------------------------------------------------------------------------------------------- windows
def first_day(today: date, days: int) -> date:
    """The first day of a window of `days` days that ends today (today included)."""
    if days < 1:
        raise ValueError("a window has at least one day")
    return today - timedelta(days=days - 1)


def start_of(day: date) -> datetime:
    """Midnight UTC: the factory's calendar is UTC, like the stored timestamps."""
    return datetime.combine(day, time.min, tzinfo=timezone.utc)


@dataclass(frozen=True)
class DayCount:
    day: date
    count: int


def daily_series(counts: Mapping[date, int], first: date, last: date) -> list[DayCount]:
    """One entry per day from `first` to `last`, zero for the days without any; days outside are dropped
    (a bar chart that skipped quiet days would hide them)."""
    days = (last - first).days + 1
    return [DayCount(d, counts.get(d, 0)) for d in (first + timedelta(days=i) for i in range(max(days, 0)))]


# -------------------------------------------------------------------------------------- lead time, rates
@dataclass(frozen=True)
class LeadTimes:
    """Received to shipped, in days, over `count` orders."""

    count: int
    p50: float
    p85: float
    p95: float


def lead_times(seconds: Iterable[float]) -> LeadTimes | None:
    """Median, 85th and 95th percentile of lead times given in seconds; None without any order."""
    values = sorted(max(s, 0.0) / DAY for s in seconds)
    if not values:
        return None
    return LeadTimes(count=len(values), p50=percentile(values, 0.5), p85=percentile(values, 0.85),
                     p95=percentile(values, 0.95))


def lead_times_of_counts(counts: Mapping[float, int]) -> LeadTimes | None:
    """The same from how many orders took each duration (seconds -> orders), as the database hands them
    over rounded to LEAD_STEP_SECONDS: one row per duration instead of one per order."""
    return lead_times(chain.from_iterable(repeat(s, n) for s, n in sorted(counts.items()) if n > 0))


@dataclass(frozen=True)
class OnTime:
    """Orders shipped on or before their promised date, of the orders shipped."""

    on_time: int
    shipped: int

    def __post_init__(self):
        if not 0 <= self.on_time <= self.shipped:
            raise ValueError(f"on time {self.on_time} of {self.shipped} shipped")

    @property
    def late(self) -> int:
        return self.shipped - self.on_time

    @property
    def rate(self) -> float | None:
        """The share on time; None when nothing shipped (no rate, rather than 0 % or 100 %)."""
        return self.on_time / self.shipped if self.shipped else None


def percent(ratio: float, digits: int = 0) -> str:
    """A share as people read it: 0.8333 -> '83%'. Only a whole is 100 % and only nothing is 0 %, so a
    rate of 99.7 % never reads as 'all of them'."""
    value = ratio * 100
    scale = 10 ** digits
    if 0 < ratio < 1:
        lowest, highest = 1 / scale, 100 - 1 / scale
        value = min(max(value, lowest), highest)
    return f"{value:.{digits}f}%"


# ------------------------------------------------------------------------------------------------ Pareto
@dataclass(frozen=True)
class ParetoRow:
    label: str
    count: int
    share: float  # of all counted
    cumulative: float  # this cause and every larger one
    vital: bool  # among the few causes that make up VITAL_SHARE


#: How the board names the orders late or at risk for which nobody has recorded a cause yet.
NO_CAUSE = "No cause recorded yet"


def pareto(counts: Iterable[tuple[str, int]], vital_share: float = VITAL_SHARE) -> list[ParetoRow]:
    """Causes from the most to the least frequent (ties by label), each with its share and the running
    share; the last row's running share is exactly 1. Causes counted zero times are left out."""
    items = sorted(((label, n) for label, n in counts if n > 0), key=lambda item: (-item[1], item[0]))
    total = sum(n for _, n in items)
    rows, running, reached = [], 0, False
    for label, n in items:
        running += n
        rows.append(ParetoRow(label=label, count=n, share=n / total, cumulative=running / total,
                              vital=not reached))
        reached = reached or running / total >= vital_share
    return rows


# --------------------------------------------------------------------------------------- orders at risk
@dataclass(frozen=True)
class RiskRow:
    name: str  # a stage (its status value) or a partner's name
    at_risk: int
    late: int

    @property
    def total(self) -> int:
        return self.at_risk + self.late


@dataclass(frozen=True)
class RiskCount:
    """Open orders at risk or late, from counts per (stage, partner, promise status)."""

    stage: str
    partner: str
    promise: str  # "at_risk" or "late"
    count: int


@dataclass(frozen=True)
class Risk:
    at_risk: int
    late: int
    by_stage: list[RiskRow]  # in lifecycle order, stages without any left out
    top_partners: list[RiskRow]  # the most orders at risk or late first
    other_partners: RiskRow | None  # every partner after the top ones, added up

    @property
    def total(self) -> int:
        return self.at_risk + self.late


def _add(rows: dict[str, list[int]], key: str, promise: str, n: int) -> None:
    pair = rows.setdefault(key, [0, 0])
    pair[0 if promise == "at_risk" else 1] += n


def risk_summary(counts: Iterable[RiskCount], top: int = TOP_PARTNERS) -> Risk:
    """Totals, the stages they sit in and the partners they belong to (the `top` partners by name)."""
    stages: dict[str, list[int]] = {}
    partners: dict[str, list[int]] = {}
    for c in counts:
        if c.promise not in ("at_risk", "late") or c.count <= 0:
            continue
        _add(stages, c.stage, c.promise, c.count)
        _add(partners, c.partner, c.promise, c.count)
    order = [s.value for s in STAGES]
    by_stage = [RiskRow(s, *stages[s]) for s in sorted(stages, key=lambda s: (order.index(s) if s in order
                                                                              else len(order), s))]
    ranked = sorted((RiskRow(name, *pair) for name, pair in partners.items()),
                    key=lambda r: (-r.total, -r.late, r.name))
    rest = ranked[top:]
    other = RiskRow(f"{len(rest)} other partner{'s' if len(rest) != 1 else ''}", sum(r.at_risk for r in rest),
                    sum(r.late for r in rest)) if rest else None
    return Risk(at_risk=sum(r.at_risk for r in by_stage), late=sum(r.late for r in by_stage),
                by_stage=by_stage, top_partners=ranked[:top], other_partners=other)


# -------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Bar:
    """A rectangle in SVG user units (y grows downwards) and the value it stands for."""

    x: float
    y: float
    width: float
    height: float
    value: int


def column_bars(values: Sequence[int], *, width: float, height: float, gap: float = 0.25,
                min_height: float = 1.0) -> list[Bar]:
    """Vertical bars side by side across `width`, the largest value `height` tall; `gap` is the part of
    each slot left empty. A value above zero is at least `min_height` tall, so that it never looks like
    nothing; with no value above zero every bar is flat."""
    if not values:
        return []
    slot = width / len(values)
    bar_width = slot * (1 - gap)
    top = max(values)
    bars = []
    for i, v in enumerate(values):
        h = 0.0 if top <= 0 or v <= 0 else max(v / top * height, min_height)
        bars.append(Bar(x=round(i * slot + (slot - bar_width) / 2, 2), y=round(height - h, 2),
                        width=round(bar_width, 2), height=round(h, 2), value=v))
    return bars


@dataclass(frozen=True)
class Span:
    """A piece of a 0..`width` track: where it starts and how long it is."""

    start: float
    length: float


def pareto_spans(rows: Sequence[ParetoRow], width: float = 100.0) -> list[Span]:
    """Each cause as the stretch it adds to the running share: it begins where the larger causes end and
    is as long as its own share, so one track shows both the share and the cumulative share."""
    spans, before = [], 0.0
    for r in rows:
        spans.append(Span(start=round(before * width, 2), length=round(r.share * width, 2)))
        before = r.cumulative
    return spans

