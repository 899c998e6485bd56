#!/usr/bin/env python
"""Benchmark (not a test): how fast the webhook delivery workers empty the outbox, and how long a partner
waits from a status change to its webhook.

A real PostgreSQL 15 (durable: fsync and synchronous commit on), the app's migrations, a partner's API key
and an endpoint registered through the API for `order.status_changed`. Orders are created through the API
and moved along the lifecycle through the service layer (`mes.services.orders.change_status`), so every
outbox row is written by the app's own session hook, in the change's transaction. The workers are the real
`mes deliver-webhooks` processes of this checkout, allowed to send plain http to 127.0.0.1. The receiver is
a threaded HTTP server on 127.0.0.1 in a process of its own (HTTP/1.1, keep-alive) that verifies every
signature with the standardwebhooks library and keeps each webhook-id with its time of receipt.

Each run has an endpoint (and a receiver path) of its own; the previous run's endpoint is switched off.

- drain: a backlog of `--backlog` status changes already committed, then 1 or 2 workers started, in
  `--rounds` shuffled rounds (medians reported); the rate is taken between the 10% and 90% receipts (the
  workers' start-up left out), CPU per event of the workers and of every PostgreSQL process over the same
  span (from /proc), statements and transactions per event (pg_stat_statements) over the whole drain; one
  more drain with 2 workers whose sessions commit asynchronously shows what a commit's flush costs;
- stream: 1 or 2 workers already running, then status changes at `--rate` per second for `--seconds`
  (below capacity); latency from the change's commit (when change_status returned) to its receipt;
- slow receiver: the receiver answers after `--slow-ms`; a backlog of `--slow-events` drained with 1 and
  2 workers and a few batch sizes (MES_WEBHOOK_BATCH): what the settings give when the receiver is slow;
- profile: one worker's passes over a backlog of `--profile-events`, in this process under cProfile: the
  shares of its time in claiming, sending, recording, and waiting on PostgreSQL;
- every run counts webhook-ids received more than once (expected 0: nothing fails here), missing ones and
  signatures that do not verify.

    python bench/webhook_bench.py [--backlog 1000] [--rounds 3] [--rate 20] [--seconds 20] [--slow-ms 200]
                                  [--slow-events 60] [--profile-events 500] [--out DIR]

Writes bench/results/webhook_bench.json (or DIR/webhook_bench.json) and prints Markdown tables for
BENCHMARKS.md. Nothing is asserted about time.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "src"))

PARTNER = "bench-partner"
CHIEF = ("bench-chief", "bench-password")
NO_LIMITS = {"standard": "10000000/minute", "bulk": "10000000/minute", "crm": "10000000/minute"}
LOOPBACK = "127.0.0.1/32"
STEPS = ("queued", "in_production", "quality_check", "packed")  # one status change each, from "received"
TICKS = os.sysconf("SC_CLK_TCK")
RUN_TIMEOUT = 180.0
SEED = 20261130


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ receiver
def receiver_main(commands, port, count, delay) -> None:
    """The receiver's process: verify, keep (path, webhook-id, receipt time, order id, status), answer 200
    (400 when the signature does not verify); commands from the benchmark over a pipe."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    hooks: dict[str, Webhook] = {}
    records: list[tuple] = []
    invalid: list[str] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver
        disable_nagle_algorithm = True  # else the body's own segment waits for the client's delayed ACK

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received = time.time()
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                data = hooks[self.path].verify(body, headers)["data"]
            except (KeyError, WebhookVerificationError):
                data = None
            if delay.value:
                time.sleep(delay.value)
            with lock:
                if data is None:
                    invalid.append(self.path)
                else:
                    records.append((self.path, headers.get("webhook-id"), received, data.get("order_id"),
                                    data.get("to_status")))
            with count.get_lock():
                count.value += 1
            reply = b"ok" if data is not None else b"bad signature"
            self.send_response(200 if data is not None else 400)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    commands.send("ready")
    while True:
        command, *args = commands.recv()
        if command == "secret":
            hooks[args[0]] = Webhook(args[1])
            commands.send("ok")
        elif command == "records":
            with lock:
                commands.send(([r for r in records if r[0] == args[0]], invalid.count(args[0])))
        elif command == "stop":
            server.shutdown()
            server.server_close()
            commands.send("ok")
            return


