#!/usr/bin/env python
"""Benchmark (not a test): "My work" and the supervisor's ledger with a year of production records.

Operators are paid by the piece, so the pages that add up their output are waited on at the end of a
shift and at the end of each pay period. This measures them on a real PostgreSQL holding 10,000 and
1,000,000 orders (mes.demo.load_orders) and, in both, the same year of production: 60 operators,
250 working days each ending today, 12 output records a day per operator (9 in production, 3 in
quality check; the two operators of a pair record on the same order in each slot), one rework per
40 production records, 4 floor events per output record (start, pause, resume, finish), and piece
rates for the 9 product families with rate changes in the middle of pay periods (one 3.5 days ago) and a
family without a rate for the first months (unpriced pieces). The measured operator holds 12 open orders.

Timed: "My work" of one operator (weekly pay periods, and monthly ones); the supervisor's ledger of the
previous week and of the previous month (MES_PAY_PERIOD=monthly: about 4x the records), each as a page
and as its CSV export; and one operator's ledger by day over a whole year, which no page shows yet (the
service call, timed around itself).

    python bench/ledger_bench.py [--sizes 10000,1000000] [--requests 40] [--warmup 5] [--out DIR]

Timed, interleaved and shuffled as in bench/queue_bench.py (whose helpers it uses): server time is
the app's `Server-Timing: app;dur` header of a Flask test-client request; the one service call
without a page (a whole year of one operator's ledger) is timed around the call. Goal, as for the
queue: p95 at 1,000,000 orders within 1.5x of p95 at 10,000. Writes bench/results/ledger_bench.json
and bench/results/plans-ledger-<size>.txt (EXPLAIN ANALYZE of the statements that read production
records or rates), and prints Markdown tables for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import queue_bench as qb  # noqa: E402  (bench/ is on sys.path; it puts this checkout's src/ first)
from flask import Flask
from sqlalchemy import text
from sqlalchemy.orm import Session

from mes import create_app
from mes.demo import load_orders
from mes.domain.actors import Actor, Role
from mes.extensions import limiter
from mes.models import utcnow
from mes.services import accounts
from mes.services import production as production_svc
from mes.testing.postgres import temporary_postgres
from signals import stop_on_signals

OPERATORS = 60
WORKING_DAYS = 250
RECORDS_PER_DAY = 12      # per operator: slots 0-8 in production, 9-11 in quality check
MAKING_SLOTS = 9
REWORK_EVERY = 40         # one rework per this many production records
PASSWORD = "bench-password"
CHIEF = "bench-chief"
MEASURED = "op01"         # the operator whose "My work" and year are timed
FAMILIES = ["BRKT", "BUSH", "FLNG", "GEAR", "HOUS", "PIN", "PLATE", "SHAFT", "VALVE"]
SHUFFLE_SEED = 20261130


# --------------------------------------------------------------------------------------------- data
def create_people(db: qb.Database) -> dict[str, int]:
    """The supervisor and the operators, before the orders: the loader hands held orders to them."""
    with db.owner_engine() as engine, Session(engine) as session:
        chief = accounts.create_operator(session, CHIEF, PASSWORD, role="supervisor")
        ids = {CHIEF: chief.id}
        for i in range(1, OPERATORS + 1):
            ids[f"op{i:02d}"] = accounts.create_operator(session, f"op{i:02d}", PASSWORD).id
        return ids


RATES_SQL = """
INSERT INTO piece_rates (family, stage, per_piece, valid_from, set_by_id, created_at)
SELECT f.family, r.stage, r.amount + f.i * 0.05, :now - r.ago, :chief, :now - r.ago
FROM unnest(CAST(:families AS text[])) WITH ORDINALITY AS f(family, i)
CROSS JOIN (VALUES ('in_production', 0.30, interval '400 days'),
                   ('in_production', 0.35, interval '210 days 6 hours'),
                   ('in_production', 0.3825, interval '95 days 12 hours'),
                   ('quality_check', 0.05, interval '400 days')) AS r(stage, amount, ago)
