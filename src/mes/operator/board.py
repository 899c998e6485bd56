"""The supervisors' flow board: work in progress, throughput, lead time, on-time delivery, orders at
risk, holds, the causes of missed promises and how good the projections were, on one page. Operators are refused (403), like on the
reason-code page: the board is for steering the floor, the queue is for working it."""
from __future__ import annotations

from datetime import datetime, timedelta

from flask import g, render_template, request
from flask_login import login_required

from ..domain import actors, flow
from ..domain.holds import format_age
from ..models import utcnow
from ..services import backtest
from ..services import board as svc
from ..web import db_session
from . import bp

# The throughput chart's drawing area in SVG user units (the SVG scales to the panel's width).
CHART_WIDTH, CHART_HEIGHT = 700, 120


@bp.before_request
def _supervisors_only():
    if request.endpoint == "operator.board" and g.get("actor") is not None:
        actors.require_supervisor(g.actor, "see the flow board")


@bp.get("/board")
@login_required
def board():
    now = utcnow()
    data = svc.board(db_session(), now)
    check = backtest.latest_check(db_session())
    bars = flow.column_bars([d.count for d in data.throughput], width=CHART_WIDTH, height=CHART_HEIGHT)
    return render_template(
        "operator/board.html", board=data, now=now, check=check, throughput=list(zip(data.throughput, bars)),
        shipped_14=sum(d.count for d in data.throughput), chart_width=CHART_WIDTH, chart_height=CHART_HEIGHT,
        pareto=list(zip(data.late_reasons, flow.pareto_spans(data.late_reasons))),
        throughput_days=flow.THROUGHPUT_DAYS, recent_days=flow.RECENT_DAYS, vital_share=flow.VITAL_SHARE,
        unforecast_cap=svc.UNFORECAST_CAP, percent=flow.percent, age=lambda since: _age(now, since))


def _age(now: datetime, since: datetime | None) -> str:
    """How long ago, as the floor reads it (3d 4h, 5h 12m, 7m)."""
    return format_age(max(now - since, timedelta(0))) if since is not None else ""
