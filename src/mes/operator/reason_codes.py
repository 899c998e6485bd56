"""The supervisors' page for reason codes, one list per kind (hold, late, defect and cancel reasons): add,
relabel, retire and restore, each change in the audit log. Operators are refused (403) on every route,
reading included: the list they choose from is on the order page."""
from __future__ import annotations

from flask import flash, g, redirect, render_template, request, url_for
from flask_login import login_required

from .. import query_params
from ..domain import actors
from ..domain.errors import DomainError
from ..domain.reason_codes import CODE_MAX_LENGTH, LABEL_MAX_LENGTH, Kind
from ..services import accounts
from ..services import reason_codes as codes
from ..web import db_session
from . import bp
from .forms import ActionForm, NewReasonCodeForm, RelabelForm


@bp.before_request
def _supervisors_only():
    if request.endpoint and request.endpoint.startswith("operator.reason_code") and g.get("actor") is not None:
        actors.require_supervisor(g.actor, "change reason codes")


#: The kinds a supervisor keeps here, with what the page calls them.
KINDS: dict[Kind, tuple[str, str]] = {
    Kind.HOLD: ("Hold reasons", "Operators choose these when they put an order on hold; partners see the label."),
    Kind.LATE: ("Late reasons", "Operators choose these when they move an order that is at risk or late: the "
                                "recorded cause of a missed promise, counted on the flow board."),
    Kind.DEFECT: ("Defect codes", "Operators record scrap and pieces sent back from the quality check with these."),
    Kind.CANCEL: ("Cancel reasons", "Supervisors choose one of these to cancel an order; it stays in the order's "
                                    "history, partners never see it."),
}


def _kind() -> Kind:
    """The list on show: ?kind=late, or the form's hidden field; the hold reasons by default."""
    value = request.values.get("kind") or Kind.HOLD.value
    try:
        kind = Kind(value)
    except ValueError:
        kind = None
    if kind not in KINDS:
        raise query_params.bad_query("kind", "must be one of " + ", ".join(k.value for k in KINDS))
    return kind


@bp.get("/reason-codes")
@login_required
def reason_codes(new_form: NewReasonCodeForm | None = None, code: int = 200):
    kind = _kind()
    title, note = KINDS[kind]
    return render_template("operator/reason_codes.html", codes=codes.listed(db_session(), kind), kind=kind,
                           kinds=KINDS, title=title, note=note,
                           new_form=new_form or NewReasonCodeForm(formdata=None),
                           relabel_form=RelabelForm(formdata=None), action_form=ActionForm(),
                           code_max=CODE_MAX_LENGTH, label_max=LABEL_MAX_LENGTH), code


def _done(action, message: str, audited: str):
    """Run a change; a done one goes into the audit log (what, on which code of which list, the label)."""
    try:
        row = action()
        accounts.audit(db_session(), g.actor, audited, f"{row.kind} {row.code}", row.label)
        flash(message, "success")
    except DomainError as err:
        flash(err.detail, "error")
    return redirect(url_for("operator.reason_codes", kind=_kind().value))


@bp.post("/reason-codes")
@login_required
def reason_code_add():
    form = NewReasonCodeForm()
    if not form.validate():
        flash(f"Nothing was added. {form.problems()}", "error")
        return reason_codes(new_form=form, code=422)
    kind = _kind()
    return _done(lambda: codes.add(db_session(), g.actor, kind, form.code.data, form.label.data,
                                   requires_note=bool(form.requires_note.data)),
                 f"{KINDS[kind][0][:-1]} {form.label.data.strip()!r} added.", "reason code added")


@bp.post("/reason-codes/<id:code_id>/label")
@login_required
def reason_code_relabel(code_id: int):
    form = RelabelForm()
    if not form.validate():
        flash(f"The label was not changed. {form.problems()}", "error")
        return redirect(url_for("operator.reason_codes", kind=_kind().value))
    return _done(lambda: codes.relabel(db_session(), g.actor, code_id, form.label.data), "Label changed.",
                 "reason code relabelled")


@bp.post("/reason-codes/<id:code_id>/retire")
@login_required
def reason_code_retire(code_id: int):
    return _done(lambda: codes.retire(db_session(), g.actor, code_id),
                 "Reason retired: it stays where it was used and can no longer be chosen.", "reason code retired")


@bp.post("/reason-codes/<id:code_id>/restore")
@login_required
def reason_code_restore(code_id: int):
    return _done(lambda: codes.restore(db_session(), g.actor, code_id), "Reason can be chosen again.",
                 "reason code restored")
