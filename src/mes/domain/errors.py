"""Errors the domain raises; `mes.errors` turns each into an HTTP response.

Every error carries what RFC 9457 needs (a type slug, a title, an HTTP status)
and optional extension members, so the UI and the API render the same facts.
"""
from __future__ import annotations


class DomainError(Exception):
    """Base of every expected, user-facing failure."""

    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str | None = None, **extensions):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extensions = extensions


class NotFound(DomainError):
    status, slug, title = 404, "not-found", "Not found"


class Forbidden(DomainError):
    status, slug, title = 403, "forbidden", "Forbidden"


class Unauthorized(DomainError):
    status, slug, title = 401, "unauthorized", "Authentication required"


class ValidationFailed(DomainError):
    """Input that is well-formed but breaks a rule; `errors` lists each field."""

    status, slug, title = 422, "validation-failed", "Invalid input"


class BadQuery(ValidationFailed):
    """A query parameter that cannot be used (400: the request itself is malformed)."""

    status, slug, title = 400, "bad-query", "Invalid query parameter"


class Conflict(DomainError):
    status, slug, title = 409, "conflict", "Conflict"


class InvalidTransition(Conflict):
    slug, title = "invalid-transition", "Status change not allowed"


class VersionConflict(Conflict):
    slug, title = "version-conflict", "Order changed meanwhile"


class AlreadyClaimed(Conflict):
    slug, title = "already-claimed", "Order already claimed"


class ReferenceConflict(Conflict):
    slug, title = "reference-conflict", "Reference already used"


class OrderOnHold(Conflict):
    slug, title = "order-on-hold", "Order on hold"


class CannotHold(Conflict):
    slug, title = "cannot-hold", "Order cannot be put on hold"


class NotOnHold(Conflict):
    slug, title = "not-on-hold", "Order not on hold"


class PreconditionFailed(DomainError):
    """An `If-Match` that names a version the order has left: the caller acted on a stale view."""

    status, slug, title = 412, "precondition-failed", "Order changed since you read it"


class IdempotencyKeyMissing(DomainError):
    status, slug, title = 400, "idempotency-key-missing", "Idempotency-Key header required"


class IdempotencyKeyReused(DomainError):
    status, slug, title = 422, "idempotency-key-reused", "Idempotency-Key reused with a different request"
