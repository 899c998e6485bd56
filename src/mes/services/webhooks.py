"""Webhooks: the outbox written with every order change, the endpoints partners register, and their
delivery log, replays and test events. Sending is mes.webhook_worker's.

The outbox is filled by a session hook rather than by each write path: every change a partner hears of
(status, promise, hold, release, shipping) writes an OrderEvent, so the hook collects the events each
flush writes and, just before the transaction commits, adds one outbox row per webhook event and one
delivery row per endpoint that wants it. They commit or roll back with the change itself, and no new
write path can forget them.

Every webhook event gets its outbox row even when no endpoint wants it yet: that is what lets an endpoint
registered later replay a time range it missed. The outbox keeps events for `webhook_retention_days`
(longer than the retries), after which `prune_outbox` (a scheduler job) removes finished ones."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, event, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ..db import begin_write
from ..domain import inputs
from ..domain import webhooks as rules
from ..domain.actors import Actor
from ..domain.errors import Conflict, Forbidden, NotFound, ValidationFailed
from ..domain.holds import EventKind
from ..models import (Order, OrderEvent, Shipment, WebhookAttempt, WebhookDelivery,
                      WebhookEndpoint, WebhookEvent, iso, utcnow)
from . import answers, cursors
from .event_facts import event_facts

PENDING = "mes_webhook_pending"


# --------------------------------------------------------------------------------------------- outbox
def capture_order_events(factory: sessionmaker) -> None:
    """Make every session of `factory` write the outbox of its order events in their own transaction."""
    event.listen(factory, "after_flush", _collect)
    event.listen(factory, "before_commit", _write_outbox)
    event.listen(factory, "after_transaction_end", _forget)


def _collect(session: Session, _flush_context) -> None:
    # The shipments recorded with a change to shipped may be flushed after its event (autoflush): both
    # are kept until the commit.
    written = [o for o in session.new if isinstance(o, (OrderEvent, Shipment))]
    if written:
        session.info.setdefault(PENDING, []).extend(written)


def _forget(session: Session, transaction) -> None:
    if transaction.parent is None:
        session.info.pop(PENDING, None)


def _write_outbox(session: Session) -> None:
    """One outbox row per webhook event of the transaction's order events, subscribed to or not (a range
    replay sends them later to an endpoint registered since), and one delivery per endpoint that wants it."""
    session.flush()
    pending = session.info.pop(PENDING, None)
    if not pending:
        return
    events = [e for e in pending if isinstance(e, OrderEvent)]
    if not events:
        return
    shipments = [s for s in pending if isinstance(s, Shipment)]
    references = dict(session.execute(select(Order.id, Order.reference)
                                      .where(Order.id.in_({e.order_id for e in events}))).all())
    endpoints = _subscribers(session, {e.partner_id for e in events})
    for ev in events:
        for kind in rules.types_of(ev.kind or EventKind.STATUS.value, ev.from_status, ev.to_status,
                                   ev.from_promise, ev.to_promise):
            data = event_facts(ev, references.get(ev.order_id, ""),
                              [s for s in shipments if s.order_id == ev.order_id]
                              if kind == rules.EventType.SHIPPED.value else None)
            enqueue(session, kind, data, ev.created_at,
                    [p for p in endpoints if kind in p.types and p.partner_id in (None, ev.partner_id)])


def _subscribers(session: Session, partner_ids: set[int]) -> list[WebhookEndpoint]:
    return list(session.scalars(select(WebhookEndpoint).where(
        WebhookEndpoint.active.is_(True),
        or_(WebhookEndpoint.partner_id.is_(None), WebhookEndpoint.partner_id.in_(partner_ids)))))


def enqueue(session: Session, kind: str, data: dict, at: datetime, endpoints: list[WebhookEndpoint]) -> WebhookEvent:
    """One outbox event and a delivery of it, due now, to each endpoint."""
    row = WebhookEvent(msg_id=rules.new_message_id(), type=kind, partner_id=data.get("partner_id"),
                       order_id=data.get("order_id"), created_at=at,
                       payload=json.dumps({"type": kind, "timestamp": iso(at), "data": data}, separators=(",", ":")))
    session.add(row)
    for endpoint in endpoints:
        session.add(WebhookDelivery(event=row, endpoint_id=endpoint.id, state="pending", attempts=0,
                                    next_attempt_at=at, replay=False, created_at=at))
    return row


# --------------------------------------------------------------------------------------------- once per key
@dataclass(frozen=True)
class Once:
    """The Idempotency-Key of an API request (None: none sent, or the CLI) and the fingerprint of what
    it asked (mes.domain.idempotency.fingerprint)."""
    key: str | None = None
    fingerprint: str = ""


@dataclass
class Answer:
    body: dict
    replayed: bool  # the stored answer to an earlier request with this Idempotency-Key


def _once(session: Session, actor: Owner, once: Once, status: int, change: Callable[[], dict], *,
          check: Callable[[], object] | None = None, still: Callable[[dict], object] | None = None) -> Answer:
    """Make `change` (which writes and returns the answer) in one transaction, once per key: its answer is
    stored in that same transaction (mes.services.answers), and a retry with the key gets it back and
    changes nothing. `check` runs first (may the caller see the endpoint at all?); `still` is given a
    stored answer before it is replayed (does what it names still exist?); without a key, `change`
    simply runs."""
    client = actor.id if actor is not None else None
    begin_write(session)
    try:
        if check is not None:
            check()
        earlier = answers.stored(session, client, once.key, once.fingerprint)
        if earlier is not None:
            if still is not None:
                still(earlier.body)
            return Answer(earlier.body, True)
        body = change()
        answers.remember(session, client, once.key, once.fingerprint, status, body)
        session.commit()
        return Answer(body, False)
    except IntegrityError:
        # A concurrent request with this key committed first (the only row that can collide): its answer.
        session.rollback()
        earlier = answers.stored(session, client, once.key, once.fingerprint)
        if earlier is None:
            raise
        return Answer(earlier.body, True)
    finally:
        session.rollback()  # a no-op after the commit; ends the read of a replayed answer or an error


# --------------------------------------------------------------------------------------------- endpoints
#: Who manages endpoints: an API client (a partner: its own; the CRM: its own, which hear every partner),
#: or the CLI (None: every endpoint).
Owner = Actor | None


def _owner_partner(actor: Owner) -> int | None:
    return actor.partner_id if actor is not None else None


def _visible(stmt, actor: Owner):
    if actor is None:
        return stmt
    if actor.kind != "client":
        raise Forbidden("Webhook endpoints are managed by API clients and the CLI.")
    pid = _owner_partner(actor)
    return stmt.where(WebhookEndpoint.partner_id == pid if pid is not None else WebhookEndpoint.partner_id.is_(None))


def list_endpoints(session: Session, actor: Owner) -> list[WebhookEndpoint]:
    return list(session.scalars(_visible(select(WebhookEndpoint), actor).order_by(WebhookEndpoint.id)))


def get_endpoint(session: Session, actor: Owner, endpoint_id: int, *, for_update: bool = False) -> WebhookEndpoint:
    """The endpoint if this caller may see it; another partner's is as missing as a missing one."""
    stmt = _visible(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id), actor)
    found = session.scalar(stmt.with_for_update() if for_update else stmt)
    if found is None:
        raise NotFound(f"Webhook endpoint {endpoint_id} does not exist.")
    return found


