"""Shipments in the database (rules: mes.domain.shipments). The first shipment ships the order, in the
status change's own transaction; later ones are added under the order's row lock, so that two operators
recording at once cannot ship more than may leave."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db import begin_write
from ..domain import actors
from ..domain import shipments as rules
from ..domain.actors import Actor
from ..domain.errors import Forbidden, VersionConflict
from ..domain.lifecycle import Status
from ..models import Order, ProductionRecord, Shipment, utcnow
from . import orders
from .orders import StatusChanged
from .production import quantities_of


@dataclass(frozen=True)
class Limits:
    """How much of an order may leave, and how much has."""

    ordered: int
    produced: int
    shippable: int
    shipped: int

    @property
    def left(self) -> int:
        return max(self.shippable - self.shipped, 0)


@dataclass
class Recorded:
    shipment: Shipment
    change: StatusChanged | None  # the order shipped with this shipment (None for a later one)
    limits: Limits


def limits(session: Session, order: Order) -> Limits:
    recorded = session.scalar(select(func.count()).select_from(ProductionRecord)
                              .where(ProductionRecord.order_id == order.id)) > 0
    produced = quantities_of(session, order).produced if recorded else 0
    return Limits(ordered=order.quantity, produced=produced,
                  shippable=rules.shippable(order.quantity, produced, recorded),
                  shipped=shipped_quantity(session, order.id))


def shipped_quantity(session: Session, order_id: int) -> int:
    return session.scalar(select(func.coalesce(func.sum(Shipment.quantity), 0))
                          .where(Shipment.order_id == order_id))


def of_order(session: Session, actor: Actor, order_id: int) -> tuple[Order, list[Shipment]]:
    """The order's shipments, if this actor may see the order (another partner's is missing)."""
    order = orders.get_order(session, actor, order_id)
    return order, list(order.shipments)


def record(session: Session, actor: Actor, order_id: int, *, fields: dict, expected_version: int | None,
           late_reason_id: int | None = None) -> Recorded:
    """Record a shipment typed on the floor; on a packed order it ships the order.

    `fields` are the form's carrier, tracking_number, tracking_url, packages and quantity as typed."""
    if actor.kind != "operator":
        raise Forbidden("Shipments are recorded on the shop floor.")
    begin_write(session)
    try:
        order = orders.get_order(session, actor, order_id)
        status = Status(order.status)
        rules.check_may_ship(status)
        _check_version(order, expected_version)
        if status is Status.PACKED:  # shipping is a move like any other: its holder's or a supervisor's
            actors.require_move(actor, orders.facts(order), Status.SHIPPED)
        shipment = rules.parse(**fields, left=limits(session, order).left)
        seen = order.status_version
    finally:
        session.rollback()
    if status is Status.PACKED:
        return _ship(session, actor, order_id, shipment, seen, late_reason_id)
    return _add(session, actor, order_id, fields, expected_version)


def _ship(session: Session, actor: Actor, order_id: int, shipment: rules.Shipment, seen: int,
          late_reason_id: int | None) -> Recorded:
    """Packed to shipped with its first shipment; the version check keeps anything from slipping between."""
    rows: list[Shipment] = []

    def add(order: Order) -> None:
        rows.append(_row(order, actor, shipment, order.updated_at))  # the same instant as the change
        session.add(rows[0])

    change = orders.change_status(session, actor, order_id, Status.SHIPPED, expected_version=seen,
                                  late_reason_id=late_reason_id, before_commit=add)
    return Recorded(rows[0], change, limits(session, change.order))


def _add(session: Session, actor: Actor, order_id: int, fields: dict, expected_version: int | None) -> Recorded:
    """A further shipment of a shipped order, checked again under the order's lock."""
    begin_write(session)
    try:
        order = orders.get_order(session, actor, order_id, for_update=True)
        rules.check_may_ship(Status(order.status))
        _check_version(order, expected_version)
        shipment = rules.parse(**fields, left=limits(session, order).left)
        row = _row(order, actor, shipment, utcnow())
        session.add(row)
        order.updated_at = row.created_at  # the order resource changed: its ETag and `updated_since` say so
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return Recorded(row, None, limits(session, order))


def _row(order: Order, actor: Actor, shipment: rules.Shipment, at) -> Shipment:
    return Shipment(order_id=order.id, carrier=shipment.carrier, tracking_number=shipment.tracking_number,
                    tracking_url=shipment.tracking_url, packages=shipment.packages, quantity=shipment.quantity,
                    created_by_id=actor.id, created_at=at)


def _check_version(order: Order, expected: int | None) -> None:
    if expected is not None and order.status_version != expected:
        raise VersionConflict(
            f"Order {order.id} changed meanwhile: it is now {order.status!r} (version {order.status_version}).",
            current_status=order.status, status_version=order.status_version)
