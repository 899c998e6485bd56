"""Production on the order page: start, pause, resume and finish one's own work, record good and
scrapped pieces, send pieces back from quality check."""
from __future__ import annotations

from flask import flash, g, redirect, url_for
from flask_login import login_required

from ..domain.errors import DomainError
from ..domain.production import WorkAction
from ..services import production as svc
from ..web import db_session
from . import bp
from .forms import ActionForm, OutputForm, ReworkForm
from .views import act, order_page

DONE = {WorkAction.START: "Work started", WorkAction.PAUSE: "Work paused", WorkAction.RESUME: "Work resumed",
        WorkAction.FINISH: "Work finished"}


@bp.post("/orders/<id:order_id>/work/<action>")
@login_required
def work(order_id: int, action: str):
    if not ActionForm().validate():
        flash("Nothing was changed: the form had expired, try again.", "error")
        return order_page(order_id, code=422)

    def do():
        spell = svc.act(db_session(), g.actor, order_id, action)
        return f"{DONE[WorkAction(action)]} on order {order_id} ({spell.worked_seconds // 60} min worked so far)."

    return act(order_id, do)


@bp.post("/orders/<id:order_id>/output")
@login_required
def output(order_id: int):
    form = OutputForm()
    if not form.validate():
        flash(f"Nothing was recorded. {form.problems()}", "error")
        return order_page(order_id, output_form=form, code=422)

    try:
        done = svc.record_output(db_session(), g.actor, order_id, form.good.data or 0, form.scrap.data or 0,
                                 form.defect_code.data or None, form.note.data)
    except DomainError as err:
        # Shown again with what was typed: a count off by one is corrected, not typed again.
        problems = "; ".join(f"{e['field']}: {e['message']}" for e in err.extensions.get("errors", []))
        flash(f"Nothing was recorded. {err.detail} {problems}".strip(), "error")
        return order_page(order_id, output_form=form, code=err.status)
    q = done.quantities
    flash(f"Recorded {done.record.good} good, {done.record.scrap} scrap on order {order_id}: "
          f"{q.produced} of {q.ordered} made, {q.remaining} to go.", "success")
    return redirect(url_for("operator.order", order_id=order_id))


@bp.post("/orders/<id:order_id>/rework")
@login_required
def rework(order_id: int):
    form = ReworkForm()
    if not form.validate():
        flash(f"Nothing was sent back. {form.problems()}", "error")
        return order_page(order_id, code=422)

    def send_back():
        done = svc.record_rework(db_session(), g.actor, order_id, form.reworks.data, form.quantity.data,
                                 form.defect_code.data, form.note.data)
        return f"{done.record.good} pieces go back to production; {done.quantities.remaining} to make."

    return act(order_id, send_back)
