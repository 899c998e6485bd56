"""The service's periodic jobs, run by `mes run-scheduler` on every operator app host (and by `make up`).

Several schedulers may run at once, for availability: each job's row in `job_leases` says when it is due
next, and a scheduler runs a job only after moving that time forward in one conditional UPDATE on the
primary, so that exactly one of them wins each run. A scheduler that dies mid-run leaves the job due at
its next time, when another one takes it.
"""
from __future__ import annotations

import logging
import signal
import socket
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .config import Settings
from .db import begin_write
from .models import CrmHeartbeat, JobLease, utcnow
from .services import backtest as backtest_svc
from .services import forecast
from .services import webhooks as webhooks_svc
from .services.orders import purge_idempotency_keys

log = logging.getLogger("mes.scheduler")
TICK_SECONDS = 5.0


@dataclass(frozen=True)
class Job:
    name: str
    every: timedelta
    run: Callable[[Session], str]  # returns one line for the log and the lease's last result


def jobs(cfg: Settings) -> tuple[Job, ...]:
    """What runs how often; the intervals are settings (mes.config)."""
    def promises(session: Session) -> str:
        return str(forecast.recompute_promises(session))

    def norms(session: Session) -> str:
        return str(forecast.recompute_norms(session))

    def idempotency(session: Session) -> str:
        return f"{purge_idempotency_keys(session, cfg.idempotency_retention)} idempotency keys purged"

    def webhook_outbox(session: Session) -> str:
        removed = webhooks_svc.prune_outbox(session, cfg.webhook_retention, cfg.webhook_prune_batch)
        return f"{removed} webhook events pruned"

    def backtest(session: Session) -> str:
        c = backtest_svc.backtest(session)
        return f"{c.orders} orders scored, mean absolute error {c.mean_abs_error_days} days"

    return (
        Job("crm-heartbeat", timedelta(seconds=TICK_SECONDS), crm_heartbeat),
        Job("recompute-norms", timedelta(seconds=cfg.norms_recompute_seconds), norms),
        Job("recompute-promises", timedelta(seconds=cfg.promise_recompute_seconds), promises),
        Job("purge-idempotency-keys", timedelta(hours=1), idempotency),
        Job("prune-webhook-outbox", timedelta(hours=1), webhook_outbox),
        Job("backtest-forecasts", timedelta(days=1), backtest),
    )


def crm_heartbeat(session: Session) -> str:
    """Rewrite the published heartbeat row (mes.crm_contract): the CRM's database measures its lag in seconds
    from it, and it keeps the replication slot moving when no order changes."""
    begin_write(session)
    now = utcnow()
    if session.execute(update(CrmHeartbeat).where(CrmHeartbeat.id == 1).values(beat_at=now)
                       .execution_options(synchronize_session=False)).rowcount == 0:
        session.execute(insert(CrmHeartbeat).values(id=1, beat_at=now))
    session.commit()
    return "crm heartbeat written"


def claim(session: Session, job: Job, now: datetime, holder: str) -> bool:
    """Take this run of the job if it is due: move its next time forward, unless another scheduler did.
    The job's row is created by its first run; the update comes first so that the usual case (the row
    exists) writes no failed insert into the database's log every tick."""
    begin_write(session)
    taken = {"next_run_at": now + job.every, "holder": holder, "started_at": now}
    won = session.execute(
        update(JobLease).where(JobLease.name == job.name, JobLease.next_run_at <= now).values(**taken)
        .execution_options(synchronize_session=False)).rowcount == 1
    if not won and session.scalar(select(JobLease.name).where(JobLease.name == job.name)) is None:
        try:
            with session.begin_nested():
                session.execute(insert(JobLease).values(name=job.name, **taken))
            won = True
        except IntegrityError:
            pass  # another scheduler created the row first, and took this run with it
    session.commit()
    return won


def finish(session: Session, job: Job, result: str, ok: bool) -> None:
    begin_write(session)
    session.execute(update(JobLease).where(JobLease.name == job.name)
                    .values(finished_at=utcnow(), last_result=result[:500], last_ok=ok)
                    .execution_options(synchronize_session=False))
    session.commit()


def run_due(make_session: Callable[[], Session], all_jobs: tuple[Job, ...], holder: str) -> list[str]:
    """One pass: every due job that this scheduler wins, one after another. Returns the jobs it ran."""
    ran = []
    for job in all_jobs:
        with make_session() as session:
            if not claim(session, job, utcnow(), holder):
                continue
            try:
                result, ok = job.run(session), True
            except Exception as exc:  # one job's failure must not stop the others, nor the scheduler
                session.rollback()
                log.exception("job failed", extra={"job": job.name})
                result, ok = f"{type(exc).__name__}: {exc}", False
            finish(session, job, result, ok)
            log.info("job ran", extra={"job": job.name, "result": result, "ok": ok})
            ran.append(job.name)
    return ran


def due(session: Session) -> dict[str, datetime]:
    """When each job runs next (for `mes jobs`)."""
    return {row.name: row.next_run_at for row in session.scalars(select(JobLease))}


def serve(make_session: Callable[[], Session], cfg: Settings) -> None:
    """Run due jobs until SIGTERM or SIGINT; a job that has started finishes first."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    holder = f"{socket.gethostname()}:{os.getpid()}"
    all_jobs = jobs(cfg)
    log.info("scheduler started", extra={"holder": holder, "jobs": [j.name for j in all_jobs]})
    while not stop.is_set():
        try:
            run_due(make_session, all_jobs, holder)
        except Exception:  # the database is away (a failover): try again at the next tick
            log.exception("scheduler pass failed")
        stop.wait(TICK_SECONDS)
    log.info("scheduler stopped", extra={"holder": holder})
