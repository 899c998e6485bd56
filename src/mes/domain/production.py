"""Production records: what the shop floor made of an order, by whom, and how long it took.

An order of 500 may be made in several records by several operators. Each record says, for one
operator and one stage, the good pieces, the scrapped pieces with their defect code, the time worked
and a note (internal unless marked otherwise). A quality check that sends pieces back records a rework:
its quantity and defect code, and the record it reworks; those pieces count as not made until a later
record makes them again.

Time worked is kept apart from time on the order: an operator starts, pauses, resumes and finishes
their own work on an order, and only the running spans count.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from .errors import Conflict, ValidationFailed
from .lifecycle import Status

NOTE_MAX_LENGTH = 1000
#: The stages in which pieces are made (and paid), and the one that judges them.
MAKING_STAGES: tuple[Status, ...] = (Status.IN_PRODUCTION,)
CHECKING_STAGE = Status.QUALITY_CHECK
RECORDING_STAGES: tuple[Status, ...] = (*MAKING_STAGES, CHECKING_STAGE)


class RecordKind(StrEnum):
    OUTPUT = "output"   # pieces made (good and scrap)
    REWORK = "rework"   # pieces a quality check sent back to be made again


@dataclass(frozen=True)
class Record:
    """One production record, as the rules see it."""

    kind: RecordKind
    stage: Status
    operator_id: int
    good: int
    scrap: int
    finished_at: datetime
    worked_seconds: int = 0
    defect_code: str | None = None
    reworks: int | None = None  # the record a rework sends pieces of back


@dataclass(frozen=True)
class Quantities:
    ordered: int
    produced: int   # good pieces made, less those sent back to rework
    scrapped: int
    reworked: int   # sent back by quality checks (made again in later records)

    @property
    def remaining(self) -> int:
        return max(self.ordered - self.produced, 0)

    @property
    def complete(self) -> bool:
        return self.produced >= self.ordered


def quantities(ordered: int, records: Iterable[Record]) -> Quantities:
    """Produced, scrapped and remaining pieces of an order from its records."""
    made = scrapped = reworked = 0
    for r in records:
        if r.kind is RecordKind.REWORK:
            reworked += r.good
            scrapped += r.scrap
        else:
            made += r.good if r.stage in MAKING_STAGES else 0
            scrapped += r.scrap
    return Quantities(ordered=ordered, produced=max(made - reworked, 0), scrapped=scrapped, reworked=reworked)


def _count(value: object, field: str, errors: list[dict]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value).strip() or "0")
        except ValueError:
            errors.append({"field": field, "message": "must be a whole number"})
            return 0
    if value < 0:
        errors.append({"field": field, "message": "must not be negative"})
    elif value > 1_000_000:
        errors.append({"field": field, "message": "must be at most 1,000,000"})
    return value


def check_output(stage: Status, so_far: Quantities, good: object, scrap: object, defect_code: str | None,
                 defect_codes: Sequence[str], note: str | None = None) -> tuple[int, int]:
    """The counts of a new output record, or ValidationFailed naming every wrong field.

    At least one piece; scrap needs one of the active defect codes; a making stage may not make more
    good pieces than the order still needs (an over-run is scrap or a new order, not silent stock)."""
    errors: list[dict] = []
    if stage not in RECORDING_STAGES:
        raise Conflict(f"Quantities are recorded in {', '.join(s.value for s in RECORDING_STAGES)}, "
                       f"not while the order is {stage.value}.")
    g, s = _count(good, "good", errors), _count(scrap, "scrap", errors)
    if not errors and g == 0 and s == 0:
        errors.append({"field": "good", "message": "record at least one good or scrapped piece"})
    if s > 0 and not defect_code:
        errors.append({"field": "defect_code", "message": "scrap needs a defect code"})
    elif defect_code and defect_code not in defect_codes:
        errors.append({"field": "defect_code", "message": f"unknown defect code {defect_code!r}"})
    if stage in MAKING_STAGES and g > so_far.remaining:
        errors.append({"field": "good", "message": f"only {so_far.remaining} more good pieces are needed"})
    if stage is CHECKING_STAGE and g + s > so_far.produced:
        errors.append({"field": "good", "message": f"only {so_far.produced} pieces have been made to check"})
    if note is not None and len(note) > NOTE_MAX_LENGTH:
        errors.append({"field": "note", "message": f"at most {NOTE_MAX_LENGTH} characters"})
    if errors:
        raise ValidationFailed("The production record is not valid.", errors=errors)
    return g, s


def check_rework(so_far: Quantities, reworked: Record | None, quantity: object, defect_code: str | None,
                 defect_codes: Sequence[str]) -> int:
    """A quality check sends `quantity` good pieces of the record `reworked` back to production."""
    errors: list[dict] = []
    q = _count(quantity, "quantity", errors)
    if reworked is None or reworked.kind is not RecordKind.OUTPUT or reworked.stage not in MAKING_STAGES:
        errors.append({"field": "reworks", "message": "name the production record whose pieces go back"})
    elif q > reworked.good:
        errors.append({"field": "quantity", "message": f"that record made {reworked.good} good pieces"})
    if not errors and q == 0:
        errors.append({"field": "quantity", "message": "send at least one piece back"})
    if q > so_far.produced:
        errors.append({"field": "quantity", "message": f"only {so_far.produced} made pieces can go back"})
    if not defect_code:
        errors.append({"field": "defect_code", "message": "a rework needs a defect code"})
    elif defect_code not in defect_codes:
        errors.append({"field": "defect_code", "message": f"unknown defect code {defect_code!r}"})
    if errors:
        raise ValidationFailed("The rework is not valid.", errors=errors)
    return q


# --- time worked ----------------------------------------------------------------------------------

class WorkAction(StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    FINISH = "finish"


class WorkState(StrEnum):
    IDLE = "idle"        # not started, or finished
    RUNNING = "running"
    PAUSED = "paused"


NEXT_STATE: dict[tuple[WorkState, WorkAction], WorkState] = {
    (WorkState.IDLE, WorkAction.START): WorkState.RUNNING,
    (WorkState.RUNNING, WorkAction.PAUSE): WorkState.PAUSED,
    (WorkState.PAUSED, WorkAction.RESUME): WorkState.RUNNING,
    (WorkState.RUNNING, WorkAction.FINISH): WorkState.IDLE,
    (WorkState.PAUSED, WorkAction.FINISH): WorkState.IDLE,
}


def next_state(state: WorkState, action: WorkAction) -> WorkState:
    try:
        return NEXT_STATE[(state, action)]
    except KeyError:
        allowed = [a.value for (s, a) in NEXT_STATE if s is state]
        raise Conflict(f"Cannot {action.value} work that is {state.value}.", allowed_actions=allowed) from None


@dataclass(frozen=True)
class WorkSpell:
    """One operator's work on one order, from its actions in time order."""

    state: WorkState
    worked_seconds: int
    running_since: datetime | None


def replay(actions: Iterable[tuple[WorkAction, datetime]], now: datetime) -> WorkSpell:
    """The state of an operator's work on an order and the seconds worked, the running span included
    up to `now`. Actions out of order are refused (the log is written in order, so this is a bug)."""
    state, worked, since = WorkState.IDLE, timedelta(0), None
    for action, at in actions:
        state_after = next_state(state, action)
        if state is WorkState.RUNNING:
            worked += max(at - since, timedelta(0))
        since = at if state_after is WorkState.RUNNING else None
        state = state_after
    if since is not None:
        worked += max(now - since, timedelta(0))
    return WorkSpell(state, int(worked.total_seconds()), since)
