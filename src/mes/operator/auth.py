"""Operator login and logout (session cookie, CSRF, throttled wrong passwords); sessions.py says when
a session ends."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from flask import flash, g, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from ..db import read_on_primary
from ..domain.logins import normalize_login
from ..effects import route_reads
from ..extensions import budget, limiter, login_manager
from ..reconnect import retry_while_unavailable
from ..services.accounts import check_operator_login
from ..web import db_session, settings
from . import bp, sessions
from .forms import ActionForm, LoginForm

# Visible ASCII but the backslash, after one slash (a browser sends anything else percent-encoded).
_LOCAL_PATH = re.compile(r"/(?!/)[!-\[\]-~]*\Z")

login_manager.login_view = "operator.login"
login_manager.login_message = "Please log in to see the orders queue."
login_manager.user_loader(sessions.operator_of)


@bp.before_request
def _set_actor():
    if request.endpoint == "operator.static":
        return  # the stylesheet needs no operator (and no database)
    if current_user.is_authenticated:
        g.actor = current_user.actor
        route_reads()


def _login_throttle_key() -> str:
    """Per address and login, under the same normalised login that the lookup uses."""
    return f"login:{request.remote_addr}:{normalize_login(request.form.get('login', ''))}"


def _safe_next(target: str | None) -> str:
    """Only local paths, so that the login form cannot redirect elsewhere (browsers read `/\\` as
    `//`) nor put line breaks into the Location header."""
    if target and _LOCAL_PATH.match(target) and not urlsplit(target).netloc:
        return target
    return url_for("operator.queue")


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: budget(settings().login_limit), key_func=_login_throttle_key, methods=["POST"],
               deduct_when=lambda response: response.status_code != 302,
               error_message="Too many failed logins; wait a minute and try again.")
def login():
    form = LoginForm(next=request.args.get("next"))
    if form.validate_on_submit():
        # On the primary: a password changed or an operator deactivated a moment ago counts already.
        op = retry_while_unavailable(lambda: read_on_primary(
            db_session(), lambda: check_operator_login(db_session(), form.login.data, form.password.data)))
        if op is not None:
            sessions.start(op)
            return redirect(_safe_next(form.next.data))
        flash("Wrong login or password.", "error")
        return render_template("operator/login.html", form=form), 401
    return render_template("operator/login.html", form=form), 400 if form.errors else 200


@bp.post("/logout")
@login_required
def logout():
    ActionForm()  # CSRF is checked globally; the form only documents it
    sessions.end_everywhere(current_user.op)
    flash("You are logged out.", "info")
    return redirect(url_for("operator.login"))
