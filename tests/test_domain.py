"""The domain rules on their own: no Flask, no database."""
from datetime import date

import pytest

from mes.domain import actors
from mes.domain.actors import Actor, OrderFacts, Role, Scope
from mes.domain.errors import (
    Forbidden, IdempotencyKeyMissing, IdempotencyKeyReused, InvalidTransition, ValidationFailed,
)
from mes.domain.idempotency import check_key, check_replay, fingerprint
from mes.domain.lifecycle import TRANSITIONS, Status, check_transition, parse_status
from mes.domain.logins import login_problem, normalize_login
from mes.domain.promises import is_overdue, promised_date
from mes.domain.sessions import (
    Ending, SessionPolicy, ending_by_account, ending_by_time, parse_session_token, session_token,
)

S = Status
HAPPY_PATH = [S.RECEIVED, S.QUEUED, S.IN_PRODUCTION, S.QUALITY_CHECK, S.PACKED, S.SHIPPED, S.DELIVERED]

operator = Actor("operator", 1, "olga", role=Role.OPERATOR)
other_operator = Actor("operator", 2, "ivan", role=Role.OPERATOR)
supervisor = Actor("operator", 3, "chief", role=Role.SUPERVISOR)
partner = Actor("client", 10, "acme-erp", scope=Scope.PARTNER, partner_id=100)
other_partner = Actor("client", 11, "globex", scope=Scope.PARTNER, partner_id=101)
crm = Actor("client", 12, "crm", scope=Scope.CRM)


@pytest.mark.parametrize("current,target", list(zip(HAPPY_PATH, HAPPY_PATH[1:])))
def test_happy_path_edges_are_allowed(current, target):
    check_transition(current, target)


def test_every_other_edge_is_refused_with_the_allowed_list():
    for current in Status:
        for target in Status:
            if target in TRANSITIONS[current]:
                continue
            with pytest.raises(InvalidTransition) as err:
                check_transition(current, target)
            assert err.value.status == 409
            assert err.value.extensions["allowed_transitions"] == [s.value for s in TRANSITIONS[current]]
            assert err.value.extensions["current_status"] == current.value


def test_cancel_only_from_received_or_queued():
    assert {s for s in Status if S.CANCELLED in TRANSITIONS[s]} == {S.RECEIVED, S.QUEUED}


def test_delivered_and_cancelled_are_final():
    assert TRANSITIONS[S.DELIVERED] == () and TRANSITIONS[S.CANCELLED] == ()


def test_rework_needs_a_reason():
    with pytest.raises(ValidationFailed):
        check_transition(S.QUALITY_CHECK, S.IN_PRODUCTION, "  ")
    check_transition(S.QUALITY_CHECK, S.IN_PRODUCTION, "burr on edge")


def test_parse_status_names_the_valid_values():
    assert parse_status("packed") is S.PACKED
    with pytest.raises(ValidationFailed) as err:
        parse_status("done")
    assert "delivered" in err.value.extensions["errors"][0]["message"]


def test_partners_see_only_their_own_orders():
    order = OrderFacts(S.RECEIVED, partner_id=100, holder_id=None)
    assert actors.sees_order(partner, order)
    assert not actors.sees_order(other_partner, order)
    assert actors.sees_order(crm, order) and actors.sees_order(operator, order)


def test_crm_writes_nothing():
    order = OrderFacts(S.RECEIVED, partner_id=100, holder_id=None)
    with pytest.raises(Forbidden):
        actors.may_create_orders(crm)
    assert actors.allowed_moves(crm, order) == []
    with pytest.raises(Forbidden):
        actors.require_move(crm, order, S.CANCELLED)


def test_may_write_says_no_only_to_actors_that_no_rule_lets_write():
    """Read-your-writes skips the actors may_write rules out: it must agree with every write rule."""
    assert [a for a in (operator, supervisor, partner, other_partner, crm) if not actors.may_write(a)] == [crm]
    for status in Status:
        for holder in (None, crm.id):
            order = OrderFacts(status, partner_id=100, holder_id=holder)
            assert not actors.allowed_moves(crm, order) and not actors.may_claim(crm, order)
            assert not actors.may_release(crm, order)
    with pytest.raises(Forbidden):
        actors.may_create_orders(crm)


def test_partner_may_cancel_own_order_only():
    order = OrderFacts(S.QUEUED, partner_id=100, holder_id=None)
    assert actors.allowed_moves(partner, order) == [S.CANCELLED]
    assert actors.allowed_moves(other_partner, order) == []
    actors.may_create_orders(partner)


def test_operator_needs_to_hold_the_order_to_produce_it():
    unheld = OrderFacts(S.QUEUED, partner_id=100, holder_id=None)
    held = OrderFacts(S.QUEUED, partner_id=100, holder_id=operator.id)
    assert actors.allowed_moves(operator, unheld) == []
    assert actors.allowed_moves(operator, held) == [S.IN_PRODUCTION]
    assert actors.allowed_moves(other_operator, held) == []
    assert actors.allowed_moves(supervisor, held) == [S.IN_PRODUCTION, S.CANCELLED]


