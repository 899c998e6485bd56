"""Hold rules and hold accounting on their own: no Flask, no database."""
from datetime import datetime, timedelta, timezone

import pytest

from mes.domain import actors
from mes.domain.actors import Actor, Role, Scope
from mes.domain.errors import CannotHold, Forbidden, NotOnHold, OrderOnHold, ValidationFailed
from mes.domain.holds import (
    HoldState, check_can_hold, check_can_release, check_move_while_held, closed, format_age, hold_age,
    parse_note, total_hold_seconds,
)
from mes.domain.lifecycle import OPEN_STATUSES, Status
from mes.domain.reason_codes import DEFAULT_HOLD_REASONS, parse_code, parse_label

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)
NOT_HELD = HoldState(since=None, earlier_seconds=0)


def test_a_running_hold_has_an_age_and_counts_into_the_total():
    state = HoldState(since=T0, earlier_seconds=600)
    now = T0 + timedelta(hours=2, minutes=5)
    assert hold_age(state, now) == timedelta(hours=2, minutes=5)
    assert total_hold_seconds(state, now) == 600 + 2 * 3600 + 300


def test_an_order_not_held_has_no_age_and_keeps_its_earlier_total():
    state = HoldState(since=None, earlier_seconds=5400)
    assert hold_age(state, T0) is None
    assert total_hold_seconds(state, T0) == 5400


def test_closing_holds_adds_each_one_and_stops_the_clock():
    first = closed(HoldState(since=T0, earlier_seconds=0), T0 + timedelta(hours=1))
    assert first == HoldState(since=None, earlier_seconds=3600)
    second = closed(HoldState(since=T0 + timedelta(days=1), earlier_seconds=first.earlier_seconds),
                    T0 + timedelta(days=1, minutes=30))
    assert second.earlier_seconds == 3600 + 1800
    assert total_hold_seconds(second, T0 + timedelta(days=30)) == 5400  # released: no longer grows


def test_a_clock_step_backwards_never_makes_negative_hold_time():
    state = HoldState(since=T0, earlier_seconds=10)
    assert hold_age(state, T0 - timedelta(minutes=1)) == timedelta(0)
    assert total_hold_seconds(state, T0 - timedelta(minutes=1)) == 10


@pytest.mark.parametrize("status", OPEN_STATUSES)
def test_every_open_order_can_be_held(status):
    check_can_hold(status, NOT_HELD)


@pytest.mark.parametrize("status", [Status.SHIPPED, Status.DELIVERED, Status.CANCELLED])
def test_finished_orders_cannot_be_held(status):
    with pytest.raises(CannotHold) as err:
        check_can_hold(status, NOT_HELD)
    assert err.value.status == 409


def test_a_held_order_cannot_be_held_twice_and_an_unheld_one_not_released():
    with pytest.raises(CannotHold):
        check_can_hold(Status.QUEUED, HoldState(since=T0, earlier_seconds=0))
    with pytest.raises(NotOnHold):
        check_can_release(NOT_HELD)
    check_can_release(HoldState(since=T0, earlier_seconds=0))


@pytest.mark.parametrize("target", [s for s in Status if s is not Status.CANCELLED])
def test_a_held_order_moves_nowhere_but_to_cancelled(target):
    held = HoldState(since=T0, earlier_seconds=0)
    with pytest.raises(OrderOnHold) as err:
        check_move_while_held(held, target, "Machine down")
    assert err.value.status == 409 and err.value.slug == "order-on-hold"
    assert err.value.extensions == {"hold_reason": "Machine down", "allowed_transitions": ["cancelled"]}
    check_move_while_held(held, Status.CANCELLED)
    check_move_while_held(NOT_HELD, target)


def test_a_note_is_required_only_where_the_code_says_so_and_follows_the_text_rules():
    with pytest.raises(ValidationFailed):
        parse_note("   ", required=True)
    assert parse_note("  ", required=False) is None
    assert parse_note(" coolant pump\nordered ", required=True) == "coolant pump\nordered"
    with pytest.raises(ValidationFailed):
        parse_note("bad\x00byte", required=False)
    with pytest.raises(ValidationFailed):
        parse_note("x" * 501, required=False)


def test_only_other_needs_a_note_among_the_seeded_reasons():
    assert [s.code for s in DEFAULT_HOLD_REASONS if s.requires_note] == ["other"]
    assert len(DEFAULT_HOLD_REASONS) == 7


def test_codes_and_labels_are_checked():
    assert parse_code(" Paint_Shop ") == "paint_shop"
    for bad in ("", "1abc", "with space", "x" * 33, "naïve"):
        with pytest.raises(ValidationFailed):
            parse_code(bad)
    assert parse_label("  Paint shop  ") == "Paint shop"
    for bad in ("", "   ", "tab\there", "x" * 81):
        with pytest.raises(ValidationFailed):
            parse_label(bad)


def test_only_the_shop_floor_holds_and_only_supervisors_keep_codes():
    operator = Actor("operator", 1, "olga", role=Role.OPERATOR)
    supervisor = Actor("operator", 3, "chief", role=Role.SUPERVISOR)
    partner = Actor("client", 10, "acme", scope=Scope.PARTNER, partner_id=100)
    crm = Actor("client", 12, "crm", scope=Scope.CRM)
    actors.require_hold(operator)
    actors.require_hold(supervisor)
    for client in (partner, crm):
        with pytest.raises(Forbidden):
            actors.require_hold(client)
    actors.require_supervisor(supervisor, "change reason codes")
    for other in (operator, partner, crm):
        with pytest.raises(Forbidden):
            actors.require_supervisor(other, "change reason codes")


def test_hold_age_reads_as_days_hours_minutes():
    assert format_age(timedelta(days=3, hours=4, minutes=59)) == "3d 4h"
    assert format_age(timedelta(hours=5, minutes=12)) == "5h 12m"
    assert format_age(timedelta(minutes=7, seconds=50)) == "7m"
