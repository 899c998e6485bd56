"""Production on the order page: start, pause, resume and finish one's own work, record good and
scrapped pieces, send pieces back from quality check."""
from __future__ import annotations

import csv
import io
from datetime import date, datetime, time, timedelta, timezone

from flask import Response, current_app, flash, g, redirect, render_template, request, url_for
from flask_login import login_required

from ..domain import actors
from ..domain.pay import format_rate
from ..domain.errors import DomainError, ValidationFailed
from ..domain.production import RECORDING_STAGES, WorkAction
from ..services import accounts
from ..services import production as svc
from .. import query_params
from ..web import db_session, today
from . import bp
from .forms import ActionForm, OutputForm, RateForm, ReworkForm
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
        flash(f"Nothing was recorded. {_explained(err)}", "error")
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


@bp.get("/ledger")
@login_required
def ledger():
    """Every operator's output and pay for one pay period (supervisors); ?format=csv to export it."""
    rule = current_app.extensions["mes_settings"].pay_period_rule
    day = query_params.day("day") or today()
    (start, end), rows, total = svc.period_ledger(db_session(), g.actor, day, rule)
    if request.args.get("format") == "csv":
        return csv_export(start, end, rows)
    return render_template("operator/ledger.html", start=start, end=end, last=end - timedelta(days=1), rows=rows,
                           total=total, previous=start - timedelta(days=1), next=end)


def csv_export(start, end, rows) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["operator_login", "operator_name", "period_start", "period_end", "steps", "orders", "good",
                     "scrap", "worked_hours", "pay", "unpriced_pieces"])
    for op, line in rows:
        writer.writerow([op.login, op.display_name, start.isoformat(), (end - timedelta(days=1)).isoformat(),
                         line.steps, len(line.orders), line.good, line.scrap, f"{line.worked_seconds / 3600:.2f}",
                         f"{line.pay_cents}", line.unpriced_pieces])
    name = f"ledger-{start.isoformat()}.csv"
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


@bp.route("/rates", methods=["GET", "POST"])
@login_required
def rates():
    """Piece rates by product family and stage (supervisors): a new rate starts at a day, earlier ones stay."""
    actors.require_supervisor(g.actor, "manage piece rates")
    form, code = RateForm(), 200
    if request.method == "POST":
        try:
            if not form.validate():
                raise ValidationFailed(form.problems())
            start = _day(form.valid_from.data)
            rate = svc.set_rate(db_session(), g.actor, form.family.data, form.stage.data, form.per_piece.data,
                                valid_from=start)
            accounts.audit(db_session(), g.actor, "rate set", f"{rate.family} {rate.stage}",
                           f"{format_rate(rate.per_piece)} from {rate.valid_from.isoformat()}")
            flash(f"{rate.family} in {rate.stage.replace('_', ' ')}: {format_rate(rate.per_piece)} per piece from "
                  f"{rate.valid_from.strftime('%Y-%m-%d %H:%M')} UTC.", "success")
            return redirect(url_for("operator.rates"))
        except DomainError as err:
            flash(f"No rate was set. {_explained(err)}", "error")
            code = err.status
    return render_template("operator/rates.html", rates=svc.rates(db_session()), form=form,
                           stages=RECORDING_STAGES, today=today()), code


def _day(raw: str | None):
    """A rate's first day, 00:00 UTC; none: now."""
    if not raw:
        return None
    try:
        return datetime.combine(date.fromisoformat(raw), time(), tzinfo=timezone.utc)
    except ValueError:
        raise ValidationFailed("Invalid day.", errors=[{"field": "valid_from", "message": "a day as YYYY-MM-DD"}]) \
            from None


@bp.app_template_filter("rate")
def _rate(value) -> str:
    return format_rate(value)


def _explained(err: DomainError) -> str:
    """The error and each refused field, for a message above the form that is shown again."""
    fields = "; ".join(f"{e['field']}: {e['message']}" for e in err.extensions.get("errors", []))
    return f"{err.detail} {fields}".strip()