WHERE NOT (f.family = 'GEAR' AND r.stage = 'in_production' AND r.ago > interval '100 days');
-- GEAR is paid only from 100 days ago on: its earlier pieces are unpriced.
INSERT INTO piece_rates (family, stage, per_piece, valid_from, set_by_id, created_at)
SELECT family, 'in_production', 0.4420, :now - interval '3 days 12 hours', :chief, :now
FROM unnest(CAST(ARRAY['BRKT', 'SHAFT', 'GEAR'] AS text[])) AS family;
"""

# Working days count back from today (always one) over weekdays. In each slot the two operators of a
# pair record on the same order; order ids spread over the whole table (ids are 1..size).
RECORDS_SQL = """
WITH days AS (
    SELECT ago, row_number() OVER (ORDER BY ago) AS i
    FROM generate_series(0, 400) AS ago
    WHERE ago = 0 OR extract(isodow FROM CAST(:now AS timestamptz) - ago * interval '1 day') < 6
    ORDER BY ago LIMIT :days
), ops AS (
    SELECT id, row_number() OVER (ORDER BY id) - 1 AS i FROM unnest(CAST(:ops AS int[])) AS id
), rows AS (
    SELECT d.ago, d.i AS di, o.id AS operator_id, o.i AS oi, s.slot,
           5 + (d.i * 31 + o.i * 17 + s.slot * 13) % 120 AS good,
           CASE WHEN (d.i + o.i + s.slot) % 10 = 0 THEN 1 + s.slot % 3 ELSE 0 END AS scrap
    FROM days d CROSS JOIN ops o CROSS JOIN generate_series(0, :per_day - 1) AS s(slot)
)
INSERT INTO production_records (order_id, operator_id, kind, stage, good, scrap, defect_code_id, worked_seconds,
                                created_at)
SELECT 1 + (di * 7919 + slot * 104729 + (oi / 2) * 1299709) % :orders, operator_id, 'output',
       CASE WHEN slot < :making THEN 'in_production' ELSE 'quality_check' END, good, scrap,
       CASE WHEN scrap > 0 THEN :defect END, 300 + good * 20,
       CAST(:now AS timestamptz) - ago * interval '1 day' - (:per_day - 1 - slot) * interval '35 minutes'
           - (oi % 7) * interval '3 minutes' - interval '1 minute'
FROM rows ORDER BY ago DESC, slot, oi;
"""

REWORK_SQL = """
INSERT INTO production_records (order_id, operator_id, kind, stage, good, scrap, defect_code_id, worked_seconds,
                                reworks_id, created_at)
SELECT r.order_id, (CAST(:ops AS int[]))[1 + r.id % array_length(CAST(:ops AS int[]), 1)], 'rework',
       'quality_check', greatest(r.good / 10, 1), 0, :defect, 240, r.id,
       least(r.created_at + interval '2 hours', CAST(:now AS timestamptz))
FROM production_records r
WHERE r.kind = 'output' AND r.stage = 'in_production' AND r.id % :every = 0;
"""

EVENTS_SQL = """
INSERT INTO floor_events (order_id, operator_id, by_id, action, created_at)
SELECT r.order_id, r.operator_id, r.operator_id, e.action,
       r.created_at - (r.worked_seconds + 600) * interval '1 second' + e.at * r.worked_seconds * interval '1 second'
           + e.paused * interval '600 seconds'
FROM production_records r
CROSS JOIN (VALUES ('start', 0.0, 0), ('pause', 0.5, 0), ('resume', 0.5, 1), ('finish', 1.0, 1))
    AS e(action, at, paused)