class Receiver:
    """The receiver process, seen from the benchmark."""

    def __init__(self, port: int):
        ctx = multiprocessing.get_context("spawn")  # nothing of the benchmark's connections is inherited
        self.port = port
        self.count = ctx.Value("q", 0)
        self.delay = ctx.Value("d", 0.0)
        self.pipe, child_end = ctx.Pipe()
        self.process = ctx.Process(target=receiver_main, args=(child_end, port, self.count, self.delay),
                                   daemon=True)
        self.process.start()
        if not self.pipe.poll(30) or self.pipe.recv() != "ready":
            raise SystemExit("the receiver did not start")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ask(self, *command):
        self.pipe.send(command)
        return self.pipe.recv()

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.ask("stop")
            except (OSError, EOFError):
                pass
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()


# ------------------------------------------------------------------------------------------ the app's side
class Shop:
    """The app in the benchmark's process: orders through the API, status changes through the service layer,
    endpoints through the API."""

    def __init__(self, app, key: str, chief_id: int, receiver: Receiver):
        from mes.services.accounts import operator_actor
        from mes.models import Operator

        self.app, self.receiver = app, receiver
        self.factory = app.extensions["mes_sessionmaker"]
        self.api = app.test_client()
        self.headers = {"Authorization": f"Bearer {key}"}
        with self.factory() as session:
            self.actor = operator_actor(session.get(Operator, chief_id))
        self.orders_made = 0
        self.endpoint: int | None = None

    def orders(self, n: int) -> list[int]:
        """n new orders through the API, made by a few threads (a test client each)."""
        refs = [f"WH-{self.orders_made + i + 1:06d}" for i in range(n)]
        self.orders_made += n

        def make(part: list[str]) -> list[int]:
            api, ids = self.app.test_client(), []
            for ref in part:
                resp = api.post("/api/v1/orders", headers={**self.headers, "Idempotency-Key": ref},
                                json={"reference": ref, "product": "BRKT-200", "material": "steel S235",
                                      "quantity": 10})
                if resp.status_code != 201:
                    raise SystemExit(f"creating an order: HTTP {resp.status_code} {resp.get_data(as_text=True)}")
                ids.append(resp.get_json()["id"])
            return ids

        return [oid for part in in_threads(make, refs) for oid in part]

    def changes(self, n: int) -> list[tuple[int, str]]:
        """n status changes to make (order, target), on fresh orders, four per order."""
        ids = self.orders(-(-n // len(STEPS)))
        return [(oid, step) for oid in ids for step in STEPS][:n]

    def change(self, session, order_id: int, step: str) -> float:
        """One status change through the service layer; the time it committed (when it returned)."""
        from mes.domain.lifecycle import Status
        from mes.services import orders as svc

        svc.change_status(session, self.actor, order_id, Status(step))
        return time.time()

    def apply(self, changes: list[tuple[int, str]]) -> None:
        """Make these changes, each order's in its order, by a few threads (a session each)."""
        by_order: dict[int, list[str]] = {}
        for oid, step in changes:
            by_order.setdefault(oid, []).append(step)

        def make(part: list[int]) -> list[None]:
            with self.factory() as session:
                for i, oid in enumerate(part):
                    for step in by_order[oid]:
                        self.change(session, oid, step)
                    if i % 50 == 49:
                        session.close()  # a fresh identity map now and then
            return []

        in_threads(make, list(by_order))

    def new_endpoint(self, name: str) -> str:
        """Switch the previous run's endpoint off and register this run's; its secret to the receiver."""
        if self.endpoint is not None:
            resp = self.api.patch(f"/api/v1/webhook-endpoints/{self.endpoint}", headers=self.headers,
                                  json={"active": False})
            if resp.status_code != 200:
                raise SystemExit(f"switching an endpoint off: HTTP {resp.status_code}")
        path = f"/hooks/{name}"
        resp = self.api.post("/api/v1/webhook-endpoints", headers={**self.headers, "Idempotency-Key": uuid.uuid4().hex},
                             json={"url": self.receiver.url(path), "event_types": ["order.status_changed"],
                                   "description": f"benchmark run {name}"})
        if resp.status_code != 201:
            raise SystemExit(f"registering an endpoint: HTTP {resp.status_code} {resp.get_data(as_text=True)}")
        body = resp.get_json()
        self.endpoint = body["id"]
        self.receiver.ask("secret", path, body["secret"])
        return path


def in_threads(work, items: list, threads: int = 4) -> list:
    """work(part) on `threads` interleaved parts of items, in threads: the setup overlaps its commits."""
    parts = [items[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(work, parts))


# ------------------------------------------------------------------------------------------ workers
class Workers:
    """`mes deliver-webhooks` processes of this checkout."""

    def __init__(self, n: int, env: dict[str, str], *, batch: int, poll: float):
        from mes.testing.postgres import free_port

        self.ports = [free_port() for _ in range(n)]
        worker_env = {**env, "MES_WEBHOOK_BATCH": str(batch), "MES_WEBHOOK_POLL_SECONDS": str(poll)}
        self.started = time.time()
        self.procs = [subprocess.Popen([sys.executable, "-m", "mes", "deliver-webhooks", "--metrics-port", str(p)],
                                       env=worker_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True) for p in self.ports]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every worker serves its metrics (its app is built, its loop about to start)."""
        deadline = time.monotonic() + timeout
        for port, proc in zip(self.ports, self.procs):
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"a worker exited: {proc.stderr.read()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("a worker did not start") from None
                    time.sleep(0.1)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"a worker exited: {proc.stderr.read()[-2000:]}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def running(n: int, env: dict[str, str], **settings):
    workers = Workers(n, env, **settings)
    try:
        yield workers
    finally:
        workers.stop()


# ------------------------------------------------------------------------------------------ measuring
def cpu_seconds(pids: list[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return found


def postgres_pids(postmaster: int) -> list[int]:
    """The postmaster and every process it started (backends, walwriter, checkpointer, autovacuum)."""
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return pids


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings; a process started in between counts from zero."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


class Database:
    """The superuser's view of pg_stat_statements: the app role's statements (and transactions: its COMMITs
    and ROLLBACKs) per event."""

    def __init__(self, server):
        self.server = server

    def reset(self) -> None:
        self.server.psql("SELECT pg_stat_statements_reset(); SELECT pg_stat_reset_shared('wal');", dbname="mes")

    def wal_flushes(self) -> tuple[int, float]:
        """WAL flushes (fsyncs) since the reset, and the milliseconds they took (track_wal_io_timing)."""
        out = self.server.psql("COPY (SELECT wal_sync, wal_sync_time FROM pg_stat_wal) TO STDOUT;", dbname="mes")
        count, ms = out.split()
        return int(count), float(ms)

    def statements(self) -> list[tuple[int, str]]:
        out = self.server.psql(
            "COPY (SELECT calls, regexp_replace(left(query, 90), '\\s+', ' ', 'g') FROM pg_stat_statements s "
            "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = 'mes_app' ORDER BY calls DESC) TO STDOUT;",
            dbname="mes")
        rows = []
        for line in out.splitlines():
            calls, _, query = line.partition("\t")
            rows.append((int(calls), query))
        return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def wait_for(receiver: Receiver, target: int, workers: Workers, marks: dict[float, callable]) -> None:
    """Until the receiver has counted `target` requests; each mark (a share of the run) calls its function
    once when reached (those not reached by the deadline, at the end)."""
    start = receiver.count.value
    todo = sorted(marks.items())
    deadline = time.monotonic() + RUN_TIMEOUT
    total = target - start
    while receiver.count.value < target and time.monotonic() < deadline:
        done = receiver.count.value - start
        while todo and done >= todo[0][0] * total:
            todo.pop(0)[1]()
        workers.check_alive()
        time.sleep(0.005)
    for _, call in todo:
        call()


def examine(receiver: Receiver, path: str, expected: dict[tuple[int, str], float]) -> dict:
    """What the receiver got on this run's path: receipts in order, duplicates, missing, bad signatures."""
    records, invalid = receiver.ask("records", path)
    ids = [r[1] for r in records]
    first: dict[tuple[int, str], float] = {}
    for _, _, t, oid, status in sorted(records, key=lambda r: r[2]):
        first.setdefault((oid, status), t)
    return {"receipts": sorted(r[2] for r in records), "requests": len(records),
            "duplicates": len(ids) - len(set(ids)), "missing": sum(1 for k in expected if k not in first),
            "bad_signatures": invalid, "first": first}


# ------------------------------------------------------------------------------------------ the runs
def drain(shop: Shop, receiver: Receiver, db: Database, postmaster: int, env: dict, *, name: str, events: int,
          workers: int, batch: int, poll: float = 1.0, async_commit: bool = False) -> dict:
    """A backlog already queued, then the workers started: how fast they empty it. `async_commit`: the
    workers' sessions (only theirs: the role's setting, read when they connect) commit without waiting
    for the WAL flush, to see what the one commit per delivery costs."""
    path = shop.new_endpoint(name)
    todo = shop.changes(events)
    made = time.time()
    shop.apply(todo)
    log(f"{name}: {events} status changes queued in {time.time() - made:.1f} s; {workers} worker(s), batch {batch}")
    expected = dict.fromkeys(todo, made)
    if async_commit:
        db.server.psql("ALTER ROLE mes_app SET synchronous_commit = off;", dbname="mes")
    db.reset()
    base = receiver.count.value
    readings: dict[str, tuple[float, dict, dict]] = {}
    with running(workers, env, batch=batch, poll=poll) as procs:
        def reading(label):
            return lambda: readings.__setitem__(label, (time.time(), cpu_seconds(procs.pids()),
                                                        cpu_seconds(postgres_pids(postmaster))))
        wait_for(receiver, base + events, procs, {0.1: reading("10%"), 0.9: reading("90%")})
        statements = db.statements()
    time.sleep(0.5)  # the workers' backends have ended and reported their WAL statistics
    flushes, flush_ms = db.wal_flushes()
    if async_commit:
        db.server.psql("ALTER ROLE mes_app RESET synchronous_commit;", dbname="mes")
    seen = examine(receiver, path, expected)
    receipts = seen["receipts"]
    lo, hi = receipts[int(0.1 * (len(receipts) - 1))], receipts[int(0.9 * (len(receipts) - 1))]
    span = int(0.9 * (len(receipts) - 1)) - int(0.1 * (len(receipts) - 1))
    (_, w10, p10), (_, w90, p90) = readings["10%"], readings["90%"]
    per_event = span or 1
    result = {
        "run": name, "events": events, "workers": workers, "batch": batch, "poll_seconds": poll,
        "synchronous_commit": "off" if async_commit else "on", "delay_ms": round(receiver.delay.value * 1000),
        "events_per_second": round(span / (hi - lo), 1) if hi > lo else None,
        "events_per_second_overall": round((len(receipts) - 1) / (receipts[-1] - receipts[0]), 1)
        if len(receipts) > 1 else None,
        "seconds_from_start_to_drained": round(receipts[-1] - procs.started, 2) if receipts else None,
        "worker_cpu_ms_per_event": round(cpu_used(w10, w90) * 1000 / per_event, 3),
        "postgres_cpu_ms_per_event": round(cpu_used(p10, p90) * 1000 / per_event, 3),
        "cpu_window_events": span,
        "transactions_per_event": round(sum(c for c, q in statements if q in ("COMMIT", "ROLLBACK")) / events, 2),
        "statements_per_event": round(sum(c for c, _ in statements) / events, 2),
        "wal_flushes_per_event": round(flushes / events, 2),
        "wal_flush_ms_average": round(flush_ms / flushes, 2) if flushes else None,
        "top_statements": [{"per_event": round(c / events, 2), "query": q} for c, q in statements[:8]],
        "duplicates": seen["duplicates"], "missing": seen["missing"], "bad_signatures": seen["bad_signatures"],
        "requests": seen["requests"], "load_average": os.getloadavg()[0],
    }
    waits = [seen["first"][k] - made for k in expected if k in seen["first"]]
    result["last_event_waited_seconds"] = round(max(waits), 2) if waits else None
    log(f"  {result['events_per_second']} events/s (10%-90%), worker CPU {result['worker_cpu_ms_per_event']} ms/event, "
        f"PostgreSQL CPU {result['postgres_cpu_ms_per_event']} ms/event, {result['statements_per_event']} "
        f"statements/event, {result['wal_flushes_per_event']} WAL flushes/event of "
        f"{result['wal_flush_ms_average']} ms, "
        f"duplicates {result['duplicates']}, missing {result['missing']}")
    return result


def stream(shop: Shop, receiver: Receiver, env: dict, *, name: str, rate: float, seconds: float, workers: int,
           batch: int = 20, poll: float = 1.0) -> dict:
    """Workers already running, then status changes at a steady rate: commit to receipt."""
    path = shop.new_endpoint(name)
    todo = shop.changes(int(rate * seconds))
    base = receiver.count.value
    expected: dict[tuple[int, str], float] = {}
    with running(workers, env, batch=batch, poll=poll) as procs:
        procs.wait_ready()
        time.sleep(1.5)  # past the first pass of each worker
        log(f"{name}: {len(todo)} status changes at {rate}/s, {workers} worker(s), poll {poll} s")
        started = time.time()
        late = 0.0
        with shop.factory() as session:
            for i, (oid, step) in enumerate(todo):
                due = started + i / rate
                now = time.time()
                if due > now:
                    time.sleep(due - now)
                else:
                    late = max(late, now - due)
                expected[(oid, step)] = shop.change(session, oid, step)
                if i % 200 == 199:
                    session.close()
        produced = time.time() - started
        wait_for(receiver, base + len(todo), procs, {})
    seen = examine(receiver, path, expected)
    latencies = [(seen["first"][k] - t) * 1000 for k, t in expected.items() if k in seen["first"]]
    result = {
        "run": name, "events": len(todo), "workers": workers, "batch": batch, "poll_seconds": poll,
        "rate_asked": rate, "rate_made": round(len(todo) / produced, 1), "most_behind_schedule_ms": round(late * 1000),
        "latency_ms": {"p50": round(percentile(latencies, 0.5)), "p95": round(percentile(latencies, 0.95)),
                       "p99": round(percentile(latencies, 0.99)), "max": round(max(latencies))} if latencies else None,
        "duplicates": seen["duplicates"], "missing": seen["missing"], "bad_signatures": seen["bad_signatures"],
        "requests": seen["requests"], "load_average": os.getloadavg()[0],
    }
    log(f"  latency {result['latency_ms']}, duplicates {result['duplicates']}, missing {result['missing']}")
    return result


def profile(shop: Shop, settings, events: int) -> dict:
    """One worker's passes in this process under cProfile, over a backlog: the shares of its time in
    recording outcomes, in sending, and in waiting on PostgreSQL (the driver's execute and commit)."""
    import cProfile
    import pstats

    import mes
    from mes import webhook_worker as worker_module
    from mes.webhook_worker import WebhookMetrics, http_session, run_once

    shop.new_endpoint("profile")
    shop.apply(shop.changes(events))
    worker = mes.create_app(settings)  # as `mes deliver-webhooks` builds it, tracing included
    worker_module.init_tracing()
    factory, metrics = worker.extensions["mes_sessionmaker"], WebhookMetrics()
    http = http_session(settings.webhook_address_policy)
    profiler, delivered = cProfile.Profile(), 0
    wall, cpu = time.perf_counter(), time.process_time()
    profiler.enable()
    while count := sum(run_once(factory, settings, metrics, http=http).values()):
        delivered += count
    profiler.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    worker.extensions["mes_engine"].dispose()
    stats = pstats.Stats(profiler).stats

    def cumulative(function) -> float:
        code = function.__code__
        return stats.get((code.co_filename, code.co_firstlineno, code.co_name), (0, 0, 0, 0.0))[3]

    def own(builtin: str) -> float:
        return sum(v[2] for (path, _, name), v in stats.items() if path == "~" and name == builtin)

    total = cumulative(run_once)
    db_wait = (own("<method 'execute' of 'psycopg2.extensions.cursor' objects>")
               + own("<method 'commit' of 'psycopg2.extensions.connection' objects>"))
    result = {"events": delivered, "wall_ms_per_event_profiled": round(wall * 1000 / delivered, 2),
              "cpu_ms_per_event_profiled": round(cpu * 1000 / delivered, 2),
              "share_record": round(cumulative(worker_module.record) / total, 2),
              "share_send": round(cumulative(worker_module.send) / total, 2),
              "share_claim": round(cumulative(worker_module.claim) / total, 2),
              "share_waiting_on_postgresql": round(db_wait / total, 2)}
    log(f"profile: {result}")
    return result


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from signals import stop_on_signals
    from sqlalchemy.orm import Session
    from sqlalchemy import create_engine

    import mes
    from mes.config import Settings
    from mes.migrate import upgrade
    from mes.services import accounts
    from mes.testing.postgres import create_mes_database, free_port, temporary_postgres

    stop_on_signals()
    began = time.time()
    load_before = os.getloadavg()
    with ExitStack() as stack:
        receiver = Receiver(free_port())
        stack.callback(receiver.close)
        server = stack.enter_context(temporary_postgres({"shared_preload_libraries": "pg_stat_statements",
                                                         "pg_stat_statements.track": "all",
                                                         "track_wal_io_timing": "on"}))
        owner_url, app_url = create_mes_database(server)
        server.psql("CREATE EXTENSION pg_stat_statements;", dbname="mes")
        settings = Settings(pools=("operator", "public"), database_url=app_url, migration_database_url=owner_url,
                            app_db_role="mes_app", secret_key="bench-secret", rate_limits=dict(NO_LIMITS),
                            log_level="WARNING", webhook_allow_http=True, webhook_allowed_networks=(LOOPBACK,))
        upgrade(settings)
        engine = create_engine(owner_url)
        with Session(engine) as session:
            chief = accounts.create_operator(session, *CHIEF, role="supervisor").id
            key = accounts.create_client(session, PARTNER, scope="partner", partner_name="Bench Partner").key
        engine.dispose()
        app = mes.create_app(settings)
        stack.callback(lambda: app.extensions["mes_engine"].dispose())
        shop = Shop(app, key, chief, receiver)
        postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
        db = Database(server)
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith(("MES_", "PG", "OTEL_")) and k not in ("MIGRATION_DATABASE_URL", "REDIS_URL")}
        env = {**inherited, "PYTHONPATH": str(ROOT / "src"), "DATABASE_URL": app_url, "SECRET_KEY": "bench-secret",
               "MES_WEBHOOK_ALLOW_HTTP": "1", "MES_WEBHOOK_ALLOWED_NETWORKS": LOOPBACK, "LOG_LEVEL": "WARNING",
               "MES_DB_APPLICATION_NAME": "mes-webhook-worker"}

        runs: dict[str, list[dict]] = {"drain": [], "stream": [], "slow": []}
        rng = random.Random(SEED)
        drains = {"1w": dict(workers=1), "2w": dict(workers=2), "2w-async-commit": dict(workers=2, async_commit=True)}
        for round_ in range(1, args.rounds + 1):  # shuffled rounds: a burst of other processes' load hits all alike
            for name in rng.sample(list(drains), len(drains)):
                runs["drain"].append(drain(shop, receiver, db, postmaster, env, name=f"drain-{name}-r{round_}",
                                           events=args.backlog, batch=20, **drains[name]))
        for workers in (1, 2):
            runs["stream"].append(stream(shop, receiver, env, name=f"stream-{workers}w", rate=args.rate,
                                         seconds=args.seconds, workers=workers))
        runs["stream"].append(stream(shop, receiver, env, name="stream-2w-poll0.1", rate=args.rate,
                                     seconds=args.seconds, workers=2, poll=0.1))
        receiver.delay.value = args.slow_ms / 1000
        for workers, batch in ((1, 20), (2, 20), (2, 5), (2, 100)):
            runs["slow"].append(drain(shop, receiver, db, postmaster, env, name=f"slow-{workers}w-batch{batch}",
                                      events=args.slow_events, workers=workers, batch=batch))
        receiver.delay.value = 0.0
        worker_profile = profile(shop, settings, args.profile_events)

    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": f"python bench/webhook_bench.py --backlog {args.backlog} --rounds {args.rounds} --rate {args.rate} "
                   f"--seconds {args.seconds} --slow-ms {args.slow_ms} --slow-events {args.slow_events} "
                   f"--profile-events {args.profile_events}",
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "postgresql": "15, durable (fsync, synchronous_commit on)",
        "worker_defaults": {"batch": 20, "poll_seconds": 1.0},
        "run_seconds": round(time.time() - began),
        "drain_medians": drain_medians(runs["drain"]),
        "worker_profile": worker_profile,
        "runs": runs,
    }
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    (out / "webhook_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


def drain_medians(drains: list[dict]) -> list[dict]:
    """Per configuration of the drain runs: the medians over its rounds."""
    groups: dict[tuple, list[dict]] = {}
    for r in drains:
        groups.setdefault((r["workers"], r["synchronous_commit"]), []).append(r)
    found = []
    for (workers, sync), rs in groups.items():
        rates = [r["events_per_second"] for r in rs if r["events_per_second"]]
        found.append({"workers": workers, "synchronous_commit": sync, "runs": len(rs),
                      "events_per_second": statistics.median(rates), "min": min(rates), "max": max(rates),
                      **{k: statistics.median(r[k] for r in rs) for k in (
                          "worker_cpu_ms_per_event", "postgres_cpu_ms_per_event", "statements_per_event",
                          "transactions_per_event", "seconds_from_start_to_drained", "wal_flushes_per_event")},
                      "wal_flush_ms_average": statistics.median(r["wal_flush_ms_average"] or 0 for r in rs),
                      "duplicates": sum(r["duplicates"] for r in rs), "missing": sum(r["missing"] for r in rs)})
    return found


def git_commit() -> dict:
    def git(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "--short", "HEAD"), "src_changed": bool(git("status", "--porcelain", "src"))}


def markdown(report: dict) -> str:
    runs = report["runs"]
    lines = ["| run | workers | batch | synchronous_commit | events | events/s (10%-90%) | start to drained (s) "
             "| worker CPU ms/event | PostgreSQL CPU ms/event | statements/event | transactions/event | duplicates "
             "| missing |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs["drain"]:
        lines.append(f"| {r['run']} | {r['workers']} | {r['batch']} | {r['synchronous_commit']} | {r['events']} | "
                     f"{r['events_per_second']} | {r['seconds_from_start_to_drained']} | "
                     f"{r['worker_cpu_ms_per_event']} | {r['postgres_cpu_ms_per_event']} | "
                     f"{r['statements_per_event']} | {r['transactions_per_event']} | {r['duplicates']} | "
                     f"{r['missing']} |")
    lines += ["", "| run | workers | poll (s) | events | rate asked / made | p50 / p95 / p99 / max (ms) "
              "| duplicates | missing |", "|---|---|---|---|---|---|---|---|"]
    for r in runs["stream"]:
        lat = r["latency_ms"] or {}
        lines.append(f"| {r['run']} | {r['workers']} | {r['poll_seconds']} | {r['events']} | {r['rate_asked']} / "
                     f"{r['rate_made']} | {lat.get('p50')} / {lat.get('p95')} / {lat.get('p99')} / {lat.get('max')} | "
                     f"{r['duplicates']} | {r['missing']} |")
    lines += ["", "| run | workers | batch | receiver answers in (ms) | events | events/s (10%-90%) | events/s (first "
              "to last) | start to drained (s) | duplicates | missing |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs["slow"]:
        lines.append(f"| {r['run']} | {r['workers']} | {r['batch']} | {r['delay_ms']} | {r['events']} | "
                     f"{r['events_per_second']} | {r['events_per_second_overall']} | "
                     f"{r['seconds_from_start_to_drained']} | {r['duplicates']} | {r['missing']} |")
    one = next(m for m in report["drain_medians"] if m["workers"] == 1)
    lines += ["", "| workers | synchronous_commit | runs | events/s median (min-max) | vs 1 worker "
              "| worker CPU ms/event | PostgreSQL CPU ms/event | statements/event | WAL flushes/event (ms each) "
              "| duplicates | missing |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in report["drain_medians"]:
        lines.append(f"| {m['workers']} | {m['synchronous_commit']} | {m['runs']} | {m['events_per_second']} "
                     f"({m['min']}-{m['max']}) | {m['events_per_second'] / one['events_per_second']:.2f}x | "
                     f"{m['worker_cpu_ms_per_event']} | {m['postgres_cpu_ms_per_event']} | "
                     f"{m['statements_per_event']} | {m['wal_flushes_per_event']} ({m['wal_flush_ms_average']}) | "
                     f"{m['duplicates']} | {m['missing']} |")
    two = next(r for r in runs["drain"] if r["workers"] == 2 and r["synchronous_commit"] == "on")
    lines += ["", f"Statements per delivered event ({two['run']}):", ""]
    lines += [f"- {s['per_event']}: `{s['query']}`" for s in two["top_statements"]]
    lines += ["", f"One worker under cProfile: {json.dumps(report['worker_profile'])}"]
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=1000, help="events queued before the workers start")
    parser.add_argument("--rounds", type=int, default=3, help="drain runs of each worker count, shuffled")
    parser.add_argument("--rate", type=float, default=20.0, help="status changes per second in the stream runs")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each stream run")
    parser.add_argument("--slow-ms", type=int, default=200, help="the slow receiver's answer time")
    parser.add_argument("--slow-events", type=int, default=60, help="backlog of the slow-receiver runs")
    parser.add_argument("--profile-events", type=int, default=500, help="backlog of the profiled pass")
    parser.add_argument("--out", help="folder of the results (default bench/results/)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
