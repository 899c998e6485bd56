"""Holds: an open order stopped for a recorded reason, and the time it spends stopped.

Time on hold is kept apart from working time with two numbers on the order: when the current hold
started (none when the order is not held) and the seconds of every earlier hold. So the total is one
addition, for one order or a whole page, with no scan of its events.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from . import inputs
from .errors import CannotHold, NotOnHold, OrderOnHold, ValidationFailed
from .lifecycle import FINISHED_STATUSES, Status

NOTE_MAX_LENGTH = 500


class EventKind(StrEnum):
    """What an order event records: a status change (or the creation), a hold, a release, or a change of
    promise status alone (mes.domain.forecast)."""

    STATUS = "status"
    HOLD = "hold"
    RELEASE = "release"
    PROMISE = "promise"


#: Moves a held order may still make: a cancelled order needs no release first (it stops for good).
ALLOWED_WHILE_HELD: frozenset[Status] = frozenset({Status.CANCELLED})


@dataclass(frozen=True)
class HoldState:
    """What hold accounting needs to know about one order."""

    since: datetime | None  # start of the current hold; None when not held
    earlier_seconds: int  # every finished hold, added up

    @property
    def on_hold(self) -> bool:
        return self.since is not None


def hold_age(state: HoldState, now: datetime) -> timedelta | None:
    """How long the current hold has lasted; None when the order is not held."""
    if state.since is None:
        return None
    return max(now - state.since, timedelta(0))


def total_hold_seconds(state: HoldState, now: datetime) -> int:
    """Every second the order spent on hold, the running hold included."""
    age = hold_age(state, now)
    return state.earlier_seconds + (int(age.total_seconds()) if age is not None else 0)


def closed(state: HoldState, now: datetime) -> HoldState:
    """The state after the current hold ends (released, or the order cancelled)."""
    return HoldState(since=None, earlier_seconds=total_hold_seconds(state, now))


def check_can_hold(status: Status, state: HoldState) -> None:
    """Only an open order that is not held already can be put on hold."""
    if status in FINISHED_STATUSES:
        raise CannotHold(f"An order in status {status.value!r} cannot be put on hold.", current_status=status.value)
    if state.on_hold:
        raise CannotHold("The order is on hold already.", current_status=status.value)


def check_can_release(state: HoldState) -> None:
    if not state.on_hold:
        raise NotOnHold("The order is not on hold.")


def check_move_while_held(state: HoldState, target: Status, reason_label: str | None = None) -> None:
    """A held order does not move on until it is released (cancelling it is allowed)."""
    if state.on_hold and target not in ALLOWED_WHILE_HELD:
        why = f" ({reason_label})" if reason_label else ""
        raise OrderOnHold(f"The order is on hold{why}: release the hold before moving it to {target.value!r}.",
                          hold_reason=reason_label,
                          allowed_transitions=sorted(s.value for s in ALLOWED_WHILE_HELD))


def parse_note(raw: str | None, *, required: bool,
               missing: str = "This reason needs a note saying what holds the order.") -> str | None:
    """The operator's internal note on a hold (or a cancellation): free text, required by codes such as
    "other"; `missing` says what the note should tell."""
    note = (raw or "").strip() or None
    if note is None:
        if required:
            raise ValidationFailed(missing, errors=[{"field": "note", "message": "required for this reason"}])
        return None
    message = None
    if len(note) > NOTE_MAX_LENGTH:
        message = f"must be at most {NOTE_MAX_LENGTH} characters"
    else:
        try:
            inputs.check_text(note, multiline=True)
        except ValueError as err:
            message = str(err)
    if message:
        raise ValidationFailed(f"The note {message}.", errors=[{"field": "note", "message": message}])
    return note


def format_age(age: timedelta) -> str:
    """A hold's age as the floor reads it: 3d 4h, 5h 12m, 7m."""
    minutes = int(age.total_seconds()) // 60
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {mins}m"
    return f"{mins}m"
