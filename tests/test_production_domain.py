"""Production records, time worked and piece-rate pay (mes.domain.production, mes.domain.pay): plain rules."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mes.domain.errors import Conflict, ValidationFailed
from mes.domain.lifecycle import Status
from mes.domain.pay import (PeriodKind, PeriodRule, Rate, RateTable, Work, check_rate, ledger, parse_period_rule,
                            totals)
from mes.domain.production import (Quantities, Record, RecordKind, WorkAction, WorkState, check_output, check_rework,
                                   quantities, replay)

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=timezone.utc)  # a Monday
DEFECTS = ["burr", "crack", "dimension"]
P, Q = Status.IN_PRODUCTION, Status.QUALITY_CHECK


def out(operator: int, good: int, scrap: int = 0, *, at: datetime = T0, stage: Status = P, seconds: int = 0,
        defect: str | None = None) -> Record:
    return Record(RecordKind.OUTPUT, stage, operator, good, scrap, at, seconds, defect)


def rework(good: int, of: int, defect: str = "burr", scrap: int = 0) -> Record:
    return Record(RecordKind.REWORK, Q, 9, good, scrap, T0, 0, defect, reworks=of)


# --- quantities -------------------------------------------------------------------------------------

def test_an_order_made_in_several_records_by_several_operators():
    records = [out(1, 200), out(2, 150, 5, defect="burr"), out(1, 100)]
    assert quantities(500, records) == Quantities(ordered=500, produced=450, scrapped=5, reworked=0)
    assert quantities(500, records).remaining == 50 and not quantities(500, records).complete
    assert quantities(500, [*records, out(3, 50)]).complete


def test_pieces_sent_back_by_quality_check_count_as_not_made_until_made_again():
    made = [out(1, 500)]
    sent_back = [*made, rework(40, of=1)]
    assert quantities(500, sent_back) == Quantities(500, 460, 0, 40)
    assert quantities(500, sent_back).remaining == 40
    assert quantities(500, [*sent_back, out(2, 40)]).complete
    # Quality-check records judge pieces; they do not make more of them.
    assert quantities(500, [*made, out(9, 480, 20, stage=Q, defect="crack")]).produced == 500


def test_an_output_needs_pieces_and_scrap_needs_a_known_defect_code():
    none = Quantities(500, 0, 0, 0)
    assert check_output(P, none, "120", 3, "burr", DEFECTS) == (120, 3)
    for good, scrap, defect, field in [(0, 0, None, "good"), (10, 2, None, "defect_code"),
                                       (10, 2, "rust", "defect_code"), (-1, 0, None, "good"),
                                       ("ten", 0, None, "good"), (True, 0, None, "good"), (0, 10**7, "burr", "scrap")]:
        with pytest.raises(ValidationFailed) as refused:
            check_output(P, none, good, scrap, defect, DEFECTS)
        assert field in [e["field"] for e in refused.value.extensions["errors"]], (good, scrap, defect)


def test_no_more_good_pieces_than_the_order_still_needs_and_no_check_of_pieces_not_made():
    with pytest.raises(ValidationFailed, match="not valid") as refused:
        check_output(P, Quantities(500, 450, 0, 0), 51, 0, None, DEFECTS)
    assert refused.value.extensions["errors"] == [{"field": "good", "message": "only 50 more good pieces are needed"}]
    assert check_output(P, Quantities(500, 450, 0, 0), 50, 9, "crack", DEFECTS) == (50, 9)  # scrap beyond: fine
    with pytest.raises(ValidationFailed):
        check_output(Q, Quantities(500, 100, 0, 0), 90, 11, "crack", DEFECTS)
    with pytest.raises(Conflict, match="not while the order is packed"):
        check_output(Status.PACKED, Quantities(500, 500, 0, 0), 1, 0, None, DEFECTS)


def test_a_rework_names_a_making_record_a_quantity_it_made_and_a_defect():
    made = out(1, 30)
    so_far = quantities(500, [made])
    assert check_rework(so_far, made, "12", "dimension", DEFECTS) == 12
    for record, quantity, defect in [(None, 5, "burr"), (made, 31, "burr"), (made, 0, "burr"), (made, 5, None),
                                     (made, 5, "rust"), (out(9, 30, stage=Q), 5, "burr")]:
        with pytest.raises(ValidationFailed):
            check_rework(so_far, record, quantity, defect, DEFECTS)


# --- time worked ----------------------------------------------------------------------------------

def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_time_worked_counts_running_spans_only():
    actions = [(WorkAction.START, at(0)), (WorkAction.PAUSE, at(50)), (WorkAction.RESUME, at(80)),
               (WorkAction.FINISH, at(100))]
    assert replay(actions, now=at(500)).worked_seconds == 70 * 60
    running = replay(actions[:3], now=at(90))
    assert running.state is WorkState.RUNNING and running.worked_seconds == 60 * 60 and running.running_since == at(80)
    paused = replay(actions[:2], now=at(90))
    assert paused.state is WorkState.PAUSED and paused.worked_seconds == 50 * 60
    # Finished, then started again later (a second shift on the same order).
    again = replay([*actions, (WorkAction.START, at(200)), (WorkAction.FINISH, at(210))], now=at(500))
    assert again.state is WorkState.IDLE and again.worked_seconds == 80 * 60


@pytest.mark.parametrize("actions", [[WorkAction.PAUSE], [WorkAction.START, WorkAction.START],
                                     [WorkAction.START, WorkAction.RESUME], [WorkAction.FINISH]])
def test_actions_out_of_turn_are_refused_with_what_is_allowed(actions):
    with pytest.raises(Conflict) as refused:
        replay([(a, at(i)) for i, a in enumerate(actions)], now=at(10))
    assert refused.value.extensions["allowed_actions"]


# --- rates and pay --------------------------------------------------------------------------------

def test_a_period_is_paid_at_the_rates_valid_when_the_work_was_done():
    """The bracket rate goes from 0.40 to 0.50 on Wednesday: Monday's and Tuesday's pieces keep 0.40."""
    rates = RateTable([Rate("bracket", P, Decimal("0.40"), T0 - timedelta(days=30)),
                       Rate("bracket", P, Decimal("0.50"), T0 + timedelta(days=2))])
    week = PeriodRule(PeriodKind.WEEKLY)
    works = [Work(out(1, 100, at=T0 + timedelta(days=d, hours=3), seconds=3600), order_id=d, family="bracket",
                  day=(T0 + timedelta(days=d)).date()) for d in range(5)]
    lines = ledger(works, rates, key=lambda w: week.period(w.day))
    (key, line), = lines.items()
    assert key == (1, (date(2026, 3, 2), date(2026, 3, 9)))
    assert line.pay == Decimal("0.40") * 200 + Decimal("0.50") * 300 and line.pay_cents == Decimal("230.00")
    assert (line.steps, line.good, line.worked_seconds, len(line.orders)) == (5, 500, 5 * 3600, 5)
    by_day = ledger(works, rates)
    assert by_day[(1, date(2026, 3, 3))].pay == Decimal("40.00") and by_day[(1, date(2026, 3, 4))].pay == Decimal("50.00")


def test_several_operators_on_one_order_are_each_paid_for_their_own_pieces():
    rates = RateTable([Rate("gear", P, Decimal("1.25"), T0 - timedelta(days=1)),
                       Rate("gear", Q, Decimal("0.10"), T0 - timedelta(days=1))])
    records = [out(1, 300, 4, defect="burr"), out(2, 200), out(3, 480, 20, stage=Q, defect="crack"), rework(10, of=1)]
    lines = ledger([Work(r, 7, "gear", T0.date()) for r in records], rates)
    assert lines[(1, T0.date())].pay == Decimal("375.00") and lines[(1, T0.date())].scrap == 4
    assert lines[(2, T0.date())].pay == Decimal("250.00")
    # The checker's judged pieces are counted but not paid as output; the rework pays nobody.
    assert lines[(3, T0.date())].pay == 0 and lines[(3, T0.date())].good == 480
    assert (9, T0.date()) not in lines
    assert totals(list(lines.values())).pay == Decimal("625.00")


def test_pieces_without_a_rate_are_flagged_not_paid_as_zero():
    rates = RateTable([Rate("gear", P, Decimal("1"), T0 + timedelta(days=1))])  # set after the work
    (line,) = ledger([Work(out(1, 10), 1, "gear", T0.date()), Work(out(1, 5), 2, "shaft", T0.date())], rates).values()
    assert line.pay == 0 and line.unpriced_pieces == 15


def test_rates_read_as_money_with_more_decimals_only_where_set():
    from mes.domain.pay import format_rate
    assert [format_rate(Decimal(v)) for v in ("0.3500", "2", "0.125", "10.10")] == ["0.35", "2.00", "0.125", "10.10"]


def test_rates_from_user_input():
    assert check_rate(" 0.35 ") == Decimal("0.35") and check_rate("2") == Decimal(2)
    for bad in ("-1", "abc", "0.00001", "NaN", "Infinity", "", "1e9"):
        with pytest.raises(ValidationFailed):
            check_rate(bad)


@pytest.mark.parametrize("rule, day, period", [
    ("weekly", date(2026, 3, 8), (date(2026, 3, 2), date(2026, 3, 9))),
    ("weekly:2026-03-04", date(2026, 3, 3), (date(2026, 2, 25), date(2026, 3, 4))),
    ("biweekly:2026-01-05", date(2026, 1, 19), (date(2026, 1, 19), date(2026, 2, 2))),
    ("semimonthly", date(2026, 2, 15), (date(2026, 2, 1), date(2026, 2, 16))),
    ("semimonthly", date(2026, 2, 28), (date(2026, 2, 16), date(2026, 3, 1))),
    ("monthly", date(2026, 12, 31), (date(2026, 12, 1), date(2027, 1, 1))),
])
def test_pay_periods(rule, day, period):
    assert parse_period_rule(rule).period(day) == period


def test_an_unknown_pay_period_says_what_exists():
    with pytest.raises(ValueError, match="weekly, biweekly, semimonthly, monthly"):
        parse_period_rule("fortnightly")


@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 500), st.integers(0, 72 * 60)), max_size=40),
       st.lists(st.tuples(st.integers(-48 * 60, 72 * 60), st.decimals("0", "5", places=2)), min_size=1, max_size=5,
                unique_by=lambda point: point[0]))
def test_the_ledger_adds_up_to_each_record_priced_on_its_own(entries, rate_points):
    """However the lines are cut (by day, by period), they add up to the records priced one by one."""
    rates_list = [Rate("gear", P, amount, T0 + timedelta(minutes=m)) for m, amount in rate_points]
    rates = RateTable(rates_list)
    works = [Work(out(op, good, at=T0 + timedelta(minutes=m)), i, "gear", (T0 + timedelta(minutes=m)).date())
             for i, (op, good, m) in enumerate(entries)]
    expected = Decimal(0)
    for w in works:
        valid = [r for r in rates_list if r.valid_from <= w.record.finished_at]
        if valid:
            expected += w.record.good * max(valid, key=lambda r: r.valid_from).per_piece
    for key in (lambda w: w.day, lambda w: PeriodRule(PeriodKind.WEEKLY).period(w.day)):
        assert totals(list(ledger(works, rates, key=key).values())).pay == expected


@given(st.lists(st.tuples(st.integers(1, 3), st.sampled_from(["gear", "shaft"]), st.sampled_from([P, Q]),
                          st.integers(0, 500), st.integers(0, 72 * 60)), max_size=40),
       st.lists(st.tuples(st.sampled_from(["gear", "shaft"]), st.integers(-48 * 60, 72 * 60),
                          st.decimals("0", "5", places=2)), max_size=6, unique_by=lambda point: point[:2]))
def test_batches_between_rate_changes_make_the_same_lines_as_records(entries, rate_points):
    """The database adds records up per operator, day, family, stage and stretch between two rate changes
    (mes.services.production.batches); priced once per batch, the lines are those of the records one by one."""
    from bisect import bisect_right

    from mes.domain.pay import Batch, ledger_of_batches

    rates = RateTable(Rate(family, P, amount, T0 + timedelta(minutes=m)) for family, m, amount in rate_points)
    works = [Work(out(op, good, at=T0 + timedelta(minutes=m), stage=stage, seconds=m), i % 7, family,
                  (T0 + timedelta(minutes=m)).date()) for i, (op, family, stage, good, m) in enumerate(entries)]
    since, until = T0 - timedelta(days=1), T0 + timedelta(days=4)
    starts = [since, *rates.changes(since, until)]
    sums: dict[tuple, list[int]] = {}
    for w in works:
        r = w.record
        key = (r.operator_id, w.day, w.family, r.stage, starts[bisect_right(starts, r.finished_at) - 1])
        total = sums.setdefault(key, [0, 0, 0, 0])
        for i, value in enumerate((1, r.good, r.scrap, r.worked_seconds)):
            total[i] += value
    batches = [Batch(op, day, family, stage, at, *total) for (op, day, family, stage, at), total in sums.items()]
    orders = [(w.record.operator_id, w.day, w.order_id) for w in works]
    week = PeriodRule(PeriodKind.WEEKLY)
    assert ledger_of_batches(batches, orders, rates) == ledger(works, rates)
    assert ledger_of_batches(batches, orders, rates, key=week.period) == \
        ledger(works, rates, key=lambda w: week.period(w.day))
