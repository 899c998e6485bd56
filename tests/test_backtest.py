"""The backtest of the projections (mes.domain.backtest), on histories whose answer is known."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mes.domain import forecast
from mes.domain.backtest import Track, replay
from mes.domain.forecast import Norms, StageEvent
from mes.domain.holds import EventKind
from mes.domain.lifecycle import Status

S = Status
DAYS = {"received": 1, "queued": 3, "in_production": 8, "quality_check": 2, "packed": 1}  # 15 days in all
NORMS = Norms({}, forecast.default_norms(DAYS))
T0 = datetime(2026, 9, 1, 6, 0, tzinfo=timezone.utc)
PATH = [S.RECEIVED, S.QUEUED, S.IN_PRODUCTION, S.QUALITY_CHECK, S.PACKED, S.SHIPPED]


def track(oid: int, start: datetime, *, promised_days: int = 21, hold: tuple[float, float] | None = None,
          extra_production: float = 0.0) -> Track:
    """An order that takes exactly the norms (plus a hold in production, or slower production)."""
    t, events = start, []
    for stage in PATH:
        events.append(StageEvent(EventKind.STATUS, stage, t))
        if stage is S.SHIPPED:
            break
        days = DAYS[stage.value] + (extra_production if stage is S.IN_PRODUCTION else 0)
        if stage is S.IN_PRODUCTION and hold:
            events.append(StageEvent(EventKind.HOLD, stage, t + timedelta(days=hold[0])))
            events.append(StageEvent(EventKind.RELEASE, stage, t + timedelta(days=hold[0] + hold[1])))
            days += hold[1]
        t += timedelta(days=days)
    return Track(oid, "BRKT", (start + timedelta(days=promised_days)).date(), events)


def run(tracks, margin_days=2):
    return replay(tracks, NORMS, since=T0, until=T0 + timedelta(days=60), margin_days=margin_days)


def test_orders_that_take_exactly_their_norms_are_projected_exactly():
    report = run([track(1, T0), track(2, T0 + timedelta(days=10))])
    assert report.orders == 2 and report.projections == 30  # one projection per midnight each was open
    assert report.mean_abs_error_days == pytest.approx(0.0, abs=0.01)
    assert (report.missed, report.false_alarm_share) == (0, 0.0)


def test_a_long_hold_is_flagged_before_the_promised_date():
    held = track(1, T0, promised_days=18, hold=(1, 6))  # 15 + 6 days: misses an 18-day promise
    report = run([held])
    assert report.missed == 1 and report.flagged_in_time == 1
    # Promised Sep 19; at risk once the projection passes Sep 17 (the 2-day margin). Production starts
    # Sep 5 06:00 and is held from Sep 6 06:00: at midnight on Sep 8, 1 day worked, 7 + 3 to go: Sep 18.
    assert report.median_warning_days == 11
    assert report.mean_abs_error_days > 0


def test_a_slow_stage_nobody_held_is_only_seen_as_it_happens_and_counts_as_error():
    slow = track(1, T0, extra_production=7)  # 22 days for a 21-day promise
    on_time = track(2, T0 + timedelta(days=30))
    report = run([slow, on_time])
    assert report.missed == 1 and report.flagged_in_time == 1
    assert report.false_alarm_share == 0.0
    assert report.median_warning_days < 10  # seen only once production overran its norm
