"""Cancelling an order on the shop floor: a supervisor's call, made with a reason from the cancel list
(mes.domain.reason_codes, kind "cancel") and an optional internal note, both kept on the status event.

A partner cancelling its own order through the API gives its own words or none, as it always has: the
reason code is the factory's record, not the customer's.
"""
from __future__ import annotations

from . import holds
from .actors import Actor
from .errors import ValidationFailed
from .lifecycle import Status

#: What the confirmation step says before anything changes.
CONSEQUENCES = ("The order stops for good: it cannot be reopened, leaves the queue and its holder's work, "
                "and a running hold ends. The partner sees that the factory cancelled it; the reason and "
                "the note stay inside the factory.")


def reason_owed(actor: Actor, target: Status) -> bool:
    """Whether this move needs a cancel reason: every cancellation made on the shop floor."""
    return actor.kind == "operator" and target is Status.CANCELLED


def check_reason_given(code_id: int | None) -> None:
    """A cancellation without a reason is refused, and nothing changes."""
    if code_id is None:
        raise ValidationFailed("A cancellation needs a reason: choose one of the listed cancel reasons.",
                               errors=[{"field": "cancel_reason", "message": "required to cancel an order"}])


def parse_note(raw: str | None, *, required: bool) -> str | None:
    """The supervisor's internal note on a cancellation (the "other" reason needs one)."""
    return holds.parse_note(raw, required=required,
                            missing="This reason needs a note saying why the order is cancelled.")
