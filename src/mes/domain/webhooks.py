"""Webhook rules that know nothing of the database or HTTP: which events an order change makes, the
endpoint's URL and secret, where a delivery may go, and when a failed one is tried again."""
from __future__ import annotations

import base64
import ipaddress
import random
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit

from . import inputs
from .errors import DomainError, ValidationFailed
from .holds import EventKind
from .lifecycle import Status


class EventType(StrEnum):
    STATUS_CHANGED = "order.status_changed"
    PROMISE_CHANGED = "order.promise_changed"
    SHIPPED = "order.shipped"
    ON_HOLD = "order.on_hold"
    HOLD_RELEASED = "order.hold_released"
    CANCELLED = "order.cancelled"


#: What an endpoint may subscribe to; these two are sent whatever it subscribed to (or never).
SUBSCRIBABLE = tuple(t.value for t in EventType)
TEST_EVENT = "webhook.test"
ENDPOINT_FAILING = "webhook_endpoint.failing"  # recorded, never sent (the endpoint is not answering)

MAX_URL_LENGTH = 2000
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def types_of(kind: str, from_status: str | None, to_status: str, from_promise: str | None,
             to_promise: str | None) -> list[str]:
    """The webhook events of one order event (mes.models.OrderEvent). A change of status is always
    `order.status_changed`, and also `order.shipped` or `order.cancelled` when it is one; any event that
    moved an existing promise status is also `order.promise_changed`. An order's creation is none."""
    found: list[str] = []
    if kind == EventKind.STATUS.value:
        if from_status is None:
            return found
        found.append(EventType.STATUS_CHANGED.value)
        if to_status == Status.SHIPPED.value:
            found.append(EventType.SHIPPED.value)
        elif to_status == Status.CANCELLED.value:
            found.append(EventType.CANCELLED.value)
    elif kind == EventKind.HOLD.value:
        found.append(EventType.ON_HOLD.value)
    elif kind == EventKind.RELEASE.value:
        found.append(EventType.HOLD_RELEASED.value)
    if from_promise is not None and from_promise != to_promise:
        found.append(EventType.PROMISE_CHANGED.value)
    return found