@dataclass
class Created:
    endpoint: WebhookEndpoint
    secret: str  # shown once


def _description(value: object) -> str | None:
    """One line of at most 200 characters, under the same rule as every text field (mes.domain.inputs)."""
    if value is None:
        return None
    try:
        if not isinstance(value, str) or len(value) > 200:
            raise ValueError("must be text of at most 200 characters")
        inputs.check_text(value)
    except ValueError as err:
        raise ValidationFailed(f"description {err}.", errors=[{"field": "description", "message": str(err)}]) from None
    return value.strip() or None


def _active(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValidationFailed("active must be true or false.",
                               errors=[{"field": "active", "message": "must be a boolean"}])
    return value


def create_endpoint(session: Session, actor: Owner, fields: dict, policy: rules.AddressPolicy,
                    render: Callable[[Created], dict], *, partner_id: int | None = None,
                    once: Once = Once()) -> Answer:
    """Register an endpoint (the CLI names the partner; a client registers for itself). With an
    Idempotency-Key a retry gets the first answer, the same endpoint and secret, and registers nothing:
    a second endpoint would hear every event twice. That answer, secret included, is kept in the key's
    idempotency record until the purge of keys removes it (mes.services.answers)."""
    url = rules.parse_url(fields.get("url"), policy)
    types = rules.parse_event_types(fields.get("event_types"))
    description, active = _description(fields.get("description")), _active(fields.get("active", True))

    def register() -> dict:
        now, secret = utcnow(), rules.new_secret()
        endpoint = WebhookEndpoint(partner_id=_owner_partner(actor) if actor is not None else partner_id, url=url,
                                   event_types=" ".join(types), description=description, active=active,
                                   secret=secret, created_at=now, updated_at=now)
        session.add(endpoint)
        session.flush()
        return render(Created(endpoint, secret))

    def still_registered(first: dict) -> None:
        if session.get(WebhookEndpoint, first["id"]) is None:
            raise Conflict(f"The webhook endpoint registered with this Idempotency-Key ({first['id']}) has been "
                           "removed since; register it again with a new key.")

    return _once(session, actor, once, 201, register, still=still_registered)


def update_endpoint(session: Session, actor: Owner, endpoint_id: int, fields: dict,
                    policy: rules.AddressPolicy) -> WebhookEndpoint:
    """Change the URL, the event types, the description or the active flag (only those given)."""
    unknown = sorted(set(fields) - {"url", "event_types", "description", "active"})
    if unknown:
        raise ValidationFailed(f"{unknown[0]} cannot be changed.",
                               errors=[{"field": f, "message": "may not be set by clients"} for f in unknown])
    url = rules.parse_url(fields["url"], policy) if "url" in fields else None
    types = rules.parse_event_types(fields["event_types"]) if "event_types" in fields else None
    description = _description(fields.get("description")) if "description" in fields else None
    active = _active(fields["active"]) if "active" in fields else None
    begin_write(session)
    try:
        endpoint = get_endpoint(session, actor, endpoint_id, for_update=True)
        if url is not None:
            endpoint.url = url
        if types is not None:
            endpoint.event_types = " ".join(types)
        if "description" in fields:
            endpoint.description = description
        if active is not None:
            endpoint.active = active
        endpoint.updated_at = utcnow()
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return endpoint


def delete_endpoint(session: Session, actor: Owner, endpoint_id: int) -> None:
    """Remove an endpoint with its deliveries (the events stay in the outbox)."""
    begin_write(session)
    try:
        endpoint = get_endpoint(session, actor, endpoint_id, for_update=True)
        session.execute(WebhookDelivery.__table__.delete().where(WebhookDelivery.endpoint_id == endpoint.id))
        session.delete(endpoint)
        session.commit()
    except BaseException:
        session.rollback()
        raise


def rotate_secret(session: Session, actor: Owner, endpoint_id: int, overlap: timedelta,
                  render: Callable[[Created], dict], *, once: Once = Once(), now: datetime | None = None) -> Answer:
    """A new secret; the one it replaces keeps signing beside it for `overlap`, so that receivers can
    switch without losing a delivery. With an Idempotency-Key a retry gets the first new secret back
    and rotates nothing: a second rotation would push out the old secret while the receiver, which never
    got the first answer, still has only that one. The new secret is kept in the key's idempotency
    record, as the register's is, until the purge of keys."""
    now = now or utcnow()

    def rotate() -> dict:
        endpoint = get_endpoint(session, actor, endpoint_id, for_update=True)
        secret = rules.new_secret()
        endpoint.previous_secret, endpoint.previous_secret_until = endpoint.secret, now + overlap
        endpoint.secret, endpoint.updated_at = secret, now
        session.flush()
        return render(Created(endpoint, secret))

    return _once(session, actor, once, 200, rotate, check=lambda: get_endpoint(session, actor, endpoint_id))


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets that sign a delivery now: the current one, and the previous during its overlap."""
    found = [endpoint.secret]
    if endpoint.previous_secret and endpoint.previous_secret_until and now < endpoint.previous_secret_until:
        found.append(endpoint.previous_secret)
    return found


# --------------------------------------------------------------------------------------------- log
@dataclass
class DeliveryPage:
    items: list[WebhookDelivery]
    next_cursor: str | None


def deliveries(session: Session, actor: Owner, endpoint_id: int, *, after: str | None, limit: int) -> DeliveryPage:
    """An endpoint's deliveries, newest first, each with its attempts."""
    get_endpoint(session, actor, endpoint_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if after:
        (last,) = cursors.decode(after, cursors.row_id)
        stmt = stmt.where(WebhookDelivery.id < last)
    rows = list(session.scalars(stmt.order_by(WebhookDelivery.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return DeliveryPage(rows, cursors.encode(rows[-1].id) if more else None)


def replay(session: Session, actor: Owner, endpoint_id: int, delivery_id: int,
           render: Callable[[WebhookDelivery], dict], *, retention: timedelta | None = None,
           once: Once = Once()) -> Answer:
    """Send one event again to this endpoint, now (the same webhook-id: receivers may drop it as seen).
    An event past the outbox's `retention` is not replayed: the pruning may be removing it. With an
    Idempotency-Key a retry gets the first answer and queues nothing."""

    def queue() -> dict:
        endpoint = get_endpoint(session, actor, endpoint_id)
        earlier = session.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                                               WebhookDelivery.endpoint_id == endpoint.id))
        if earlier is None:
            raise NotFound(f"Delivery {delivery_id} of endpoint {endpoint_id} does not exist.")
        now = utcnow()
        if retention is not None and earlier.event.created_at < now - retention:
            raise Conflict(f"The event of delivery {delivery_id} is older than the outbox's retention of "
                           f"{retention.days} days and is no longer replayed.")
        again = WebhookDelivery(event_id=earlier.event_id, endpoint_id=endpoint.id, state="pending", attempts=0,
                                next_attempt_at=now, replay=True, created_at=now)
        session.add(again)
        session.flush()
        return render(again)

    return _once(session, actor, once, 202, queue, check=lambda: get_endpoint(session, actor, endpoint_id))


def send_test(session: Session, actor: Owner, endpoint_id: int, render: Callable[[WebhookDelivery], dict], *,
              once: Once = Once()) -> Answer:
    """A `webhook.test` event for this endpoint alone, whatever it subscribed to. With an Idempotency-Key
    a retry gets the first answer and queues no second test event."""

    def queue() -> dict:
        endpoint = get_endpoint(session, actor, endpoint_id)
        now = utcnow()
        ev = enqueue(session, rules.TEST_EVENT, {"endpoint_id": endpoint.id, "partner_id": endpoint.partner_id,
                                                 "sent_at": iso(now)}, now, [])
        delivery = WebhookDelivery(event=ev, endpoint_id=endpoint.id, state="pending", attempts=0,
                                   next_attempt_at=now, replay=False, created_at=now)
        session.add(delivery)
        session.flush()
        return render(delivery)

    return _once(session, actor, once, 202, queue, check=lambda: get_endpoint(session, actor, endpoint_id))


# --------------------------------------------------------------------------------------------- range replay
@dataclass(frozen=True)
class ReplayLimits:
    max_days: float
    max_events: int
    retention: timedelta


@dataclass(frozen=True)
class RangeQueued:
    endpoint_id: int
    range: rules.ReplayRange
    queued: int


def replay_range(session: Session, actor: Owner, endpoint_id: int, fields: dict, limits: ReplayLimits,
                 render: Callable[[RangeQueued], dict], *, once: Once = Once(),
                 now: datetime | None = None) -> Answer:
    """Send the events of a time range again to one endpoint: one new delivery per event, each with the
    event's own webhook-id. Only events the endpoint may hear (its partner's; every partner's for the
    CRM's) of the types asked. More than `limits.max_events` is refused whole, never cut short.
    With an Idempotency-Key the answer is stored in the same transaction and a retry gets it back."""
    now = now or utcnow()

    def queue() -> dict:
        endpoint = get_endpoint(session, actor, endpoint_id)
        wanted = rules.parse_replay_range(fields, endpoint.types, now, limits.max_days, limits.retention)
        if not endpoint.active:
            raise Conflict(f"Webhook endpoint {endpoint_id} is not active: activate it before replaying to it.")
        events = select(WebhookEvent.id).where(WebhookEvent.created_at >= wanted.start,
                                               WebhookEvent.created_at < wanted.end,
                                               WebhookEvent.type.in_(wanted.types))
        if endpoint.partner_id is not None:
            events = events.where(WebhookEvent.partner_id == endpoint.partner_id)
        ids = list(session.scalars(events.order_by(WebhookEvent.id).limit(limits.max_events + 1)))
        if len(ids) > limits.max_events:
            total = session.scalar(select(func.count()).select_from(events.subquery()))
            raise rules.ReplayTooLarge(
                f"The range holds {total} events; one replay queues at most {limits.max_events}. Nothing was "
                "queued: replay shorter ranges.", events=total, max_events=limits.max_events)
        if ids:
            session.execute(insert(WebhookDelivery), [
                {"event_id": i, "endpoint_id": endpoint.id, "state": "pending", "attempts": 0,
                 "next_attempt_at": now, "replay": True, "created_at": now} for i in ids])
        return render(RangeQueued(endpoint.id, wanted, len(ids)))

    return _once(session, actor, once, 202, queue, check=lambda: get_endpoint(session, actor, endpoint_id))


# --------------------------------------------------------------------------------------------- retention
def prune_outbox(session: Session, retention: timedelta, batch: int, *, now: datetime | None = None,
                 max_batches: int = 100) -> int:
    """Remove events older than `retention` whose deliveries are all finished (delivered or given up),
    with their deliveries and attempts: `batch` events per transaction, at most `max_batches` of them
    per call (the rest wait for the next run). Returns the number of events removed.

    The events taken are locked (SKIP LOCKED: one that a replay is adding a delivery to is left for
    the next run), and replays do not reach past the retention, so nothing pending is removed."""
    cutoff = (now or utcnow()) - retention
    pending = select(WebhookDelivery.id).where(WebhookDelivery.event_id == WebhookEvent.id,
                                               WebhookDelivery.state == "pending").exists()
    removed = 0
    for _ in range(max_batches):
        begin_write(session)
        try:
            ids = list(session.scalars(
                select(WebhookEvent.id).where(WebhookEvent.created_at < cutoff, ~pending)
                .order_by(WebhookEvent.created_at).limit(batch).with_for_update(skip_locked=True)))
            if ids:
                deliveries = select(WebhookDelivery.id).where(WebhookDelivery.event_id.in_(ids))
                session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries))
                                .execution_options(synchronize_session=False))
                session.execute(delete(WebhookDelivery).where(WebhookDelivery.event_id.in_(ids))
                                .execution_options(synchronize_session=False))
                session.execute(delete(WebhookEvent).where(WebhookEvent.id.in_(ids))
                                .execution_options(synchronize_session=False))
            session.commit()
        except BaseException:
            session.rollback()
            raise
        removed += len(ids)
        if len(ids) < batch:
            break
    return removed