WHERE r.kind = 'output'
ORDER BY r.id, e.at, e.paused;
"""


# The loader hands every open order in production to one of the active people: ~900 each at 1M orders. An
# operator holds a handful; the measured one keeps this many (the rest are released), at every size.
HELD = 12
RELEASE_SQL = """
UPDATE orders SET holder_id = NULL
WHERE holder_id = :op AND id NOT IN (SELECT id FROM orders WHERE holder_id = :op ORDER BY id LIMIT :held)
"""


@dataclass
class Seeded:
    seconds: float
    records: int
    events: int
    rates: int


def seed_production(db: qb.Database, people: dict[str, int]) -> Seeded:
    """A year of records, reworks, floor events and rates, in four INSERT ... SELECT statements."""
    ops = [people[f"op{i:02d}"] for i in range(1, OPERATORS + 1)]
    started = time.perf_counter()
    now = utcnow()
    with db.owner_engine() as engine, engine.begin() as conn:
        defect = conn.scalar(text("SELECT min(id) FROM reason_codes WHERE kind = 'defect' AND NOT requires_note"))
        for statement in RATES_SQL.split(";\n")[:-1]:
            conn.execute(text(statement), {"now": now, "chief": people[CHIEF], "families": FAMILIES})
        conn.execute(text(RECORDS_SQL), {"now": now, "days": WORKING_DAYS, "ops": ops, "per_day": RECORDS_PER_DAY,
                                         "making": MAKING_SLOTS, "orders": db.size, "defect": defect})
        conn.execute(text(REWORK_SQL), {"now": now, "ops": ops, "defect": defect, "every": REWORK_EVERY})
        conn.execute(text(EVENTS_SQL))
        conn.execute(text(RELEASE_SQL), {"op": people[MEASURED], "held": HELD})
    with db.owner_engine(isolation_level="AUTOCOMMIT") as engine, engine.connect() as conn:
        for table in ("production_records", "floor_events", "piece_rates", "orders", "order_events"):
            conn.exec_driver_sql(f"VACUUM (ANALYZE) {table}")
        counts = {t: conn.scalar(text(f"SELECT count(*) FROM {t}"))
                  for t in ("production_records", "floor_events", "piece_rates")}
    db.server.psql("CHECKPOINT;")
    return Seeded(time.perf_counter() - started, counts["production_records"], counts["floor_events"],
                  counts["piece_rates"])


# --------------------------------------------------------------------------------------------- timing
@dataclass
class Scenario:
    """A page (`url` on `client`) or, without a url, a service call timed around itself."""

    name: str
    description: str
    client: object = None
    url: str | None = None
    call: Callable[[], int] | None = None   # returns the number of lines it computed

    def run(self) -> tuple[float, float, int]:
        started = time.perf_counter()
        if self.call is not None:
            rows = self.call()
            wall = (time.perf_counter() - started) * 1000
            return wall, wall, rows
        resp = qb.get_ok(self.client, self.url)
        wall = (time.perf_counter() - started) * 1000
        match = qb.SERVER_TIMING.search(resp.headers.get("Server-Timing", ""))
        if match is None:
            raise qb.BenchError(f"GET {self.url} has no Server-Timing app;dur header")
        body = resp.get_data(as_text=True)
        rows = body.count("\n") - 1 if resp.mimetype == "text/csv" else body.count("<tr")
        return float(match.group(1)), wall, rows


@dataclass
class Target:
    size: int
    db: qb.Database
    apps: list[Flask]
    scenarios: list[Scenario] = field(default_factory=list)


def logged_in(app: Flask, login: str):
    client = app.test_client()
    resp = client.post("/operator/login", data={"login": login, "password": PASSWORD})
    if resp.status_code != 302:
        raise qb.BenchError(f"login of {login} failed: HTTP {resp.status_code}")
    return client


def make_app(db: qb.Database, **settings) -> Flask:
    app = create_app(replace(db.settings(), **settings))
    app.config["WTF_CSRF_ENABLED"] = False  # for the login POST; the measured requests are GETs
    return app


@contextmanager
def open_target(db: qb.Database, people: dict[str, int]) -> Iterator[Target]:
    weekly, monthly = make_app(db, pay_period="weekly"), make_app(db, pay_period="monthly")
    try:
        operator, chief, chief_monthly = logged_in(weekly, MEASURED), logged_in(weekly, CHIEF), \
            logged_in(monthly, CHIEF)
        supervisor = Actor(kind="operator", id=people[CHIEF], name=CHIEF, role=Role.SUPERVISOR)

        def operator_year() -> int:
            end = utcnow().date() + timedelta(days=1)
            with Session(weekly.extensions["mes_engine"]) as session:
                return len(production_svc.ledger(session, supervisor, end - timedelta(days=366), end,
                                                 operator_id=people[MEASURED]))

        # The supervisor pays a period once it has ended: the previous week, the previous month (full ones,
        # whatever the weekday of the run). "My work" is today's: its week and month hold what they hold.
        today = utcnow().date()
        last_week, last_month = today - timedelta(days=7), today.replace(day=1) - timedelta(days=1)
        operator_monthly = logged_in(monthly, MEASURED)
        target = Target(db.size, db, [weekly, monthly])
        target.scenarios = [
            Scenario("my_work", f"GET /operator/my-work as {MEASURED} (today, this week; weekly pay periods)",
                     operator, "/operator/my-work"),
            Scenario("my_work_month", f"GET /operator/my-work as {MEASURED} with MES_PAY_PERIOD=monthly",
                     operator_monthly, "/operator/my-work"),
            Scenario("ledger_week", "GET /operator/ledger?day=<a week ago>, supervisor: every operator's "
                     "previous weekly period", chief, f"/operator/ledger?day={last_week}"),
            Scenario("ledger_week_csv", "the same as CSV (&format=csv)", chief,
                     f"/operator/ledger?day={last_week}&format=csv"),
            Scenario("ledger_month", "GET /operator/ledger?day=<last month> with MES_PAY_PERIOD=monthly",
                     chief_monthly, f"/operator/ledger?day={last_month}"),
            Scenario("ledger_month_csv", "the same as CSV (&format=csv)", chief_monthly,
                     f"/operator/ledger?day={last_month}&format=csv"),
            Scenario("operator_year", f"services.production.ledger: {MEASURED}'s lines by day over 366 days "
                     "(no page shows it; timed around the call)", call=operator_year),
        ]
        yield target
    finally:
        for app in (weekly, monthly):
            app.extensions["mes_engine"].dispose()


def run_requests(targets: list[Target], warmup: int, requests: int) -> dict[tuple[int, str], qb.Timings]:
    """As queue_bench: warm-up, then shuffled rounds of one request per (size, scenario)."""
    jobs = [(t, sc) for t in targets for sc in t.scenarios]
    for _ in range(warmup):
        for _target, sc in jobs:
            sc.run()
    timings = {(t.size, sc.name): qb.Timings() for t, sc in jobs}
    rng = random.Random(SHUFFLE_SEED)
    for _ in range(requests):
        rng.shuffle(jobs)
        for target, sc in jobs:
            server, wall, rows = sc.run()
            t = timings[(target.size, sc.name)]
            t.server_ms.append(server)
            t.wall_ms.append(wall)
            t.rows.append(rows)
    return timings


# --------------------------------------------------------------------------------------------- plans
# The production tables, and the orders' products looked up by id (= ANY) for the ledger.
PRODUCTION_SQL = re.compile(r"\bFROM (production_records|piece_rates|floor_events)\b|\bFROM orders\b.*= ANY", re.S)


def explain(target: Target) -> list[dict]:
    """EXPLAIN (ANALYZE, BUFFERS) of the statements the pages send to the production tables."""
    plans = []
    with target.db.owner_engine() as owner:
        for sc in target.scenarios:
            engine = target.apps[1 if "month" in sc.name else 0].extensions["mes_engine"]
            with qb.captured_sql(engine) as seen:
                sc.run()
            with owner.connect() as conn:
                cursor = conn.connection.dbapi_connection.cursor()
                for statement, params in seen:
                    if not PRODUCTION_SQL.search(statement):
                        continue
                    sql = cursor.mogrify(statement, params).decode()
                    cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
                    plan = "\n".join(row[0] for row in cursor.fetchall())
                    facts = qb.plan_facts(plan)
                    facts["seq_scan"] = sorted(set(re.findall(r"Seq Scan on (\w+)", plan)))
                    plans.append({"scenario": sc.name, "sql": sql, "plan": plan, **facts})
                conn.rollback()
    return plans


def write_plans(path: Path, size: int, plans: list[dict]) -> None:
    lines = [f"-- EXPLAIN (ANALYZE, BUFFERS) of the statements on production records and rates at {size:,} orders.",
             f"-- Written by bench/ledger_bench.py on {qb.now_iso()}; captured from real requests.", ""]
    seen: dict[str, str] = {}
    for p in plans:
        lines.append(f"-- ===== {p['scenario']}")
        if p["sql"] in seen:
            lines += [f"-- same statement as under {seen[p['sql']]}", ""]
            continue
        seen[p["sql"]] = p["scenario"]
        lines += [f"-- indexes: {', '.join(p['indexes']) or 'none'}; seq scans: {', '.join(p['seq_scan']) or 'none'}; "
                  f"buffers: {p['buffers']}; {p['execution_ms']} ms", _shortened(p["sql"]) + ";", "", p["plan"], ""]
    qb.write_atomically(path, "\n".join(lines))


def _shortened(sql: str, limit: int = 3000) -> str:
    """A statement for the plans file: a month's order ids are thousands of numbers."""
    return sql if len(sql) <= limit else f"{sql[:limit]} ... ({len(sql) - limit:,} more characters)"


