"""A supervisor cancels an order with a reason from the cancel list (mes.domain.cancel): the rule on its own,
through mes.services.orders on both backends, and the migration that brought the kind."""
from __future__ import annotations

import pytest
from alembic import command
from conftest import auth, create_order
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import IntegrityError

from mes.domain import cancel
from mes.domain.actors import Actor, Role, Scope
from mes.domain.errors import Forbidden, ValidationFailed
from mes.domain.lifecycle import Status
from mes.domain.reason_codes import DEFAULT_CANCEL_REASONS, Kind
from mes.migrate import alembic_config
from mes.models import FloorEvent, Order, OrderEvent, ReasonCode
from mes.services import holds as hold_svc
from mes.services import orders as svc
from mes.services import reason_codes
from mes.services.accounts import operator_actor

SUPERVISOR = Actor("operator", 1, "chief", role=Role.SUPERVISOR)
OPERATOR = Actor("operator", 2, "olga", role=Role.OPERATOR)
PARTNER = Actor("client", 3, "acme-erp", scope=Scope.PARTNER, partner_id=1)


def code_id(db, code: str, kind: str = "cancel") -> int:
    return db.scalar(select(ReasonCode.id).where(ReasonCode.kind == kind, ReasonCode.code == code))


# ----------------------------------------------------------------------------------------------- the rule
def test_the_shop_floor_owes_a_reason_for_a_cancellation_and_a_partner_does_not():
    assert cancel.reason_owed(SUPERVISOR, Status.CANCELLED) and cancel.reason_owed(OPERATOR, Status.CANCELLED)
    assert not cancel.reason_owed(PARTNER, Status.CANCELLED)
    assert not cancel.reason_owed(SUPERVISOR, Status.QUEUED)


def test_a_cancellation_without_a_reason_is_refused_with_a_readable_message():
    with pytest.raises(ValidationFailed) as err:
        cancel.check_reason_given(None)
    assert err.value.detail == "A cancellation needs a reason: choose one of the listed cancel reasons."
    assert err.value.extensions["errors"][0]["field"] == "cancel_reason"
    cancel.check_reason_given(22)


def test_the_note_is_optional_unless_the_reason_needs_one():
    assert cancel.parse_note("  ", required=False) is None
    assert cancel.parse_note(" ordered twice by mail ", required=False) == "ordered twice by mail"
    with pytest.raises(ValidationFailed, match="needs a note saying why the order is cancelled"):
        cancel.parse_note("", required=True)
    with pytest.raises(ValidationFailed, match="at most 500"):
        cancel.parse_note("x" * 501, required=False)


def test_the_cancel_reasons_a_new_installation_starts_with():
    assert [s.code for s in DEFAULT_CANCEL_REASONS] == ["customer_request", "duplicate_order", "cannot_be_made",
                                                         "other"]
    assert [s.code for s in DEFAULT_CANCEL_REASONS if s.requires_note] == ["other"]


# ----------------------------------------------------------------------------------------------- the service
@pytest.fixture
def people(accounts_):
    return (operator_actor(accounts_.operator("chief", role="supervisor", display_name="The Chief")),
            operator_actor(accounts_.operator("olga", display_name="Olga K.")))


def unchanged(db, order_id: int, version: int = 1) -> None:
    db.rollback()
    order = db.get(Order, order_id)
    db.refresh(order)
    assert (order.status, order.status_version) == ("received", version)
    assert len(svc.history(db, order_id)) == version


def test_a_supervisor_cancels_with_a_reason_and_a_note_and_the_history_keeps_them(client, db, accounts_, people):
    chief, _ = people
    order_id = create_order(client, accounts_.partner()).get_json()["id"]
    change = svc.change_status(db, chief, order_id, Status.CANCELLED, cancel_reason_id=code_id(db, "duplicate_order"),
                               note=" Same as PO-0 ", expected_version=1)
    assert change.order.status == "cancelled" and change.previous is Status.RECEIVED
    event = svc.history(db, order_id)[-1]
    assert (event.to_status, event.actor, event.operator_id) == ("cancelled", "operator:chief", chief.id)
    assert (event.reason_code.kind, event.reason_code.code, event.note) == ("cancel", "duplicate_order", "Same as PO-0")
    assert event.created_at is not None


def test_a_cancel_without_a_reason_changes_nothing(client, db, accounts_, people):
    chief, _ = people
    order_id = create_order(client, accounts_.partner()).get_json()["id"]
    with pytest.raises(ValidationFailed, match="A cancellation needs a reason"):
        svc.change_status(db, chief, order_id, Status.CANCELLED, note="no reason given")
    unchanged(db, order_id)


@pytest.mark.parametrize("which", ["unknown", "retired", "another kind", "other without a note"])
def test_an_unknown_retired_or_wrong_reason_is_refused_and_nothing_changes(client, db, accounts_, people, which):
    chief, _ = people
    order_id = create_order(client, accounts_.partner()).get_json()["id"]
    chosen = {"unknown": 424242, "retired": code_id(db, "cannot_be_made"),
              "another kind": code_id(db, "tooling", "hold"), "other without a note": code_id(db, "other")}[which]
    if which == "retired":
        reason_codes.retire(db, chief, chosen)
    with pytest.raises(ValidationFailed) as err:
        svc.change_status(db, chief, order_id, Status.CANCELLED, cancel_reason_id=chosen)
    expected = "needs a note" if which == "other without a note" else "Choose one of the listed reasons"
    assert expected in err.value.detail
    unchanged(db, order_id)


