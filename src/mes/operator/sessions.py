"""Operator sessions: started at login, checked on every request, ended at logout.

The signed session cookie holds the operator's id with the session generation it was issued under
(`mes.domain.sessions`), when it started and when it was last used. Every request that needs the
operator compares them with the operator's row, read on the primary (a replica may not have the logout
yet), and with the idle and absolute limits; a session that fails either is cleared.
"""
from __future__ import annotations

from flask import current_app, flash, session
from flask_login import login_user, logout_user

from ..db import read_on_primary
from ..domain.sessions import (
    Ending, SessionPolicy, ending_by_account, ending_by_time, parse_session_token, session_token,
)
from ..models import Operator
from ..reconnect import retry_while_unavailable
from ..services.accounts import end_sessions, operator_actor
from ..web import db_session, settings

STARTED, SEEN = "started_at", "seen_at"


class OperatorUser:
    """Flask-Login's view of an operator row; its id names the session generation too."""

    is_authenticated = True
    is_active = True
    is_anonymous = False

    def __init__(self, op: Operator):
        self.op = op
        self.actor = operator_actor(op)

    def get_id(self) -> str:
        return session_token(self.op.id, self.op.session_generation)


def _now() -> float:
    return current_app.extensions["mes_clock"]()


def policy() -> SessionPolicy:
    cfg = settings()
    return SessionPolicy(idle_seconds=cfg.session_idle_minutes * 60,
                         lifetime_seconds=cfg.session_lifetime_hours * 3600)


def start(op: Operator) -> None:
    """A fresh session for this operator: nothing of the visitor's session carries over."""
    session.clear()
    login_user(OperatorUser(op))
    session[STARTED] = session[SEEN] = _now()


def operator_of(token: str) -> OperatorUser | None:
    """Flask-Login's user loader: the operator while the session lives, else None (and it is cleared)."""
    parsed = parse_session_token(token)
    started, seen = session.get(STARTED), session.get(SEEN)
    if parsed is None or not isinstance(started, (int, float)) or not isinstance(seen, (int, float)):
        return _ended(Ending.REVOKED)
    now = _now()
    ending = ending_by_time(policy(), started_at=started, seen_at=seen, now=now)
    if ending is not None:
        return _ended(ending)
    operator_id, generation = parsed
    # A read: safe to repeat while the database switches nodes, whatever the request's method.
    op = retry_while_unavailable(lambda: read_on_primary(
        db_session(), lambda: db_session().get(Operator, operator_id, populate_existing=True)))
    if op is None:
        return _ended(Ending.REVOKED)
    ending = ending_by_account(generation, current_generation=op.session_generation, active=op.active)
    if ending is not None:
        return _ended(ending)
    session[SEEN] = now
    return OperatorUser(op)


_MESSAGES = {
    Ending.IDLE: "Your session ended after {idle:g} minutes without activity; please log in again.",
    Ending.LIFETIME: "Your session ended after {lifetime:g} hours; please log in again.",
    Ending.REVOKED: "Your session has ended; please log in again.",
}


def _ended(ending: Ending) -> None:
    session.clear()
    cfg = settings()
    flash(_MESSAGES[ending].format(idle=cfg.session_idle_minutes, lifetime=cfg.session_lifetime_hours), "info")
    return None


def end_everywhere(op: Operator) -> None:
    """Logout: this operator's sessions end on every terminal, and so does any copy of this cookie."""
    end_sessions(db_session(), op.id)
    logout_user()
    session.clear()
