"""Putting an order on hold and releasing it from the order page."""
from __future__ import annotations

from flask import flash, g
from flask_login import login_required

from ..effects import hold_changed
from ..services import holds as hold_svc
from ..web import db_session
from . import bp
from .forms import HoldForm, ReleaseHoldForm
from .views import act, order_page


@bp.post("/orders/<id:order_id>/hold")
@login_required
def hold(order_id: int):
    form = HoldForm()
    if not form.validate():
        flash(f"The order was not put on hold. {form.problems()}", "error")
        return order_page(order_id, hold_form=form, code=422)

    def stop():
        change = hold_svc.put_on_hold(db_session(), g.actor, order_id, form.reason_code.data, form.note.data,
                                      expected_version=form.version.data)
        hold_changed(change)
        return f"Order {order_id} is on hold: {change.order.hold_reason.label}."

    return act(order_id, stop)


@bp.post("/orders/<id:order_id>/hold/release")
@login_required
def release_hold(order_id: int):
    form = ReleaseHoldForm()
    if not form.validate():
        flash(f"The hold was not released. {form.problems()}", "error")
        return order_page(order_id, code=422)

    def resume():
        change = hold_svc.release_hold(db_session(), g.actor, order_id, form.note.data,
                                       expected_version=form.version.data)
        hold_changed(change)
        return f"Order {order_id} is released from hold and can move on."

    return act(order_id, resume)
