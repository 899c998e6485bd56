"""Reason codes as supervisors keep them: list, add, relabel, retire and restore (never delete)."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db import begin_write
from ..domain import actors
from ..domain.actors import Actor
from ..domain.errors import Conflict, NotFound, ValidationFailed
from ..domain.reason_codes import Kind, parse_code, parse_label
from ..models import ReasonCode


def listed(session: Session, kind: Kind, *, active_only: bool = False) -> list[ReasonCode]:
    """The codes of one kind in their display order; `active_only` for what an operator may pick."""
    stmt = select(ReasonCode).where(ReasonCode.kind == kind.value)
    if active_only:
        stmt = stmt.where(ReasonCode.active.is_(True))
    return list(session.scalars(stmt.order_by(ReasonCode.sort_order, ReasonCode.id)))


def choosable(session: Session, kind: Kind, code_id: int | None) -> ReasonCode:
    """The code an operator picked, if it is an active code of this kind."""
    code = session.get(ReasonCode, code_id) if code_id is not None else None
    if code is None or code.kind != kind.value or not code.active:
        raise ValidationFailed("Choose one of the listed reasons.",
                               errors=[{"field": "reason_code", "message": "must be an active reason code"}])
    return code


def twin(session: Session, code: ReasonCode, kind: Kind) -> ReasonCode | None:
    """The active code of another kind with the same code (a hold's "machine_down" as a late reason)."""
    return session.scalar(select(ReasonCode).where(ReasonCode.kind == kind.value, ReasonCode.code == code.code,
                                                   ReasonCode.active.is_(True)))


def add(session: Session, actor: Actor, kind: Kind, code: str, label: str, *,
        requires_note: bool = False) -> ReasonCode:
    actors.require_supervisor(actor, "change reason codes")
    value, text = parse_code(code), parse_label(label)
    begin_write(session)
    try:
        if session.scalar(select(ReasonCode.id).where(ReasonCode.kind == kind.value, ReasonCode.code == value)):
            raise Conflict(f"The code {value!r} exists already (retired codes can be restored).")
        last = session.scalar(select(func.max(ReasonCode.sort_order)).where(ReasonCode.kind == kind.value)) or 0
        row = ReasonCode(kind=kind.value, code=value, label=text, requires_note=requires_note, active=True,
                         sort_order=last + 10)
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return row


def _update(session: Session, actor: Actor, code_id: int, **values) -> ReasonCode:
    actors.require_supervisor(actor, "change reason codes")
    begin_write(session)
    try:
        row = session.get(ReasonCode, code_id, with_for_update=True)
        if row is None:
            raise NotFound(f"Reason code {code_id} does not exist.")
        for name, value in values.items():
            setattr(row, name, value)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return row


def relabel(session: Session, actor: Actor, code_id: int, label: str) -> ReasonCode:
    """A new label shows on past events too: the label names the code, the code is what was recorded."""
    return _update(session, actor, code_id, label=parse_label(label))


def retire(session: Session, actor: Actor, code_id: int) -> ReasonCode:
    """A retired code stays on the events and holds that used it; it can no longer be chosen."""
    return _update(session, actor, code_id, active=False)


def restore(session: Session, actor: Actor, code_id: int) -> ReasonCode:
    return _update(session, actor, code_id, active=True)
