"""Shipping from the order page: a form for the shipment (carrier, tracking number and link, packages,
pieces) that ships a packed order, and records further shipments of a shipped one. A plain form, so that
a keyboard alone does it; a refused shipment is shown again with what was typed and each field's error."""
from __future__ import annotations

from flask import flash, g, redirect, render_template, url_for
from flask_login import login_required

from ..domain import shipments as rules
from ..domain.errors import DomainError, ValidationFailed
from ..domain.lifecycle import Status
from ..domain.reason_codes import Kind
from ..effects import status_changed
from ..services import forecast as forecast_svc
from ..services import orders as svc
from ..services import reason_codes
from ..services import shipments as shipments_svc
from ..web import db_session
from . import bp
from .forms import ShipmentForm


def _page(order_id: int, form: ShipmentForm | None = None, code: int = 200, errors: dict | None = None):
    session = db_session()
    order = svc.get_order(session, g.actor, order_id)
    try:
        rules.check_may_ship(Status(order.status))
    except DomainError as err:
        flash(err.detail, "error")
        return redirect(url_for("operator.order", order_id=order_id))
    limits = shipments_svc.limits(session, order)
    first = order.status == Status.PACKED.value
    late_codes = reason_codes.listed(session, Kind.LATE, active_only=True) \
        if first and forecast_svc.late_reason_owed(order) else []
    if form is None:
        form = ShipmentForm(formdata=None, version=order.status_version, packages="1",
                            quantity=str(limits.left) if limits.left else "")
    return render_template("operator/ship.html", order=order, limits=limits, first=first, form=form,
                           late_codes=late_codes, errors=errors or {}, no_scan_focus=True), code


@bp.get("/orders/<id:order_id>/ship")
@login_required
def ship_order(order_id: int):
    return _page(order_id)


@bp.post("/orders/<id:order_id>/ship")
@login_required
def confirm_ship(order_id: int):
    form = ShipmentForm()
    if not form.validate():
        flash(f"Nothing was shipped. {form.problems()}", "error")
        return _page(order_id, form, 422, {name: ", ".join(e) for name, e in form.errors.items()})
    try:
        done = shipments_svc.record(db_session(), g.actor, order_id, fields=form.fields(),
                                    expected_version=form.version.data, late_reason_id=form.late_reason.data)
    except DomainError as err:
        fields = {e["field"]: e["message"] for e in err.extensions.get("errors", [])} \
            if isinstance(err, ValidationFailed) else {}
        flash(f"Nothing was shipped. {err.detail}", "error")
        return _page(order_id, form, err.status, fields)
    if done.change is not None:
        status_changed(done.change)
    s, q = done.shipment, done.limits
    tracking = f", tracking {s.tracking_number}" if s.tracking_number else ""
    what = "shipped" if done.change is not None else "has a further shipment"
    flash(f"Order {order_id} {what}: {s.quantity} pieces in {s.packages} "
          f"package{'s' if s.packages != 1 else ''} with {s.carrier}{tracking}; "
          f"{q.shipped} of {q.ordered} shipped.", "success")
    return redirect(url_for("operator.order", order_id=order_id))
