"""Piece-rate pay: rates by product family and stage, pay periods, and each operator's ledger.

A rate is valid from a moment on, until the next rate of the same family and stage; changes keep the
old rates, so a period is paid at the rates valid when each piece was made, even when a supervisor
changed a rate in the middle of it. Pay is good pieces times the rate of the record's family and
stage at the time the record was finished: scrap and rework are not paid. Amounts are exact
(Decimal); a line is rounded to cents once, when it is shown or exported.
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum

from .errors import ValidationFailed
from .lifecycle import Status
from .production import MAKING_STAGES, Record, RecordKind

CENT = Decimal("0.01")


@dataclass(frozen=True)
class Rate:
    family: str
    stage: Status
    per_piece: Decimal
    valid_from: datetime


class RateTable:
    """Every rate ever set, looked up by family, stage and time."""

    def __init__(self, rates: Iterable[Rate]):
        self._by_key: dict[tuple[str, Status], list[Rate]] = defaultdict(list)
        for rate in sorted(rates, key=lambda r: r.valid_from):
            self._by_key[(rate.family, rate.stage)].append(rate)
        self._starts = {key: [r.valid_from for r in rates] for key, rates in self._by_key.items()}

    def at(self, family: str, stage: Status, when: datetime) -> Rate | None:
        """The rate valid at `when`: the latest one set to start at or before it."""
        starts = self._starts.get((family, stage))
        if not starts:
            return None
        i = bisect.bisect_right(starts, when)
        return self._by_key[(family, stage)][i - 1] if i else None

    def changes(self, since: datetime, until: datetime) -> list[datetime]:
        """The moments after `since` and before `until` at which any rate starts: between two of them
        every family and stage keeps one rate, so records there can be added up before they are priced."""
        return sorted({start for starts in self._starts.values() for start in starts if since < start < until})


def check_rate(value: object) -> Decimal:
    """A piece rate from user input: a non-negative amount with at most 4 decimals."""
    try:
        amount = Decimal(str(value).strip())
    except ArithmeticError:
        amount = None
    if amount is None or not amount.is_finite() or amount < 0 or amount > 100000 or \
            amount != amount.quantize(Decimal("0.0001")):
        raise ValidationFailed("Invalid rate.", errors=[{
            "field": "per_piece", "message": "an amount like 0.35: not negative, at most 4 decimals"}])
    return amount


# --- pay periods ------------------------------------------------------------------------------------

class PeriodKind(StrEnum):
    WEEKLY = "weekly"            # 7 days from the anchor's weekday
    BIWEEKLY = "biweekly"        # 14 days, counted from the anchor date
    SEMIMONTHLY = "semimonthly"  # the 1st to the 15th, the 16th to the month's end
    MONTHLY = "monthly"


@dataclass(frozen=True)
class PeriodRule:
    kind: PeriodKind
    anchor: date = date(2024, 1, 1)  # a Monday: weekly periods start on Mondays

    def period(self, day: date) -> tuple[date, date]:
        """The pay period holding `day`: its first day and the day after its last."""
        if self.kind in (PeriodKind.WEEKLY, PeriodKind.BIWEEKLY):
            length = 7 if self.kind is PeriodKind.WEEKLY else 14
            start = day - timedelta(days=(day - self.anchor).days % length)
            return start, start + timedelta(days=length)
        next_month = date(day.year + day.month // 12, day.month % 12 + 1, 1)
        if self.kind is PeriodKind.MONTHLY:
            return day.replace(day=1), next_month
        return (day.replace(day=1), day.replace(day=16)) if day.day <= 15 else (day.replace(day=16), next_month)


def parse_period_rule(value: str) -> PeriodRule:
    """`weekly`, `weekly:2024-01-03` (periods start on that weekday), `biweekly:2024-01-01`,
    `semimonthly`, `monthly`."""
    kind, _, anchor = value.strip().partition(":")
    try:
        return PeriodRule(PeriodKind(kind), date.fromisoformat(anchor) if anchor else PeriodRule.anchor)
    except ValueError:
        raise ValueError(f"pay period {value!r}: one of {', '.join(k.value for k in PeriodKind)}, "
                         "optionally :YYYY-MM-DD for the first day of one period") from None


# --- the ledger -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Work:
    """A production record with what pay needs beside it: the order's product family and day."""

    record: Record
    order_id: int
    family: str
    day: date  # the factory's local day the record was finished on


