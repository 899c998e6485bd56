"""Who acts on orders, and what each of them may do."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .errors import Forbidden, InvalidTransition
from .lifecycle import TRANSITIONS, Status, check_transition

S = Status


class Role(StrEnum):
    OPERATOR = "operator"
    SUPERVISOR = "supervisor"


class Scope(StrEnum):
    PARTNER = "partner"  # its own orders: create, read, cancel, confirm delivery
    CRM = "crm"  # every order and the feed, read only


@dataclass(frozen=True)
class Actor:
    """The one who asks: an operator (with a role) or an API client (with a scope)."""

    kind: str  # "operator" or "client"
    id: int
    name: str
    role: Role | None = None
    scope: Scope | None = None
    partner_id: int | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def is_supervisor(self) -> bool:
        return self.role is Role.SUPERVISOR


def is_client_label(label: str) -> bool:
    """Whether a stored actor label (Actor.label) names an API client rather than the shop floor."""
    return label.startswith("client:")


@dataclass(frozen=True)
class OrderFacts:
    """What permission checks need to know about an order."""

    status: Status
    partner_id: int
    holder_id: int | None


# Moves any operator may make on any order: triage of new orders and delivery confirmation.
_ANY_OPERATOR = {(S.RECEIVED, S.QUEUED), (S.SHIPPED, S.DELIVERED)}
# A partner cancels its orders and confirms that they arrived (the lifecycle says when each may happen).
_PARTNER_MOVES = (S.CANCELLED, S.DELIVERED)


def sees_order(actor: Actor, order: OrderFacts) -> bool:
    """Partners see only their own orders; operators and the CRM see all."""
    if actor.kind == "client" and actor.scope is Scope.PARTNER:
        return order.partner_id == actor.partner_id
    return True


def may_write(actor: Actor) -> bool:
    """Whether the actor can change anything at all: CRM keys cannot (every check below says no to them).
    Read-your-writes relies on this: an actor that never writes has no write to wait for."""
    return actor.kind == "operator" or actor.scope is Scope.PARTNER


def may_create_orders(actor: Actor) -> None:
    if not (actor.kind == "client" and actor.scope is Scope.PARTNER):
        raise Forbidden("Only partner clients create orders; this key is read-only.")


def may_move(actor: Actor, order: OrderFacts, target: Status) -> bool:
    """Whether the actor may move the order to `target` (the lifecycle is checked separately)."""
    if actor.kind == "client":
        return actor.scope is Scope.PARTNER and target in _PARTNER_MOVES and order.partner_id == actor.partner_id
    if actor.is_supervisor:
        return True
    if target is S.CANCELLED:
        return False  # cancelling a customer's order is a supervisor's call
    if (order.status, target) in _ANY_OPERATOR:
        return True
    return order.holder_id == actor.id


def allowed_moves(actor: Actor, order: OrderFacts) -> list[Status]:
    """The lifecycle edges from the current status that this actor may take now."""
    return [t for t in TRANSITIONS[order.status] if may_move(actor, order, t)]


def check_move(actor: Actor, order: OrderFacts, target: Status, reason: str | None = None) -> None:
    """The lifecycle's check, its refusal listing only the moves this actor may make now: a partner
    is never told of the factory's own steps (queue, produce, ship), which it can never take."""
    try:
        check_transition(order.status, target, reason)
    except InvalidTransition as err:
        err.extensions["allowed_transitions"] = [s.value for s in allowed_moves(actor, order)]
        raise


def may_claim(actor: Actor, order: OrderFacts) -> bool:
    """Operators take unheld orders that are not finished yet."""
    return actor.kind == "operator" and order.holder_id is None and bool(TRANSITIONS[order.status])


def may_release(actor: Actor, order: OrderFacts) -> bool:
    return actor.kind == "operator" and order.holder_id is not None and (
        order.holder_id == actor.id or actor.is_supervisor
    )


def require_move(actor: Actor, order: OrderFacts, target: Status) -> None:
    if not may_move(actor, order, target):
        if actor.kind == "client" and actor.scope is Scope.CRM:
            raise Forbidden("CRM keys are read-only.")
        if actor.kind == "operator" and target is S.CANCELLED:
            raise Forbidden("Only a supervisor may cancel an order.")
        raise Forbidden("Claim the order first: only its holder or a supervisor may move it.")


def require_hold(actor: Actor) -> None:
    """Holds are the shop floor's record of why an order is not moving: any operator or supervisor
    sets and releases them; partners and the CRM read them and cannot change them."""
    if actor.kind == "operator":
        return
    if actor.scope is Scope.CRM:
        raise Forbidden("CRM keys are read-only; holds are set on the shop floor.")
    raise Forbidden("Holds are set and released on the shop floor.")


def require_supervisor(actor: Actor, what: str) -> None:
    if not (actor.kind == "operator" and actor.is_supervisor):
        raise Forbidden(f"Only a supervisor may {what}.")