def test_any_operator_triages_and_confirms_delivery_but_only_supervisors_cancel():
    new = OrderFacts(S.RECEIVED, partner_id=100, holder_id=None)
    assert actors.allowed_moves(operator, new) == [S.QUEUED]
    assert actors.allowed_moves(operator, OrderFacts(S.SHIPPED, 100, None)) == [S.DELIVERED]
    with pytest.raises(Forbidden, match="supervisor"):
        actors.require_move(operator, new, S.CANCELLED)


def test_claim_and_release_rules():
    unheld = OrderFacts(S.QUEUED, partner_id=100, holder_id=None)
    held = OrderFacts(S.QUEUED, partner_id=100, holder_id=operator.id)
    assert actors.may_claim(operator, unheld) and not actors.may_claim(operator, held)
    assert not actors.may_claim(operator, OrderFacts(S.DELIVERED, 100, None))
    assert not actors.may_claim(partner, unheld)
    assert actors.may_release(operator, held) and actors.may_release(supervisor, held)
    assert not actors.may_release(other_operator, held)


def test_idempotency_fingerprint_ignores_key_order_but_not_values():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    check_replay(fingerprint({"a": 1}), fingerprint({"a": 1}))
    with pytest.raises(IdempotencyKeyReused):
        check_replay(fingerprint({"a": 1}), fingerprint({"a": 2}))


def test_idempotency_key_must_be_present_and_bounded():
    with pytest.raises(IdempotencyKeyMissing):
        check_key(None)
    with pytest.raises(IdempotencyKeyMissing):
        check_key("   ")
    with pytest.raises(ValidationFailed):
        check_key("k" * 256)
    assert check_key(" abc ") == "abc"


def test_promised_date_defaults_to_lead_time_and_refuses_earlier():
    assert promised_date(date(2026, 1, 1), 21, None) == date(2026, 1, 22)
    assert promised_date(date(2026, 1, 1), 21, date(2026, 3, 1)) == date(2026, 3, 1)
    with pytest.raises(ValidationFailed):
        promised_date(date(2026, 1, 1), 21, date(2026, 1, 21))


def test_overdue_only_while_the_factory_still_owes_the_order():
    assert is_overdue(S.IN_PRODUCTION, date(2026, 1, 1), date(2026, 1, 2))
    assert not is_overdue(S.IN_PRODUCTION, date(2026, 1, 2), date(2026, 1, 2))
    assert not is_overdue(S.SHIPPED, date(2026, 1, 1), date(2026, 1, 2))
    assert not is_overdue(S.CANCELLED, date(2026, 1, 1), date(2026, 1, 2))


@pytest.mark.parametrize("spelling", ["olga", " olga", "olga\t\n", "OLGA", "Olga", "\u3000olga\u00a0",
                                      "\uff4f\uff4c\uff47\uff41", "\uff2f\uff2c\uff27\uff21"])
def test_every_spelling_of_a_login_normalises_to_one(spelling):
    assert normalize_login(spelling) == "olga"


def test_normalising_folds_case_beyond_ascii_and_keeps_inner_words_apart():
    assert normalize_login("STRASSE") == normalize_login("straße") == "strasse"
    assert normalize_login("  anna   maria ") == "anna maria"
    assert normalize_login(normalize_login("\u212bngstr\u00f6m")) == normalize_login("\u212bngstr\u00f6m")


@pytest.mark.parametrize("login,problem", [("", "needed"), ("x" * 65, "at most 64"),
                                           ("olga\u200b", "letters"), ("ol\x00ga", "letters")])
def test_a_new_login_must_be_visible_and_bounded(login, problem):
    assert problem in login_problem(login)


def test_a_plain_login_is_fine():
    assert login_problem(normalize_login("Olga K.")) is None


SHIFT = SessionPolicy(idle_seconds=1800, lifetime_seconds=12 * 3600)


def test_a_session_lives_until_idle_or_lifetime_runs_out():
    assert ending_by_time(SHIFT, started_at=0, seen_at=0, now=1799) is None
    assert ending_by_time(SHIFT, started_at=0, seen_at=0, now=1800) is Ending.IDLE
    assert ending_by_time(SHIFT, started_at=0, seen_at=43_000, now=43_199) is None
    assert ending_by_time(SHIFT, started_at=0, seen_at=43_199, now=43_200) is Ending.LIFETIME


def test_only_the_current_generation_of_an_active_operator_lives():
    assert ending_by_account(3, current_generation=3, active=True) is None
    assert ending_by_account(2, current_generation=3, active=True) is Ending.REVOKED
    assert ending_by_account(3, current_generation=3, active=False) is Ending.REVOKED


@pytest.mark.parametrize("token", ["7", "7:", ":2", "7:x", "7:2:1", "\u0667:2", "-7:2", ""])
def test_a_token_names_an_operator_and_a_generation_or_nothing(token):
    assert parse_session_token(token) is None


def test_a_token_round_trips():
    assert parse_session_token(session_token(7, 2)) == (7, 2)
