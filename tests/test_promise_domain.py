"""The promise's rules in plain Python: stage durations from events, norms, projection, promise status."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from mes.domain import forecast
from mes.domain.forecast import Flow, Norm, Norms, Position, Promise, StageEvent
from mes.domain.holds import EventKind
from mes.domain.lifecycle import Status

S = Status
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)
DAY = 86400.0
DEFAULTS = forecast.default_norms({"received": 0.5, "queued": 3, "in_production": 8, "quality_check": 1.5,
                                   "packed": 1.5})


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


def status(to: Status, days: float) -> StageEvent:
    return StageEvent(EventKind.STATUS, to, at(days))


def test_stage_durations_leave_holds_out_and_add_up_rework():
    events = [status(S.RECEIVED, 0), status(S.QUEUED, 1), status(S.IN_PRODUCTION, 4),
              StageEvent(EventKind.HOLD, S.IN_PRODUCTION, at(5)), StageEvent(EventKind.RELEASE, S.IN_PRODUCTION, at(7)),
              status(S.QUALITY_CHECK, 10), status(S.IN_PRODUCTION, 11), status(S.QUALITY_CHECK, 12),
              status(S.PACKED, 13), status(S.SHIPPED, 14), status(S.DELIVERED, 18)]
    spent = forecast.stage_durations(events)
    assert {s: d / DAY for s, d in spent.items()} == pytest.approx({
        S.RECEIVED: 1, S.QUEUED: 3, S.IN_PRODUCTION: 4 + 1, S.QUALITY_CHECK: 1 + 1, S.PACKED: 1})


def test_the_current_stage_counts_up_to_now_without_the_running_hold():
    events = [status(S.RECEIVED, 0), status(S.QUEUED, 1), StageEvent(EventKind.HOLD, S.QUEUED, at(2))]
    spent = forecast.stage_durations(events, now=at(5))
    assert spent[S.QUEUED] / DAY == pytest.approx(1)


def test_percentile_interpolates_between_ranks():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert forecast.percentile(values, 0.5) == 3.0
    assert forecast.percentile(values, 0.85) == pytest.approx(4.4)
    assert forecast.percentile([7.0], 0.85) == 7.0


def test_a_family_needs_enough_history_before_its_own_norm_is_used():
    rich = [("BRKT", {S.QUEUED: 2 * DAY})] * forecast.MIN_FAMILY_SAMPLES
    poor = [("GEAR", {S.QUEUED: 10 * DAY})] * (forecast.MIN_FAMILY_SAMPLES - 1)
    norms = Norms(forecast.learn_norms(rich + poor), DEFAULTS)
    assert norms.of("BRKT", S.QUEUED).p50 == 2 * DAY
    overall = norms.of("GEAR", S.QUEUED)  # falls back to every family's history
    assert overall.samples == 2 * forecast.MIN_FAMILY_SAMPLES - 1 and overall.p50 == 2 * DAY
    assert norms.of("GEAR", S.PACKED) == DEFAULTS[S.PACKED]  # no history at all: the configured default


def test_family_is_the_product_code_up_to_its_first_dash():
    assert forecast.family_of("BRKT-200") == forecast.family_of(" brkt-210 ") == "BRKT"
    assert forecast.family_of("PLATE") == "PLATE"


NORMS = Norms({}, DEFAULTS)
NO_QUEUES = {s: Flow(wip=0, exits_per_day=0.0) for s in forecast.STAGES}


def test_projection_is_what_remains_of_the_stage_plus_the_norms_after_it():
    pos = Position("BRKT", S.IN_PRODUCTION, worked_seconds=3 * DAY, ahead_in_stage=0)
    p = forecast.project(T0, pos, NORMS, NO_QUEUES)
    assert p.remaining_seconds / DAY == pytest.approx(5 + 1.5 + 1.5) and p.bottleneck is None
    overrun = Position("BRKT", S.IN_PRODUCTION, worked_seconds=20 * DAY, ahead_in_stage=0)
    assert forecast.project(T0, overrun, NORMS, NO_QUEUES).remaining_seconds / DAY == pytest.approx(3)


def test_a_queue_at_a_bottleneck_pushes_orders_behind_it():
    """Production has 60 orders and ships 3 a day: 20 days to drain, far over its 8-day norm."""
    flows = {**NO_QUEUES, S.IN_PRODUCTION: Flow(wip=60, exits_per_day=3.0)}
    queued = forecast.project(T0, Position("BRKT", S.QUEUED, 0.0, 0), NORMS, flows)
    assert queued.remaining_seconds / DAY == pytest.approx(3 + 20 + 1.5 + 1.5)
    assert queued.bottleneck is S.IN_PRODUCTION
    inside = forecast.project(T0, Position("BRKT", S.IN_PRODUCTION, 1 * DAY, ahead_in_stage=30), NORMS, flows)
    assert inside.remaining_seconds / DAY == pytest.approx(10 + 1.5 + 1.5)  # 30 ahead at 3 a day


def test_a_held_order_does_not_progress_so_its_projection_moves_out():
    pos = Position("BRKT", S.QUEUED, worked_seconds=1 * DAY, ahead_in_stage=0)  # worked time excludes the hold
    today = forecast.project(T0, pos, NORMS, NO_QUEUES)
    later = forecast.project(T0 + timedelta(days=4), pos, NORMS, NO_QUEUES)
    assert later.finish - today.finish == timedelta(days=4)


def test_worked_in_stage_subtracts_the_holds_since_entry():
    assert forecast.worked_in_stage(at(10), at(4), hold_seconds_total=5 * 86400, hold_seconds_at_entry=3 * 86400) \
        == pytest.approx(4 * DAY)


@pytest.mark.parametrize("projected_day, expected", [
    (date(2026, 11, 20), Promise.ON_TRACK),
    (date(2026, 11, 22), Promise.AT_RISK),  # within the 2-day margin
    (date(2026, 11, 25), Promise.AT_RISK),  # after the promised date
])
def test_promise_status_of_an_open_order(projected_day, expected):
    projected = datetime.combine(projected_day, datetime.min.time(), tzinfo=timezone.utc)
    assert forecast.promise_status(S.IN_PRODUCTION, date(2026, 11, 23), date(2026, 11, 10), projected=projected,
                                   shipped_on=None, margin_days=2) is expected


def test_late_once_the_promised_date_has_passed_met_or_missed_once_shipped():
    kw = dict(projected=at(1), margin_days=2)
    assert forecast.promise_status(S.PACKED, date(2026, 11, 23), date(2026, 11, 24), shipped_on=None, **kw) \
        is Promise.LATE
    assert forecast.promise_status(S.SHIPPED, date(2026, 11, 23), date(2026, 11, 30),
                                   shipped_on=date(2026, 11, 23), **kw) is Promise.MET
    assert forecast.promise_status(S.DELIVERED, date(2026, 11, 23), date(2026, 11, 30),
                                   shipped_on=date(2026, 11, 24), **kw) is Promise.MISSED
    assert forecast.promise_status(S.CANCELLED, date(2026, 11, 23), date(2026, 11, 30), shipped_on=None,
                                   **kw) is None


def test_partners_read_the_cause_in_public_words():
    queue = forecast.Projection(finish=at(30), remaining_seconds=30 * DAY, bottleneck=S.IN_PRODUCTION)
    assert forecast.partner_reason(Promise.AT_RISK, queue, None) == "Waiting in the queue for production."
    assert forecast.partner_reason(Promise.AT_RISK, queue, "Machine down") == "On hold: Machine down."
    assert forecast.partner_reason(Promise.ON_TRACK, queue, None) == "Back on schedule."
    assert forecast.late_reason_owed(Promise.AT_RISK, recorded=False)
    assert not forecast.late_reason_owed(Promise.AT_RISK, recorded=True)
    assert not forecast.late_reason_owed(Promise.ON_TRACK, recorded=False)


def test_norm_of_is_median_and_85th_percentile():
    n = forecast.norm_of([float(d) for d in range(1, 101)])
    assert n == Norm(p50=50.5, p85=pytest.approx(85.15), samples=100)