def new_message_id() -> str:
    """The event's `webhook-id`: unique, so that receivers can drop a second delivery of it."""
    return f"msg_{uuid.uuid4().hex}"


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def parse_event_types(value: object) -> list[str]:
    """A non-empty list of known event types, each once, in the order of SUBSCRIBABLE."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValidationFailed("event_types must be a non-empty list of event types.",
                               errors=[{"field": "event_types", "message": "must be a non-empty list"}])
    unknown = sorted(set(value) - set(SUBSCRIBABLE))
    if unknown:
        raise ValidationFailed(f"Unknown event type {unknown[0]!r}; known: {', '.join(SUBSCRIBABLE)}.",
                               errors=[{"field": "event_types", "message": f"unknown type {unknown[0]!r}"}])
    return [t for t in SUBSCRIBABLE if t in value]


class ReplayTooLarge(DomainError):
    """A range replay would queue more deliveries than one request may: nothing was queued."""

    status, slug, title = 422, "replay-too-large", "Too many events in the range"


@dataclass(frozen=True)
class ReplayRange:
    """Which events of the outbox a range replay sends again: created in [start, end), of these types."""

    start: datetime
    end: datetime
    types: tuple[str, ...]


REPLAY_FIELDS = {"from", "to", "event_types"}


def parse_replay_range(fields: dict, subscribed: list[str], now: datetime, max_days: float,
                       retention: timedelta) -> ReplayRange:
    """A replay's range as asked: `from` before `to`, at most `max_days` long, not reaching back past
    the outbox's retention (older events are gone), and only types the endpoint subscribes to (all of
    them when none are named)."""
    def bad(field: str, message: str) -> ValidationFailed:
        return ValidationFailed(f"{field} {message}.", errors=[{"field": field, "message": message}])

    unknown = sorted(set(fields) - REPLAY_FIELDS)
    if unknown:
        raise ValidationFailed(f"Unknown field {unknown[0]!r}; a replay takes from, to and event_types.",
                               errors=[{"field": f, "message": "unknown field"} for f in unknown])
    bounds = {}
    for name in ("from", "to"):
        raw = fields.get(name)
        if not isinstance(raw, str):
            raise bad(name, "must be an RFC 3339 date-time with a zone, e.g. 2026-01-31T12:00:00Z")
        try:
            bounds[name] = inputs.parse_instant(raw)
        except ValueError as err:
            raise bad(name, str(err)) from None
    start, end = bounds["from"], bounds["to"]
    if end <= start:
        raise bad("to", "must be later than from")
    if end - start > timedelta(days=max_days):
        raise bad("to", f"must be at most {max_days:g} days after from (replay a longer time in several requests)")
    oldest = now - retention
    if start < oldest:
        raise bad("from", f"must not be older than the outbox's retention of {retention.days} days "
                          f"(events before {oldest:%Y-%m-%dT%H:%M:%SZ} are no longer kept)")
    if fields.get("event_types") is None:
        return ReplayRange(start, end, tuple(subscribed))
    types = parse_event_types(fields["event_types"])
    others = [t for t in types if t not in subscribed]
    if others:
        raise bad("event_types", f"names {others[0]!r}, which this endpoint does not subscribe to")
    return ReplayRange(start, end, tuple(types))


@dataclass(frozen=True)
class AddressPolicy:
    """Where deliveries may go: HTTPS only unless `allow_http`; never to loopback, link-local, private
    or otherwise non-public addresses unless they fall in one of `allowed_networks`."""

    allow_http: bool = False
    allowed_networks: tuple[str, ...] = ()

    def networks(self) -> list:
        return [ipaddress.ip_network(n, strict=False) for n in self.allowed_networks]


def parse_url(value: object, policy: AddressPolicy) -> str:
    """An endpoint URL as registered: absolute, https (or http when allowed), a host, no credentials."""
    def bad(message: str) -> ValidationFailed:
        return ValidationFailed(f"url {message}.", errors=[{"field": "url", "message": message}])

    if not isinstance(value, str) or not value.strip():
        raise bad("must be an absolute https URL")
    url = value.strip()
    if len(url) > MAX_URL_LENGTH:
        raise bad(f"must be at most {MAX_URL_LENGTH} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise bad("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise bad("is not a valid URL") from None
    allowed = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme not in allowed:
        raise bad("must use https" if not policy.allow_http else "must use http or https")
    if not parts.hostname:
        raise bad("must name a host")
    if parts.username is not None or parts.password is not None:
        raise bad("must not carry credentials")
    if parts.fragment:
        raise bad("must not have a fragment")
    del port
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        literal = None
    if literal is not None and not address_allowed(literal, policy):
        raise bad("points to an address that is not public")
    return url


def address_allowed(address, policy: AddressPolicy) -> bool:
    """A resolved address may receive a delivery: a public one, or one inside an allowed network."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in policy.networks()):
        return True
    return ip.is_global and not (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_multicast
                                 or ip.is_reserved or ip.is_unspecified)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: the n-th retry waits a random time up to
    min(cap, base * 2**n), until the event is `give_up_after` old; then the delivery has failed."""

    base: timedelta = timedelta(seconds=30)
    cap: timedelta = timedelta(hours=6)
    give_up_after: timedelta = timedelta(days=3)

    def ceiling(self, attempts: int) -> timedelta:
        """The longest wait after the `attempts`-th failed attempt (1 for the first)."""
        return min(self.cap, self.base * (2 ** min(max(attempts - 1, 0), 40)))

    def next_attempt(self, attempts: int, first_queued: datetime, now: datetime,
                     rng: random.Random | None = None) -> datetime | None:
        """When to try again after `attempts` failures, or None: stop, the delivery has failed."""
        if now - first_queued >= self.give_up_after:
            return None
        wait = (rng or random).uniform(0, self.ceiling(attempts).total_seconds())
        return now + timedelta(seconds=wait)


def excerpt(body: bytes, limit: int) -> str:
    """The start of a response body as text, for the delivery log."""
    return body[:limit].decode("utf-8", errors="replace")