def test_an_operator_may_not_cancel_even_with_a_reason(client, db, accounts_, people):
    _, olga = people
    order_id = create_order(client, accounts_.partner()).get_json()["id"]
    with pytest.raises(Forbidden, match="Only a supervisor may cancel"):
        svc.change_status(db, olga, order_id, Status.CANCELLED, cancel_reason_id=code_id(db, "customer_request"))
    unchanged(db, order_id)


def test_cancelling_ends_the_hold_and_releases_the_holder(client, db, accounts_, people):
    chief, olga = people
    order_id = create_order(client, accounts_.partner()).get_json()["id"]
    svc.claim(db, olga, order_id)
    hold_svc.put_on_hold(db, olga, order_id, code_id(db, "machine_down", "hold"))
    svc.change_status(db, chief, order_id, Status.CANCELLED, cancel_reason_id=code_id(db, "cannot_be_made"))
    order = db.get(Order, order_id)
    assert order.holder_id is None and order.hold_since is None and order.hold_reason_id is None
    floor = [(e.action, e.operator_id, e.by_id) for e in svc.floor_history(db, order_id)]
    assert floor == [("claim", olga.id, olga.id), ("release", olga.id, chief.id)]
    assert svc.my_work(db, olga.id, svc.day_start()).in_progress == []


def test_a_delivered_order_releases_its_holder(client, db, accounts_, people):
    chief, olga = people
    order_id = create_order(client, accounts_.partner()).get_json()["id"]
    svc.claim(db, olga, order_id)
    for target in (Status.QUEUED, Status.IN_PRODUCTION, Status.QUALITY_CHECK, Status.PACKED, Status.SHIPPED,
                   Status.DELIVERED):
        svc.change_status(db, olga, order_id, target)
    assert db.get(Order, order_id).holder_id is None
    assert [e.action for e in db.scalars(select(FloorEvent).where(FloorEvent.order_id == order_id)
                                         .order_by(FloorEvent.id))] == ["claim", "release"]


def test_a_partner_cancels_through_the_api_as_before(client, db, accounts_):
    partner = accounts_.partner()
    order_id = create_order(client, partner).get_json()["id"]
    r = client.post(f"/api/v1/orders/{order_id}/cancel", json={"reason": "no longer needed"}, headers=auth(partner))
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    event = db.scalar(select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id.desc()))
    assert (event.reason, event.reason_code_id, event.note) == ("no longer needed", None, None)


def test_the_partner_reads_the_factory_phrase_never_the_reason_or_the_note(client, db, accounts_, people):
    chief, _ = people
    partner = accounts_.partner()
    order_id = create_order(client, partner).get_json()["id"]
    svc.change_status(db, chief, order_id, Status.CANCELLED, cancel_reason_id=code_id(db, "duplicate_order"),
                      note="customer phoned twice")
    body = client.get("/api/v1/status-changes", headers=auth(partner)).get_data(as_text=True)
    assert "Cancelled by the factory." in body
    assert "Duplicate" not in body and "phoned" not in body


def test_the_cancel_list_is_kept_like_the_others(db, accounts_, people):
    chief, _ = people
    added = reason_codes.add(db, chief, Kind.CANCEL, "price_dispute", "Price dispute")
    assert [c.code for c in reason_codes.listed(db, Kind.CANCEL, active_only=True)][-1] == "price_dispute"
    assert added.kind == "cancel" and added.active


def test_the_database_refuses_a_kind_it_does_not_know(backend, db):
    with pytest.raises(IntegrityError):
        db.execute(text("INSERT INTO reason_codes (kind, code, label, requires_note, active, sort_order, created_at) "
                        "VALUES ('bogus', 'x', 'X', false, true, 1, CURRENT_TIMESTAMP)"))
        db.commit()
    db.rollback()


# ----------------------------------------------------------------------------------------------- the migration
def test_0010_widens_the_kind_and_keeps_every_code_and_what_refers_to_it(tmp_path):
    """On SQLite the table is copied (a CHECK cannot be altered there): ids, rows and the references into
    it survive, and the new check holds; down again, the cancel reasons go and the old check is back."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0009")
    engine = create_engine(url)
    with engine.begin() as conn:
        before = conn.execute(text("SELECT id, kind, code FROM reason_codes ORDER BY id")).all()
    command.upgrade(alembic_config(url), "0010")
    with engine.begin() as conn:
        after = conn.execute(text("SELECT id, kind, code FROM reason_codes ORDER BY id")).all()
        assert after[:len(before)] == before
        assert [(k, c) for _, k, c in after[len(before):]] == [("cancel", s.code) for s in DEFAULT_CANCEL_REASONS]
        assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
        sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'production_records'")).scalar()
        assert "REFERENCES reason_codes (id)" in sql
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("INSERT INTO reason_codes (kind, code, label, requires_note, active, sort_order, "
                          "created_at) VALUES ('bogus', 'x', 'X', 0, 1, 1, CURRENT_TIMESTAMP)"))
    command.downgrade(alembic_config(url), "0009")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id, kind, code FROM reason_codes ORDER BY id")).all() == before
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("INSERT INTO reason_codes (kind, code, label, requires_note, active, sort_order, "
                          "created_at) VALUES ('cancel', 'x', 'X', 0, 1, 1, CURRENT_TIMESTAMP)"))
    engine.dispose()
