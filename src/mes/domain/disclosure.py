"""What the API may say about a status change: the shop floor's own words stay inside the factory.

Operators and supervisors write reasons for each other (why an order went back to production, why it
was cancelled); such notes name people, machines and customers' troubles, and are not for the
customer. API keys get a fixed phrase per transition instead, or nothing where the move speaks for
itself. The only words passed through are a client's own: a partner's reason for its cancellation.
The CRM is served the same view: it reads the public API beside the partners, and what reaches it
may be shown to a customer.
"""
from __future__ import annotations

from .lifecycle import Status

S = Status

#: The words an API key sees for a change made in the factory; a transition not listed shows none.
PARTNER_REASONS: dict[tuple[Status, Status], str] = {
    (S.QUALITY_CHECK, S.IN_PRODUCTION): "Returned to production after the quality check.",
    (S.RECEIVED, S.CANCELLED): "Cancelled by the factory.",
    (S.QUEUED, S.CANCELLED): "Cancelled by the factory.",
}


def partner_reason(current: Status | None, target: Status, reason: str | None, *,
                   written_by_client: bool) -> str | None:
    """The reason shown over the API for `current -> target` (current is None for a creation)."""
    if written_by_client:
        return reason
    if current is None:
        return None
    return PARTNER_REASONS.get((current, target))