# --------------------------------------------------------------------------------------------- report
def markdown_tables(report: dict) -> str:
    sizes = [int(s) for s in report["sizes"]]
    small, large = sizes[0], sizes[-1]
    names = list(report["sizes"][str(small)]["scenarios"])

    def sc(size: int, name: str) -> dict:
        return report["sizes"][str(size)]["scenarios"][name]

    head = ["Scenario", "rows"] + [f"{qb.label(s)} p50 / p95 / p99" for s in sizes]
    if len(sizes) > 1:
        head.append(f"p95 {qb.label(large)}/{qb.label(small)}")
    out = [qb._row(head), "|" + "---|" * len(head)]
    for name in names:
        cells = [f"`{name}`", "/".join(str(sc(s, name)["rows"]) for s in sizes)]
        cells += [qb._three(sc(s, name)["server_ms"]) for s in sizes]
        if len(sizes) > 1:
            ratio = sc(large, name)["server_ms"]["p95"] / sc(small, name)["server_ms"]["p95"]
            cells.append(f"**{ratio:.2f}**" + ("" if ratio <= qb.GOAL_RATIO else " ✗"))
        out.append(qb._row(cells))
    return "Server time (Server-Timing app;dur; operator_year: around the call), ms\n\n" + "\n".join(out)


