"""Cancelling an order from the order page: a confirmation page that names the order and says what
cancelling does, where the supervisor chooses a cancel reason (and may add a note). Plain forms, so that
a keyboard alone does it; nothing changes until the confirmation is sent."""
from __future__ import annotations

from flask import flash, g, redirect, render_template, url_for
from flask_login import login_required

from ..domain import actors, cancel
from ..domain.errors import DomainError
from ..domain.lifecycle import Status, check_transition
from ..domain.reason_codes import Kind
from ..effects import status_changed
from ..models import ReasonCode
from ..services import orders as svc
from ..services import reason_codes
from ..web import db_session
from . import bp
from .forms import CancelForm


def _page(order_id: int, form: CancelForm | None = None, code: int = 200):
    session = db_session()
    order = svc.get_order(session, g.actor, order_id)
    facts = svc.facts(order)
    try:  # the page only for an order this supervisor may cancel now; otherwise the order page says why
        check_transition(facts.status, Status.CANCELLED)
        actors.require_move(g.actor, facts, Status.CANCELLED)
    except DomainError as err:
        flash(err.detail, "error")
        return redirect(url_for("operator.order", order_id=order_id))
    return render_template("operator/cancel.html", order=order, consequences=cancel.CONSEQUENCES,
                           codes=reason_codes.listed(session, Kind.CANCEL, active_only=True),
                           form=form or CancelForm(formdata=None, version=order.status_version),
                           no_scan_focus=True), code


@bp.get("/orders/<id:order_id>/cancel")
@login_required
def cancel_order(order_id: int):
    return _page(order_id)


@bp.post("/orders/<id:order_id>/cancel")
@login_required
def confirm_cancel(order_id: int):
    """A refused cancellation shows the page again with its message and what was typed; nothing changed."""
    form = CancelForm()
    if not form.validate():
        flash(f"Order {order_id} was not cancelled. {form.problems()}", "error")
        return _page(order_id, form, 422)
    try:
        change = svc.change_status(db_session(), g.actor, order_id, Status.CANCELLED,
                                   cancel_reason_id=form.cancel_reason.data, note=form.note.data,
                                   expected_version=form.version.data)
    except DomainError as err:
        flash(f"Order {order_id} was not cancelled. {err.detail}", "error")
        return _page(order_id, form, err.status)
    status_changed(change)
    reason = db_session().get(ReasonCode, form.cancel_reason.data)
    flash(f"Order {order_id} is cancelled ({reason.label}).", "success")
    return redirect(url_for("operator.order", order_id=order_id))
