"""When an operator's session ends: rules over times and generations, nothing of Flask or cookies.

A session names the operator's session generation at login; logging out, being deactivated or getting
a new password moves the operator to the next generation, which ends every older session at its next
request, wherever its cookie was copied to. Besides, a session ends after an idle time and after an
absolute lifetime, both measured from what the server wrote into the (signed) session.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Ending(StrEnum):
    IDLE = "idle"
    LIFETIME = "lifetime"
    REVOKED = "revoked"  # logged out, deactivated, new password, or a session from before generations


@dataclass(frozen=True)
class SessionPolicy:
    idle_seconds: float
    lifetime_seconds: float


def session_token(operator_id: int, generation: int) -> str:
    """What the session stores to name its operator: the id and the generation it was issued under."""
    return f"{operator_id}:{generation}"


def parse_session_token(token: str) -> tuple[int, int] | None:
    """(operator id, generation), or None for anything else (e.g. a session from before generations)."""
    operator_id, sep, generation = token.partition(":")
    if not sep or not operator_id.isascii() or not generation.isascii():
        return None
    if not (operator_id.isdigit() and generation.isdigit()):
        return None
    return int(operator_id), int(generation)


def ending_by_time(policy: SessionPolicy, *, started_at: float, seen_at: float, now: float) -> Ending | None:
    """Why a session has run out by `now`, or None while it lives."""
    if now - started_at >= policy.lifetime_seconds:
        return Ending.LIFETIME
    if now - seen_at >= policy.idle_seconds:
        return Ending.IDLE
    return None


def ending_by_account(token_generation: int, *, current_generation: int, active: bool) -> Ending | None:
    """A session of an older generation, or of an operator no longer active, has ended."""
    if not active or token_generation != current_generation:
        return Ending.REVOKED
    return None
