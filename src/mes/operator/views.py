"""The orders queue, the order page and "my work"."""
from __future__ import annotations

import io
from datetime import timedelta

from barcode import Code128
from barcode.writer import SVGWriter

from flask import Response, current_app, flash, g, redirect, render_template, request, url_for
from flask_login import login_required

from .. import query_params
from ..domain import actors
from ..domain.errors import DomainError, ValidationFailed
from ..domain.forecast import OPEN_PROMISES, Promise
from ..domain import holds
from ..domain.lifecycle import ACTION_LABELS, FINISHED_STATUSES, OPEN_STATUSES, Status, is_rework
from ..domain.priority import Priority
from ..domain.promises import is_overdue
from ..effects import holder_changed, status_changed
from ..domain.reason_codes import Kind
from ..domain.scan import barcode_value, parse_scan
from ..models import utcnow
from ..services import accounts
from ..services import forecast as forecast_svc
from ..services import holds as hold_svc
from ..services import orders as svc
from ..services import production as production_svc
from ..services import reason_codes
from ..services import shipments as shipments_svc
from ..web import db_session, settings, today
from . import bp
from .forms import ActionForm, HoldForm, OutputForm, ReassignForm, ReleaseHoldForm, StatusForm

PAGE_SIZE = 50
SEARCH_MAX_LENGTH = 64  # an order id or a reference, which is at most 64 characters


@bp.app_template_filter("priority")
def _priority_label(value: int) -> str:
    return Priority(value).label


@bp.app_template_filter("status_label")
def _status_label(value: str) -> str:
    return value.replace("_", " ")


@bp.app_template_filter("days")
def _days(seconds: float) -> str:
    """A stage's time as the floor reads it: 3.4 d, or hours under a day."""
    return f"{seconds / 86400:.1f} d" if seconds >= 86400 else f"{seconds / 3600:.1f} h"


@bp.app_template_filter("promise_label")
def _promise_label(value: str | None) -> str:
    """on_track -> on track; no promise yet (not projected, or cancelled) shows nothing."""
    return (value or "").replace("_", " ")


@bp.get("/")
@login_required
def queue():
    status = request.args.get("status", svc.QUEUE_OPEN)
    if status not in {svc.QUEUE_OPEN, svc.QUEUE_ALL, *(s.value for s in Status)}:
        raise ValidationFailed(f"Unknown status filter {status!r}.")
    session = db_session()
    hold_codes = reason_codes.listed(session, Kind.HOLD)  # retired ones too: held orders may still carry them
    reason = request.args.get("reason") or None  # the form's "any" sends it empty
    if reason is not None and reason not in {c.code for c in hold_codes}:
        raise query_params.bad_query("reason", "must be one of " + ", ".join(c.code for c in hold_codes))
    reason_id = next((c.id for c in hold_codes if c.code == reason), None)
    sort = query_params.choice("sort", list(svc.QUEUE_ORDERS)) or svc.SORT_PROMISED
    holder = query_params.choice("holder", [svc.HOLDER_UNCLAIMED, svc.HOLDER_MINE]) if request.args.get("holder") \
        else None
    promise = request.args.get("promise") or None
    if promise is not None and promise not in {p.value for p in OPEN_PROMISES}:
        raise query_params.bad_query("promise", "must be one of " + ", ".join(p.value for p in OPEN_PROMISES))
    query = svc.QueueQuery(status=status, overdue_only=request.args.get("overdue") == "1",
                           on_hold_only=request.args.get("hold") == "1" or reason_id is not None,
                           hold_reason_id=reason_id, promise=promise, sort=sort,
                           search=query_params.text("q", max_length=SEARCH_MAX_LENGTH),
                           after=request.args.get("after") or None, before=request.args.get("before") or None,
                           holder=holder, holder_id=g.actor.id, limit=PAGE_SIZE)
    day = today()
    page = svc.operator_queue(session, query, day)
    cap = 1000
    return render_template(
        "operator/queue.html", page=page, query=query, counts=svc.status_counts(session),
        overdue=svc.count_overdue(session, day, cap=cap), on_hold=svc.count_on_hold(session, cap=cap),
        at_risk=svc.count_by_promise(session, Promise.AT_RISK.value, cap=cap), promises=OPEN_PROMISES,
        count_cap=cap, statuses=list(Status), open_statuses=OPEN_STATUSES, today=day, hold_codes=hold_codes,
        reason=reason, hold_age=hold_age_text(utcnow()), refresh_seconds=settings().queue_refresh_seconds,
        is_overdue=lambda o: is_overdue(Status(o.status), o.promised_date, day))


def hold_age_text(now):
    """For the templates: how long an order has been on hold, as the floor reads it ('' when not held)."""
    def age(order) -> str:
        value = holds.hold_age(hold_svc.state_of(order), now)
        return holds.format_age(value) if value is not None else ""
    return age


@bp.get("/orders/<id:order_id>")
@login_required
def order(order_id: int):
    return order_page(order_id)


