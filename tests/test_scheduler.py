"""The periodic jobs: each run is taken by exactly one scheduler, a failing job is recorded and spares the
others, and `mes run-scheduler` runs them and stops cleanly on SIGTERM (both databases)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import event, select

from mes import scheduler
from mes.models import CrmHeartbeat, JobLease, utcnow

ROOT = Path(__file__).resolve().parent.parent


def counting_job(name: str, runs: list, every=timedelta(minutes=5), fail=False) -> scheduler.Job:
    def run(session):
        runs.append(name)
        time.sleep(0.05)  # long enough for a second scheduler to try while this one runs
        if fail:
            raise RuntimeError("disk full")
        return "done"
    return scheduler.Job(name, every, run)


def test_each_run_is_taken_by_one_scheduler(app):
    make = app.extensions["mes_sessionmaker"]
    runs: list[str] = []
    jobs = (counting_job("a", runs), counting_job("b", runs))
    threads = [threading.Thread(target=scheduler.run_due, args=(make, jobs, f"s{i}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(runs) == ["a", "b"]
    assert scheduler.run_due(make, jobs, "late") == []  # not due again for five minutes
    with make() as session:
        leases = {row.name: row for row in session.scalars(select(JobLease))}
    assert leases["a"].last_ok and leases["a"].last_result == "done"
    assert leases["a"].next_run_at - leases["a"].started_at == timedelta(minutes=5)


def test_a_job_whose_row_exists_is_taken_without_a_failing_insert(app):
    """Every tick used to try the insert first and swallow the duplicate key: an ERROR in the primary's
    log per job and tick. Now only a job's first run inserts."""
    make = app.extensions["mes_sessionmaker"]
    runs: list[str] = []
    job = counting_job("often", runs, every=timedelta(0))
    assert scheduler.run_due(make, (job,), "s1") == ["often"]
    statements: list[str] = []
    engine = app.extensions["mes_engine"]

    def listen(conn, cursor, statement, *rest):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", listen)
    try:
        assert scheduler.run_due(make, (job,), "s1") == ["often"]
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    assert runs == ["often", "often"]
    assert statements and not [s for s in statements if "INSERT" in s.upper()], statements


def test_a_failing_job_is_recorded_and_the_others_still_run(app):
    make = app.extensions["mes_sessionmaker"]
    runs: list[str] = []
    ran = scheduler.run_due(make, (counting_job("broken", runs, fail=True), counting_job("fine", runs)), "s1")
    assert ran == ["broken", "fine"]
    with make() as session:
        broken = session.get(JobLease, "broken")
    assert broken.last_ok is False and broken.last_result == "RuntimeError: disk full"


def test_the_scheduler_process_runs_the_jobs_and_stops_on_sigterm(app, settings):
    env = {**os.environ, "DATABASE_URL": settings.database_url, "SECRET_KEY": "test-secret",
           "PYTHONPATH": str(ROOT / "src"), "LOG_LEVEL": "INFO"}
    proc = subprocess.Popen([sys.executable, "-m", "mes", "run-scheduler"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        make = app.extensions["mes_sessionmaker"]
        deadline = time.monotonic() + 60
        names: set[str] = set()
        while time.monotonic() < deadline and len(names) < 6:
            with make() as session:
                names = set(session.scalars(select(JobLease.name).where(JobLease.finished_at.is_not(None))))
            time.sleep(0.2)
        assert names == {"crm-heartbeat", "recompute-norms", "recompute-promises", "purge-idempotency-keys",
                         "prune-webhook-outbox", "backtest-forecasts"}
        with make() as session:
            assert all(lease.last_ok for lease in session.scalars(select(JobLease)))
            assert utcnow() - session.get(CrmHeartbeat, 1).beat_at < timedelta(seconds=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "scheduler stopped" in out