def run(args: argparse.Namespace) -> dict:
    report = {"started": qb.now_iso(), "requests_per_scenario": args.requests, "warmup_per_scenario": args.warmup,
              "environment": qb.environment(), "data": {
                  "operators": OPERATORS, "working_days": WORKING_DAYS, "output_records_per_operator_day":
                  RECORDS_PER_DAY, "rework_every": REWORK_EVERY}, "sizes": {}}
    qb.log("starting a throwaway PostgreSQL")
    with temporary_postgres(settings=qb.PG_SETTINGS) as server, ExitStack() as stack:
        targets, loads = [], {}
        for size in args.sizes:
            qb.log(f"loading {size:,} orders into a database of their own")
            db = qb.create_database(server, size)
            people = create_people(db)
            started = time.perf_counter()
            with db.owner_engine() as engine:
                load_orders(engine, size, seed=qb.LOAD_SEED, progress=qb._progress_printer(size, started))
            load_seconds = time.perf_counter() - started
            seeded = seed_production(db, people)
            qb.log(f"  {size:,} orders in {load_seconds:.0f} s; {seeded.records:,} production records, "
                   f"{seeded.events:,} floor events, {seeded.rates} rates in {seeded.seconds:.0f} s")
            loads[size] = {"orders_seconds": round(load_seconds, 1), "production_seconds": round(seeded.seconds, 1),
                           "production_records": seeded.records, "floor_events": seeded.events,
                           "piece_rates": seeded.rates}
            targets.append(stack.enter_context(open_target(db, people)))
        report["environment"]["postgres"] = qb.postgres_version(targets[0].db)
        qb.log(f"timing {len(targets)} sizes x {len(targets[0].scenarios)} scenarios: "
               f"{args.warmup} warm-up + {args.requests} timed each")
        load_before, started = os.getloadavg()[0], time.perf_counter()
        timings = run_requests(targets, args.warmup, args.requests)
        report["measure_seconds"] = round(time.perf_counter() - started, 1)
        report["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        for target in targets:
            plans = explain(target)
            write_plans(args.out / f"plans-ledger-{qb.label(target.size).lower()}.txt", target.size, plans)
            report["sizes"][str(target.size)] = {
                "load": loads[target.size],
                "scenarios": {sc.name: {"description": sc.description, "url": sc.url,
                                        "server_ms": qb.summarize(timings[(target.size, sc.name)].server_ms),
                                        "wall_ms": qb.summarize(timings[(target.size, sc.name)].wall_ms),
                                        "rows": max(timings[(target.size, sc.name)].rows)}
                              for sc in target.scenarios},
                "plans": [{k: v for k, v in p.items() if k not in ("plan", "sql")} for p in plans]}
        limiter.reset()
    report["finished"] = qb.now_iso()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=qb.parse_sizes, default=[10_000, 1_000_000],
                        help="order counts, comma-separated; one database each (default: 10000,1000000)")
    parser.add_argument("--requests", type=int, default=40, help="timed requests per scenario and size")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per scenario and size first")
    parser.add_argument("--out", type=Path, default=qb.RESULTS,
                        help="folder for the JSON and the plans (default: bench/results)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    try:
        report = run(args)
    except KeyboardInterrupt:
        qb.log("interrupted; the temporary PostgreSQL was stopped and removed")
        return 130
    qb.write_atomically(args.out / "ledger_bench.json", json.dumps(report, indent=2) + "\n")
    print(markdown_tables(report))
    for size, r in report["sizes"].items():
        print(f"{int(size):,} orders: {r['load']}")
    print(f"Details: {os.path.relpath(args.out / 'ledger_bench.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
