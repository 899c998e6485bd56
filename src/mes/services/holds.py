"""Putting orders on hold and releasing them: the order row keeps the running hold and the earlier
hold seconds (mes.domain.holds), the events keep who, when, why and the internal note."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from ..db import begin_write
from ..domain import actors, holds
from ..domain.actors import Actor
from ..domain.errors import VersionConflict
from ..domain.holds import EventKind
from ..domain.lifecycle import Status
from ..domain.reason_codes import Kind
from ..models import Order, OrderEvent, ReasonCode, utcnow
from . import forecast, reason_codes
from .orders import end_hold, get_order, state_of


@dataclass
class HoldChanged:
    order: Order
    kind: EventKind




def put_on_hold(session: Session, actor: Actor, order_id: int, reason_code_id: int | None, note: str | None = None,
                *, expected_version: int | None = None) -> HoldChanged:
    """Stop an open order for a reason; "other" and codes like it need a note."""
    actors.require_hold(actor)
    begin_write(session)
    try:
        order = _locked(session, actor, order_id, expected_version)
        holds.check_can_hold(Status(order.status), state_of(order))
        code = reason_codes.choosable(session, Kind.HOLD, reason_code_id)
        text = holds.parse_note(note, required=code.requires_note)
        now = utcnow()
        order.hold_since, order.hold_reason = now, code
        _record(session, actor, order, EventKind.HOLD, code, text, now)
        _hold_explains_lateness(session, order, code)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return HoldChanged(order, EventKind.HOLD)


def release_hold(session: Session, actor: Actor, order_id: int, note: str | None = None,
                 *, expected_version: int | None = None) -> HoldChanged:
    """End the hold; its time joins the order's earlier hold seconds."""
    actors.require_hold(actor)
    begin_write(session)
    try:
        order = _locked(session, actor, order_id, expected_version)
        state = state_of(order)
        holds.check_can_release(state)
        text = holds.parse_note(note, required=False)
        now = utcnow()
        code = order.hold_reason
        end_hold(order, now)
        _record(session, actor, order, EventKind.RELEASE, code, text, now)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return HoldChanged(order, EventKind.RELEASE)


def _hold_explains_lateness(session: Session, order: Order, code: ReasonCode) -> None:
    """A hold on an order at risk or late with no recorded cause is its cause: the late reason of the
    same code (Machine down holds it, Machine down made it late), so nobody is asked twice."""
    if forecast.late_reason_owed(order):
        twin = reason_codes.twin(session, code, Kind.LATE)
        if twin is not None:
            order.late_reason_id = twin.id


def _locked(session: Session, actor: Actor, order_id: int, expected_version: int | None) -> Order:
    order = get_order(session, actor, order_id, for_update=True)
    if expected_version is not None and order.status_version != expected_version:
        raise VersionConflict(
            f"Order {order_id} changed meanwhile (version {order.status_version}); look again before holding it.",
            current_status=order.status, status_version=order.status_version)
    return order


def _record(session: Session, actor: Actor, order: Order, kind: EventKind, code: ReasonCode | None,
            note: str | None, now) -> None:
    """A hold or release is a version of the order like a status change: caches, ETags and the feed
    see it; the status stays what it was."""
    order.status_version, order.updated_at = order.status_version + 1, now
    move = forecast.refresh(session, order, now)
    session.add(forecast.stamp(OrderEvent(
        order_id=order.id, partner_id=order.partner_id, from_status=order.status, to_status=order.status,
        status_version=order.status_version, actor=actor.label,
        operator_id=actor.id if actor.kind == "operator" else None, kind=kind.value, reason_code=code, note=note,
        created_at=now), move))
