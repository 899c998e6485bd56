"""Supervisors manage operators (create, deactivate, reactivate, reset a password, set a PIN), every
change in the audit log, and print their badges; anyone switches operator on a shared terminal."""
from __future__ import annotations

import io

from barcode import Code128
from barcode.writer import SVGWriter
from flask import Response, flash, g, redirect, render_template, url_for
from flask_login import login_required, logout_user
from sqlalchemy import select

from ..domain import actors
from ..domain.errors import DomainError, NotFound, ValidationFailed
from ..models import AuditEntry, Operator
from ..services import accounts
from ..web import db_session
from . import bp
from .forms import ActionForm, NewOperatorForm, SecretForm

AUDIT_ROWS = 50


def _page(form: NewOperatorForm | None = None, code: int = 200):
    session = db_session()
    people = list(session.scalars(select(Operator).order_by(Operator.active.desc(), Operator.display_name)))
    log = list(session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(AUDIT_ROWS)))
    return render_template("operator/operators.html", people=people, log=log,
                           form=form or NewOperatorForm(formdata=None), secret_form=SecretForm(formdata=None)), code


@bp.get("/operators")
@login_required
def operators():
    actors.require_supervisor(g.actor, "manage operators")
    return _page()


@bp.post("/operators")
@login_required
def create_operator():
    actors.require_supervisor(g.actor, "manage operators")
    form = NewOperatorForm()
    try:
        if not form.validate():
            raise ValidationFailed(form.problems())
        op = accounts.create_operator(db_session(), form.login.data, form.password.data, role=form.role.data,
                                      display_name=form.display_name.data)
    except (DomainError, ValueError) as err:
        flash(f"No operator was created. {getattr(err, 'detail', str(err))}", "error")
        return _page(form, getattr(err, "status", 422))
    accounts.audit(db_session(), g.actor, "operator created", op.login, f"{op.display_name}, {op.role}")
    flash(f"{op.display_name} ({op.login}) can log in now.", "success")
    return redirect(url_for("operator.operators"))


CHANGES = {
    "deactivate": ("operator deactivated", lambda s, login, _: accounts.deactivate_operator(s, login), "{} can no longer log in."),
    "reactivate": ("operator reactivated", lambda s, login, _: accounts.reactivate_operator(s, login), "{} can log in again."),
    "password": ("password reset", lambda s, login, secret: accounts.set_operator_password(s, login, secret or ""),
                 "{} has a new password; their sessions ended."),
    "pin": ("PIN set", lambda s, login, secret: accounts.set_operator_pin(s, login, secret or None),
            "{}'s PIN is set (an empty one removes it)."),
}


@bp.post("/operators/<id:operator_id>/<change>")
@login_required
def change_operator(operator_id: int, change: str):
    actors.require_supervisor(g.actor, "manage operators")
    if change not in CHANGES:
        raise NotFound(f"No change {change!r}.")
    form = SecretForm()
    session = db_session()
    op = session.get(Operator, operator_id)
    if op is None:
        raise NotFound(f"No operator {operator_id}.")
    action, apply, done = CHANGES[change]
    try:
        if not form.validate():
            raise ValidationFailed(form.problems())
        apply(session, op.login, form.secret.data)
    except DomainError as err:
        flash(f"Nothing was changed. {err.detail}", "error")
        return _page(code=err.status)
    accounts.audit(session, g.actor, action, op.login)  # never the secret itself
    flash(done.format(op.display_name), "success")
    return redirect(url_for("operator.operators"))


def _operator(operator_id: int) -> Operator:
    op = db_session().get(Operator, operator_id)
    if op is None:
        raise NotFound(f"No operator {operator_id}.")
    return op


@bp.get("/operators/<id:operator_id>/badge")
@login_required
def badge(operator_id: int):
    """A badge card to print: name, login and the Code 128 barcode that the login form takes."""
    actors.require_supervisor(g.actor, "print badges")
    op = _operator(operator_id)
    value = accounts.badge_value(op.login)
    return render_template("operator/badge.html", op=op, value=value, problem=accounts.badge_problem(value))


@bp.get("/operators/<id:operator_id>/badge.svg")
@login_required
def badge_svg(operator_id: int):
    actors.require_supervisor(g.actor, "print badges")
    value = accounts.badge_value(_operator(operator_id).login)
    problem = accounts.badge_problem(value)
    if problem:
        raise ValidationFailed(f"No barcode: {problem}.")
    out = io.BytesIO()
    # The value is printed under it on the card, in a font that reads at arm's length.
    Code128(value, writer=SVGWriter()).write(out, options={"module_height": 12, "quiet_zone": 4,
                                                           "write_text": False})
    return Response(out.getvalue(), mimetype="image/svg+xml", headers={"Cache-Control": "private, no-cache"})


@bp.post("/switch")
@login_required
def switch_operator():
    """A shared terminal changes hands: this browser's session ends (the operator's others stay), and the
    next operator logs in with their badge or login and PIN or password."""
    ActionForm()
    logout_user()
    flash("Next operator: scan your badge or type your login, then your PIN or password.", "info")
    return redirect(url_for("operator.login"))
