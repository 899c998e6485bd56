"""The flow board's arithmetic on its own: no Flask, no database."""
from datetime import date, datetime, timezone

import pytest

from mes.domain.flow import (
    Bar, DayCount, LeadTimes, OnTime, ParetoRow, RiskCount, RiskRow, Span, column_bars, daily_series, first_day,
    lead_times, lead_times_of_counts, pareto, pareto_spans, percent, risk_summary, start_of,
)

DAY = 86400.0
TODAY = date(2026, 11, 30)


def test_a_window_ends_today_and_starts_at_midnight_utc():
    assert first_day(TODAY, 14) == date(2026, 11, 17)
    assert first_day(TODAY, 1) == TODAY
    assert start_of(date(2026, 11, 1)) == datetime(2026, 11, 1, tzinfo=timezone.utc)
    with pytest.raises(ValueError):
        first_day(TODAY, 0)


def test_the_daily_series_shows_every_day_with_zeros_and_drops_days_outside():
    counts = {date(2026, 11, 28): 3, date(2026, 11, 30): 1, date(2026, 11, 1): 9, date(2026, 12, 1): 4}
    series = daily_series(counts, date(2026, 11, 27), TODAY)
    assert series == [DayCount(date(2026, 11, 27), 0), DayCount(date(2026, 11, 28), 3),
                      DayCount(date(2026, 11, 29), 0), DayCount(TODAY, 1)]
    assert [d.count for d in daily_series({}, first_day(TODAY, 14), TODAY)] == [0] * 14


def test_lead_times_are_percentiles_in_days_by_linear_interpolation():
    lt = lead_times([10 * DAY, 2 * DAY, 6 * DAY, 4 * DAY, 8 * DAY])  # any order
    assert lt.count == 5 and lt.p50 == pytest.approx(6.0)
    assert lt.p85 == pytest.approx(8.8)  # rank 3.4 of 0..4: 8 + 0.4 * (10 - 8)
    assert lt.p95 == pytest.approx(9.6)
    assert lead_times([DAY / 2]) == LeadTimes(count=1, p50=0.5, p85=0.5, p95=0.5)


def test_lead_times_from_counts_per_duration_are_those_of_the_orders_one_by_one():
    counts = {10 * DAY: 1, 4 * DAY: 2, 3 * DAY: 0, 2 * DAY: 1}
    assert lead_times_of_counts(counts) == lead_times([2 * DAY, 4 * DAY, 4 * DAY, 10 * DAY])
    assert lead_times_of_counts({}) is None and lead_times_of_counts({DAY: 0}) is None


def test_no_shipment_means_no_lead_time_and_no_rate_rather_than_a_division_by_zero():
    assert lead_times([]) is None
    assert OnTime(on_time=0, shipped=0).rate is None


def test_the_on_time_rate_counts_what_left_by_the_promised_date():
    ot = OnTime(on_time=3, shipped=5)
    assert ot.rate == pytest.approx(0.6) and ot.late == 2
    with pytest.raises(ValueError):
        OnTime(on_time=6, shipped=5)


def test_percentages_never_round_to_all_or_nothing():
    assert percent(0.6) == "60%" and percent(0.6, 1) == "60.0%"
    assert percent(1 / 3) == "33%" and percent(5 / 6) == "83%"
    assert percent(0.998) == "99%" and percent(0.9996, 1) == "99.9%"
    assert percent(0.001) == "1%" and percent(0.0) == "0%" and percent(1.0) == "100%"


def test_a_pareto_sorts_causes_down_with_shares_adding_up_to_exactly_one():
    rows = pareto([("Tooling", 1), ("Machine down", 2), ("Material shortage", 3), ("Capacity", 0)])
    assert [(r.label, r.count) for r in rows] == [("Material shortage", 3), ("Machine down", 2), ("Tooling", 1)]
    assert [r.share for r in rows] == pytest.approx([0.5, 1 / 3, 1 / 6])
    assert [r.cumulative for r in rows] == pytest.approx([0.5, 5 / 6, 1.0])
    assert rows[-1].cumulative == 1.0  # exactly: counted, not summed from rounded shares
    assert [r.vital for r in rows] == [True, True, False]  # the first 80 % are reached with two causes


def test_a_pareto_breaks_ties_by_label_and_is_empty_without_causes():
    rows = pareto([("b", 2), ("a", 2), ("c", 1)])
    assert [r.label for r in rows] == ["a", "b", "c"]
    assert pareto([]) == [] and pareto([("a", 0)]) == []
    assert pareto([("only", 4)]) == [ParetoRow("only", 4, 1.0, 1.0, True)]


def test_pareto_spans_start_where_the_larger_causes_end():
    rows = pareto([("a", 2), ("b", 1), ("c", 1)])
    assert pareto_spans(rows) == [Span(0.0, 50.0), Span(50.0, 25.0), Span(75.0, 25.0)]
    assert pareto_spans([]) == []


def test_orders_at_risk_are_grouped_by_stage_in_lifecycle_order_and_by_top_partners():
    counts = [RiskCount("packed", "Acme", "late", 1), RiskCount("received", "Acme", "at_risk", 2),
              RiskCount("received", "Bolt", "late", 1), RiskCount("queued", "Cargo", "at_risk", 1),
              RiskCount("queued", "Dyna", "at_risk", 1), RiskCount("queued", "Acme", "on_track", 7)]
    risk = risk_summary(counts, top=2)
    assert (risk.at_risk, risk.late, risk.total) == (4, 2, 6)
    assert risk.by_stage == [RiskRow("received", 2, 1), RiskRow("queued", 2, 0), RiskRow("packed", 0, 1)]
    # Acme has 3; Bolt, Cargo and Dyna 1 each: the late one first, then by name.
    assert risk.top_partners == [RiskRow("Acme", 2, 1), RiskRow("Bolt", 0, 1)]
    assert risk.other_partners == RiskRow("2 other partners", 2, 0)


def test_no_order_at_risk_is_an_empty_summary():
    risk = risk_summary([])
    assert (risk.total, risk.by_stage, risk.top_partners, risk.other_partners) == (0, [], [], None)
    assert risk_summary([RiskCount("queued", "Acme", "at_risk", 1)], top=1).other_partners is None


def test_column_bars_share_the_width_and_scale_to_the_largest_value():
    bars = column_bars([0, 5, 10, 1], width=400, height=100, gap=0.5, min_height=2)
    assert [b.x for b in bars] == [25, 125, 225, 325] and {b.width for b in bars} == {50}
    assert [b.height for b in bars] == [0, 50, 100, 10]
    assert [b.y for b in bars] == [100, 50, 0, 90]  # SVG's y grows downwards: bars stand on the axis
    assert bars[1] == Bar(x=125, y=50, width=50, height=50, value=5)


def test_a_small_value_stays_visible_and_all_zero_is_flat():
    assert column_bars([1000, 1], width=20, height=100, min_height=1.5)[1].height == 1.5
    assert {b.height for b in column_bars([0, 0, 0], width=30, height=100)} == {0}
    assert column_bars([], width=100, height=100) == []
