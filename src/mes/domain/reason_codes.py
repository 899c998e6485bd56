"""Reason codes: why an order is held, why it was late, what defect it had, why it was cancelled.

The codes are rows in one table keyed by (kind, code), so that each kind is its own list with the same
life: added by a supervisor, relabelled, retired (never deleted, so that past events keep their code).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from . import inputs
from .errors import ValidationFailed


class Kind(StrEnum):
    HOLD = "hold"
    LATE = "late"
    DEFECT = "defect"
    CANCEL = "cancel"


CODE_MAX_LENGTH = 32
LABEL_MAX_LENGTH = 80
_CODE = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Seed:
    code: str
    label: str
    requires_note: bool = False


#: The hold reasons a new installation starts with (the migration inserts the same rows).
DEFAULT_HOLD_REASONS: tuple[Seed, ...] = (
    Seed("material_shortage", "Material shortage"),
    Seed("machine_down", "Machine down"),
    Seed("tooling", "Tooling"),
    Seed("quality_hold", "Quality hold"),
    Seed("waiting_for_customer", "Waiting for the customer"),
    Seed("capacity", "Capacity"),
    Seed("other", "Other", requires_note=True),
)


#: The late reasons: the hold reasons (a late order's cause is often what held it) and "late upstream".
DEFAULT_LATE_REASONS: tuple[Seed, ...] = DEFAULT_HOLD_REASONS[:-1] + (
    Seed("late_upstream", "Late upstream"),
    DEFAULT_HOLD_REASONS[-1],
)


#: What scrap and rework are recorded with (the migration inserts the same rows).
DEFAULT_DEFECT_CODES: tuple[Seed, ...] = (
    Seed("burr", "Burr"),
    Seed("crack", "Crack"),
    Seed("dimension", "Dimension out of tolerance"),
    Seed("surface", "Surface damage"),
    Seed("wrong_material", "Wrong material"),
    Seed("other", "Other", requires_note=True),
)


#: Why the factory cancels an order (the migration inserts the same rows).
DEFAULT_CANCEL_REASONS: tuple[Seed, ...] = (
    Seed("customer_request", "Customer request"),
    Seed("duplicate_order", "Duplicate order"),
    Seed("cannot_be_made", "Cannot be made"),
    Seed("other", "Other", requires_note=True),
)


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"The {field} {message}.", errors=[{"field": field, "message": message}])


def parse_code(raw: str | None) -> str:
    """A code as a supervisor types it: lower-case letters, digits and underscores, starting with a letter."""
    value = (raw or "").strip().lower()
    if not value or len(value) > CODE_MAX_LENGTH or not _CODE.fullmatch(value):
        raise _invalid("code", f"must be 1 to {CODE_MAX_LENGTH} lower-case letters, digits or underscores, "
                               "starting with a letter")
    return value


def parse_label(raw: str | None) -> str:
    """A label is shown to operators and, for hold reasons, to partners: one line, not blank."""
    value = (raw or "").strip()
    if not value or len(value) > LABEL_MAX_LENGTH:
        raise _invalid("label", f"must be 1 to {LABEL_MAX_LENGTH} characters")
    try:
        return inputs.check_text(value)
    except ValueError as err:
        raise _invalid("label", str(err)) from None