def order_page(order_id: int, status_form: StatusForm | None = None, code: int = 200,
               hold_form: HoldForm | None = None, output_form: OutputForm | None = None):
    """The order page; after a refused form, with its errors and what the operator typed."""
    session = db_session()
    o = svc.get_order(session, g.actor, order_id)
    facts = svc.facts(o)
    state = hold_svc.state_of(o)
    moves = [(t, ACTION_LABELS[t], is_rework(facts.status, t)) for t in actors.allowed_moves(g.actor, facts)
             if not state.on_hold or t in holds.ALLOWED_WHILE_HELD]
    draft = status_form.reason.data if status_form is not None else None
    now = utcnow()
    events = svc.history(session, order_id)
    html = render_template(
        "operator/order.html", order=o, events=events, moves=moves,
        stages=forecast_svc.stage_report(session, o, events, now),
        late_codes=reason_codes.listed(session, Kind.LATE, active_only=True)
        if g.actor.kind == "operator" and forecast_svc.late_reason_owed(o) else [],
        on_hold=state.on_hold, can_hold=facts.status not in FINISHED_STATUSES and not state.on_hold,
        hold_codes=reason_codes.listed(session, Kind.HOLD, active_only=True), hold_age=hold_age_text(now),
        hold_total=holds.format_age(timedelta(seconds=holds.total_hold_seconds(state, now))),
        hold_form=hold_form or HoldForm(formdata=None), release_form=ReleaseHoldForm(formdata=None),
        can_claim=actors.may_claim(g.actor, facts), can_release=actors.may_release(g.actor, facts),
        overdue=is_overdue(facts.status, o.promised_date, today()), action_form=ActionForm(),
        status_form=StatusForm(formdata=None, version=o.status_version), reason_draft=draft,
        production=production_svc.order_view(session, g.actor, o, now), floor=svc.floor_history(session, order_id),
        operators=accounts.active_operators(session) if g.actor.is_supervisor and facts.status not in
        (Status.DELIVERED, Status.CANCELLED) else [],
        output_form=output_form or OutputForm(formdata=None),
        more_shipments=g.actor.kind == "operator" and facts.status is Status.SHIPPED
        and shipments_svc.limits(session, o).left > 0)
    return html, code


def act(order_id: int, action) -> object:
    """Run an action; a refusal becomes a message on the order page, nothing is lost."""
    try:
        message = action()
        flash(message, "success")
    except DomainError as err:
        flash(err.detail, "error")
    return redirect(url_for("operator.order", order_id=order_id))


@bp.post("/orders/<id:order_id>/claim")
@login_required
def claim(order_id: int):
    def take():
        svc.claim(db_session(), g.actor, order_id)
        holder_changed()
        return f"You hold order {order_id} now."

    return act(order_id, take)


@bp.post("/orders/<id:order_id>/release")
@login_required
def release(order_id: int):
    def give_back():
        svc.release(db_session(), g.actor, order_id)
        holder_changed()
        return f"Order {order_id} is back in the pool."

    return act(order_id, give_back)


@bp.post("/orders/<id:order_id>/reassign")
@login_required
def reassign(order_id: int):
    form = ReassignForm()
    if not form.validate():
        flash(f"Nobody was assigned. {form.problems()}", "error")
        return order_page(order_id, code=422)

    def give():
        order = svc.reassign(db_session(), g.actor, order_id, form.operator.data)
        holder_changed()
        return f"Order {order_id} is now held by {order.holder.display_name}."

    return act(order_id, give)


@bp.post("/orders/<id:order_id>/status")
@login_required
def change_status(order_id: int):
    form = StatusForm()
    if not form.validate():
        # Shown again with what was typed, so that a refused reason is not lost.
        flash(f"Nothing was changed. {form.problems()}", "error")
        return order_page(order_id, status_form=form, code=422)

    def move():
        try:
            target = Status(form.target.data)
        except ValueError:
            raise ValidationFailed(f"Unknown status {form.target.data!r}.") from None
        if target is Status.SHIPPED:  # shipping asks for the shipment: carrier, tracking, pieces
            raise ValidationFailed("Ship with the shipment form: it asks for the carrier, tracking and pieces.")
        change = svc.change_status(db_session(), g.actor, order_id, target, reason=form.reason.data,
                                   expected_version=form.version.data, late_reason_id=form.late_reason.data)
        status_changed(change)
        return f"Order {order_id} is now {target.value.replace('_', ' ')}."

    return act(order_id, move)


@bp.get("/my-work")
@login_required
def my_work():
    session = db_session()
    work = svc.my_work(session, g.actor.id, svc.day_start())
    rule = current_app.extensions["mes_settings"].pay_period_rule
    return render_template("operator/my_work.html", work=work, today=today(),
                           summaries=production_svc.summaries(session, g.actor, today(), rule),
                           is_overdue=lambda o: is_overdue(Status(o.status), o.promised_date, today()))


@bp.get("/scan")
@login_required
def scan():
    """The terminal's one field: an exact hit opens the order, otherwise the matches are listed."""
    try:
        term = parse_scan(request.args.get("q"))
    except ValidationFailed as err:
        flash(err.detail, "error")
        return render_template("operator/scan.html", term=request.args.get("q", "")[:64], matches=[]), 400
    found = svc.find_by_scan(db_session(), g.actor, term)
    if found.exact is not None:
        return redirect(url_for("operator.order", order_id=found.exact.id))
    return render_template("operator/scan.html", term=term.term, matches=found.matches,
                           is_overdue=lambda o: is_overdue(Status(o.status), o.promised_date, today()))


@bp.get("/orders/<id:order_id>/barcode.svg")
@login_required
def barcode_svg(order_id: int):
    """The order's Code 128 label barcode (MES-<id>), for the order page and its printed label."""
    order = svc.get_order(db_session(), g.actor, order_id)
    out = io.BytesIO()
    Code128(barcode_value(order.id), writer=SVGWriter()).write(out, options={"module_height": 12, "quiet_zone": 4})
    return Response(out.getvalue(), mimetype="image/svg+xml", headers={"Cache-Control": "private, max-age=86400"})


@bp.get("/orders/<id:order_id>/label")
@login_required
def label(order_id: int):
    """A label to print and stick on the order's parts: barcode, order, reference, product, quantity."""
    return render_template("operator/label.html", order=svc.get_order(db_session(), g.actor, order_id),
                           value=barcode_value(order_id))