@dataclass
class Line:
    """One operator's figures for one day or period."""

    steps: int = 0          # output records finished
    orders: set[int] = field(default_factory=set)
    good: int = 0
    scrap: int = 0
    worked_seconds: int = 0
    pay: Decimal = Decimal(0)
    unpriced_pieces: int = 0  # good pieces of a family and stage with no rate at the time: pay unknown

    def add(self, work: Work, rate: Rate | None) -> None:
        r = work.record
        self.orders.add(work.order_id)
        self.count(1, r.stage, r.good, r.scrap, r.worked_seconds, rate)

    def count(self, steps: int, stage: Status, good: int, scrap: int, worked_seconds: int,
              rate: Rate | None) -> None:
        """Output records of one stage, all priced at `rate`: one record, or a batch of them."""
        self.steps += steps
        self.good += good
        self.scrap += scrap
        self.worked_seconds += worked_seconds
        if stage in MAKING_STAGES:
            if rate is None:
                self.unpriced_pieces += good
            else:
                self.pay += good * rate.per_piece

    @property
    def pay_cents(self) -> Decimal:
        return self.pay.quantize(CENT, rounding=ROUND_HALF_EVEN)


def ledger(works: Iterable[Work], rates: RateTable, key=lambda work: work.day) -> dict[tuple[int, object], Line]:
    """Lines by (operator, key(work)): by day by default; key=lambda w: rule.period(w.day) for periods.
    Only output records count (a rework is the checker's finding, not someone's output)."""
    lines: dict[tuple[int, object], Line] = defaultdict(Line)
    for work in works:
        r = work.record
        if r.kind is not RecordKind.OUTPUT:
            continue
        lines[(r.operator_id, key(work))].add(work, rates.at(work.family, r.stage, r.finished_at))
    return dict(lines)


@dataclass(frozen=True)
class Batch:
    """Output records of one operator (on one day, or over a whole stretch: day None) of one product family
    and stage, all made while the same rates were valid: the database adds records up into batches, so that
    a period of many operators is not read record by record."""

    operator_id: int
    day: date | None
    family: str
    stage: Status
    priced_at: datetime  # a moment at which the rates of all the batch's records were valid
    steps: int
    good: int
    scrap: int
    worked_seconds: int


def ledger_of_batches(batches: Iterable[Batch], orders: Iterable[tuple[int, date | None, int]], rates: RateTable,
                      key=lambda day: day) -> dict[tuple[int, object], Line]:
    """The lines ledger() makes of the same output records, from batches of them and the (operator, day,
    order) of each record. `key` maps a day (a batch's or an order's) to the line's key: the day itself by
    default, rule.period for pay periods."""
    lines: dict[tuple[int, object], Line] = defaultdict(Line)
    for b in batches:
        rate = rates.at(b.family, b.stage, b.priced_at)
        lines[(b.operator_id, key(b.day))].count(b.steps, b.stage, b.good, b.scrap, b.worked_seconds, rate)
    for operator_id, day, order_id in orders:
        lines[(operator_id, key(day))].orders.add(order_id)
    return dict(lines)


def totals(lines: Sequence[Line]) -> Line:
    total = Line()
    for line in lines:
        total.steps += line.steps
        total.orders |= line.orders
        total.good += line.good
        total.scrap += line.scrap
        total.worked_seconds += line.worked_seconds
        total.pay += line.pay
        total.unpriced_pieces += line.unpriced_pieces
    return total


def format_rate(value: Decimal) -> str:
    """A rate as people read it: cents always, more decimals only where set (0.35, 0.125)."""
    amount = Decimal(value).normalize()
    return str(amount.quantize(CENT) if amount.as_tuple().exponent > -2 else amount)
