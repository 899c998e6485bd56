"""A cancel (or a delivery confirmation) as API clients send it: safe to repeat, conditional, and
idempotent per key.

Integrators retry. A cancel of an order that is cancelled already answers with the order (200), not a
conflict: the state the caller asked for holds (RFC 9110, section 13.1.1, lets a server that can tell
a change has already happened answer 2xx). No second event is written and the first reason stays.
With an Idempotency-Key the answer is stored in the cancel's own transaction, and a retry with the
same key and body gets it back marked as a replay, whatever happened meanwhile. Only answers that
succeeded are stored: a refused cancel (404, 409, 412) leaves nothing behind, so the same key can be
sent again once the cause is gone (as for creates, whose refusals store nothing either).

The checks read the order without holding it; the change then runs only if the order still has the
status_version they saw (`expected_version`), else they run again on what it is now: a concurrent
cancel with the same key then replays, any other finds the order cancelled.

A partner's confirmation of delivery is the same kind of request (a move to an end state that the
caller asks for and may retry) and takes the same path to `delivered`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import begin_write
from ..domain import actors
from ..domain.actors import Actor
from ..domain.errors import Conflict, VersionConflict
from ..domain.lifecycle import Status
from ..domain.preconditions import IfMatch
from ..models import Order
from . import answers, orders
from .orders import StatusChanged, facts

#: Tries when the order changes between the checks and the change (each try sees a newer version).
ATTEMPTS = 3


@dataclass
class Answer:
    body: dict
    replayed: bool  # the stored answer to an earlier request with this key
    change: StatusChanged | None  # None when nothing changed (a replay, or cancelled before)


@dataclass(frozen=True)
class CancelRequest:
    reason: str | None
    key: str | None  # Idempotency-Key, when sent
    fingerprint: str  # of what was asked (mes.domain.idempotency.fingerprint)
    if_match: IfMatch | None  # the If-Match header, when sent


def cancel(session: Session, actor: Actor, order_id: int, request: CancelRequest,
           render: Callable[[Order], dict]) -> Answer:
    """Cancel the order once; a repeat gets the order (or, with the same key, the first answer)."""
    return move(session, actor, order_id, Status.CANCELLED, request, render)


def confirm_delivery(session: Session, actor: Actor, order_id: int, request: CancelRequest,
                     render: Callable[[Order], dict]) -> Answer:
    """Mark a shipped order delivered once (who and when are recorded); a repeat gets the order."""
    return move(session, actor, order_id, Status.DELIVERED, request, render)


def move(session: Session, actor: Actor, order_id: int, target: Status, request: CancelRequest,
         render: Callable[[Order], dict]) -> Answer:
    """Move the order to the end state `target` once; a repeat gets the order (or the first answer)."""
    for _ in range(ATTEMPTS):
        try:
            return _attempt(session, actor, order_id, target, request, render)
        except (VersionConflict, IntegrityError) as err:
            session.rollback()
            if isinstance(err, IntegrityError) and request.key is None:
                raise  # only the key's row can collide with another request's: anything else is a fault
            # Another change, or a request with this key, committed first: decide again on what is now.
    raise Conflict(f"Order {order_id} kept changing while it was being moved to {target.value!r}; "
                   "retry the request.")


def _attempt(session: Session, actor: Actor, order_id: int, target: Status, request: CancelRequest,
             render: Callable[[Order], dict]) -> Answer:
    begin_write(session)  # reads on the primary; an answer to remember is written here
    try:
        order = orders.get_order(session, actor, order_id)
        actors.require_move(actor, facts(order), target)
        earlier = answers.stored(session, actor.id, request.key, request.fingerprint)
        if earlier is not None:
            return Answer(earlier.body, True, None)
        if order.status == target.value:
            body = render(order)
            _remember(session, actor, request, order, body)
            session.commit()
            return Answer(body, False, None)
        if request.if_match is not None:
            request.if_match.check(order_id=order.id, version=order.status_version, status=order.status,
                                   updated_at=order.updated_at, estimate=order.projected_finish)
        actors.check_move(actor, facts(order), target, request.reason)
        seen = order.status_version
    finally:
        session.rollback()  # a no-op after the commit above; else ends the read
    answer: dict = {}

    def remember(changed: Order) -> None:
        answer["body"] = render(changed)
        _remember(session, actor, request, changed, answer["body"])

    change = orders.change_status(session, actor, order_id, target, reason=request.reason,
                                  expected_version=seen, before_commit=remember)
    return Answer(answer["body"], False, change)


def _remember(session: Session, actor: Actor, request: CancelRequest, order: Order, body: dict) -> None:
    """The answer to replay for this key (none without a key); a clash with a concurrent request
    of the same key fails the commit, and the next attempt replays that one's answer."""
    answers.remember(session, actor.id, request.key, request.fingerprint, 200, body, order_id=order.id)
