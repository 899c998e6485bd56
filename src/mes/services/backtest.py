"""The daily check of the projections against what happened (mes.domain.backtest), kept for the board."""
from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import begin_write
from ..domain import forecast
from ..domain.backtest import Track, replay
from ..domain.forecast import StageEvent
from ..domain.holds import EventKind
from ..domain.lifecycle import Status
from ..models import ForecastCheck, Order, OrderEvent, utcnow
from .forecast import load_model

LEAD_IN = timedelta(days=90)  # orders created this long before the window fill its queues


def backtest(session: Session, days: int = 90, now: datetime | None = None) -> ForecastCheck:
    """Replay the history of the last `days` and keep the report."""
    now = now or utcnow()
    since = now - timedelta(days=days)
    model = load_model(session)
    rows = session.execute(
        select(Order.id, Order.product, Order.promised_date, OrderEvent.kind, OrderEvent.to_status,
               OrderEvent.created_at)
        .join(OrderEvent, OrderEvent.order_id == Order.id)
        .where(Order.created_at >= since - LEAD_IN)
        .order_by(Order.id, OrderEvent.id))
    tracks: list[Track] = []
    for oid, product, promised, kind, to_status, at in rows:
        if not tracks or tracks[-1].order_id != oid:
            tracks.append(Track(oid, forecast.family_of(product), promised))
        tracks[-1].events.append(StageEvent(EventKind(kind), Status(to_status), at))
    report = replay(tracks, model.norms, since=since, until=now, margin_days=model.policy.margin_days)
    check = ForecastCheck(computed_at=now, window_days=days, **{k: v for k, v in asdict(report).items() if k != "note"})
    begin_write(session)
    session.add(check)
    session.commit()
    return check


def latest_check(session: Session) -> ForecastCheck | None:
    return session.scalar(select(ForecastCheck).order_by(ForecastCheck.id.desc()).limit(1))
