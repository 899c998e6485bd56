#!/usr/bin/env python
"""Benchmark (not a test): does the orders queue stay fast when the orders table grows 100x?

It measures the server time of the operator queue page (GET /operator/) and of the API's order
list (GET /api/v1/orders) on a real PostgreSQL holding 10,000 and 1,000,000 orders.  The goal:
p95 at 1,000,000 orders within 1.5x of p95 at 10,000, which needs every page to be one index
range (keyset pagination) and no request to count the whole table.

One throwaway PostgreSQL holds one database per size, each loaded from scratch with
mes.demo.load_orders.  Both are measured in the same interleaved, shuffled sequence of
requests, so a burst of noise on a shared machine hits both sizes alike instead of
whichever size happened to be measured at that moment; the ratio compares like with like.  The
server is always stopped and its folder deleted, also on Ctrl-C, SIGTERM or an error.

Requests go through Flask's test client in this process: no HTTP server or network is timed.
Server time is the app's own `Server-Timing: app;dur=<ms>` header; the wall time around the call
is kept as well.  CSRF protection is switched off in the benchmark's app instances only, so that
the operator can log in with a plain form POST; the measured requests are all GETs.

    python bench/queue_bench.py [--sizes 10000,1000000] [--requests 300] [--warmup 50] [--out DIR]

Writes bench/results/queue_bench.json and bench/results/plans-<size>.txt (EXPLAIN ANALYZE of
the app's own queries), and prints Markdown tables for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import os
import platform
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# Measure the code of this checkout, not whatever version of `mes` happens to be installed.
sys.path.insert(0, str(ROOT / "src"))

from flask import Flask  # noqa: E402
from sqlalchemy import create_engine, event, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from mes import create_app  # noqa: E402
from mes.config import Settings  # noqa: E402
from mes.demo import PARTNER_NAMES, load_orders  # noqa: E402
from mes.extensions import limiter  # noqa: E402
from mes.migrate import upgrade  # noqa: E402
from mes.services import accounts, forecast  # noqa: E402
from mes.testing.postgres import PostgresServer, create_mes_database, temporary_postgres  # noqa: E402
from signals import stop_on_signals  # noqa: E402  (bench/ is on sys.path)

GOAL_RATIO = 1.5
# Durable (fsync stays on).  Bigger buffers so that 1M orders and their indexes fit in memory, as
# they would on the production host; a large max_wal_size so the bulk load is not one checkpoint
# after another.  Everything else is PostgreSQL's default (JIT and autovacuum included).
PG_SETTINGS = {"shared_buffers": "1GB", "max_wal_size": "8GB", "checkpoint_timeout": "30min"}
# High enough that no measured request is ever rate limited.
NO_LIMITS = {"standard": "10000000/minute", "bulk": "10000000/minute", "crm": "10000000/minute"}
OPERATOR = ("bench-operator", "bench-password")
LOAD_SEED = 1  # every database gets the same generator stream: the small one is the large one's start
SHUFFLE_SEED = 20261126
PAGES_FOLLOWED = 5  # "deep"/"next" scenarios are this many pages in
SERVER_TIMING = re.compile(r"\bapp;dur=([0-9.]+)")
NEXT_LINK = re.compile(r'<a rel="next" href="([^"]+)"')
ORDER_ROW = re.compile(r"data-order-id=")


class BenchError(RuntimeError):
    """The run would measure the wrong thing (an error page, a redirect to the login...)."""


# --------------------------------------------------------------------------------------------- databases
@dataclass
class Database:
    """One application database with the production privilege split: the owner migrates and
    loads, the app role (which the app connects as) only reads and writes rows."""

    server: PostgresServer
    size: int
    owner_url: str
    app_url: str
    app_role: str

    @contextmanager
    def owner_engine(self, **kwargs) -> Iterator[Engine]:
        """A short-lived engine, disposed afterwards, so no idle connection outlives its use."""
        engine = create_engine(self.owner_url, **kwargs)
        try:
            yield engine
        finally:
            engine.dispose()

    def settings(self) -> Settings:
        return Settings(pools=("operator", "public"), database_url=self.app_url,
                        migration_database_url=self.owner_url, app_db_role=self.app_role,
                        secret_key="bench-secret", rate_limits=dict(NO_LIMITS), log_level="WARNING")


@dataclass
class Keys:
    partner: str
    crm: str


@dataclass
class Loaded:
    seconds: float
    vacuum_seconds: float
    norms_seconds: float = 0.0
    promises_first_seconds: float = 0.0  # every open order gets its first projection (all written)
    promises_again_seconds: float = 0.0  # the scheduled run in steady state (little to write)
    open_orders: int = 0


def create_database(server: PostgresServer, size: int) -> Database:
    """A migrated database of its own per size (roles are per cluster, so they are per size too)."""
    tag = label(size).lower()
    owner_url, app_url = create_mes_database(server, dbname=f"mes_{tag}", owner=(f"mes_owner_{tag}", "owner-pw"),
                                             app=(f"mes_app_{tag}", "app-pw"))
    db = Database(server, size, owner_url, app_url, app_role=f"mes_app_{tag}")
    upgrade(db.settings())
    return db


def create_accounts(db: Database) -> Keys:
    """One operator (a supervisor, who also sees the flow board), one partner key and one CRM key.

    They exist before the orders are loaded, so the operator holds some orders (the loader
    hands held orders to active operators) and the partner is one of the loader's partners
    (it gets its 1/25 share of the orders).
    """
    with db.owner_engine() as engine, Session(engine) as session:
        accounts.create_operator(session, *OPERATOR, role="supervisor")  # the board is theirs; the queue is the same
        partner = accounts.create_client(session, "bench-partner", scope="partner", partner_name=PARTNER_NAMES[0])
        crm = accounts.create_client(session, "bench-crm", scope="crm", rate_tier="crm")
        return Keys(partner=partner.key, crm=crm.key)


def load(db: Database) -> Loaded:
    """Load the orders with mes.demo.load_orders (COPY), then VACUUM ANALYZE and CHECKPOINT.

    The vacuum and checkpoint are there so that neither autovacuum nor a checkpoint starts in
    the middle of the measurement: the table is measured in the steady state it reaches in
    production a few minutes after a load.  Their cost is reported apart from the load.
    """
    with db.owner_engine() as engine:
        started = time.perf_counter()
        load_orders(engine, db.size, seed=LOAD_SEED, progress=_progress_printer(db.size, started))
        seconds = time.perf_counter() - started
        # The scheduler's jobs, timed: what one full recomputation of the promise costs at this size.
        with Session(engine) as session:
            started = time.perf_counter()
            forecast.recompute_norms(session)
            norms = time.perf_counter() - started
            started = time.perf_counter()
            first = forecast.recompute_promises(session)
            promises_first = time.perf_counter() - started
            started = time.perf_counter()
            forecast.recompute_promises(session)
            promises_again = time.perf_counter() - started
    started = time.perf_counter()
    with db.owner_engine(isolation_level="AUTOCOMMIT") as engine, engine.connect() as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE) orders")
        conn.exec_driver_sql("VACUUM (ANALYZE) order_events")
    db.server.psql("CHECKPOINT;")  # superuser only: over the server's local socket
    return Loaded(seconds, time.perf_counter() - started, norms, promises_first, promises_again, first.open_orders)


def _progress_printer(total: int, started: float) -> Callable[[int], None]:
    """Print a line every ~10% of a load, so that a long load visibly moves."""
    done = 0
    step = max(total // 10, 1)

    def progress(n: int) -> None:
        nonlocal done
        before, done = done, done + n
        if done // step != before // step or done == total:
            elapsed = time.perf_counter() - started
            log(f"  loaded {done:>9,} / {total:,} orders  {elapsed:6.1f} s  ({done / elapsed:,.0f}/s)")

    return progress


def table_facts(db: Database) -> dict[str, int]:
    with db.owner_engine() as engine, engine.connect() as conn:
        return {
            "orders": conn.scalar(text("SELECT count(*) FROM orders")),
            "order_events": conn.scalar(text("SELECT count(*) FROM order_events")),
            "open_orders": conn.scalar(text(
                "SELECT count(*) FROM orders WHERE status IN "
                "('received', 'queued', 'in_production', 'quality_check', 'packed')")),
            "orders_bytes_with_indexes": conn.scalar(text("SELECT pg_total_relation_size('orders')")),
        }


def existing_open_reference(db: Database) -> str:
    """A reference an operator would search for: the newest order waiting in the queue."""
    with db.owner_engine() as engine, engine.connect() as conn:
        ref = conn.scalar(text("SELECT reference FROM orders WHERE status = 'queued' ORDER BY id DESC LIMIT 1"))
    if ref is None:
        raise BenchError("no queued order to search for")
    return ref


# --------------------------------------------------------------------------------------------- the app
@dataclass
class Scenario:
    """One kind of request; `urls` are cycled (several when it stands for "the next pages")."""

    name: str
    description: str
    urls: list[str]
    as_operator: bool
    headers: dict[str, str] = field(default_factory=dict)
    # Held to the 1.5x goal: a page of rows is. The board is not: its 30-day windows hold what the
    # factory shipped, which grows with the data (it is reported, and its plans checked).
    held_to_goal: bool = True


@dataclass
class Target:
    """One size under test: its database, an app on it, and the requests to time."""

    db: Database
    app: Flask
    operator: object  # Flask test client holding the operator's session cookie
    api: object  # Flask test client without cookies: API calls carry a bearer key
    scenarios: list[Scenario] = field(default_factory=list)

    def client(self, scenario: Scenario):
        return self.operator if scenario.as_operator else self.api


@contextmanager
def open_target(db: Database) -> Iterator[Target]:
    """An app on this database with the operator logged in through the real login form."""
    app = create_app(db.settings())
    app.config["WTF_CSRF_ENABLED"] = False  # for the login POST; the measured requests are GETs
    try:
        operator = app.test_client()
        resp = operator.post("/operator/login", data={"login": OPERATOR[0], "password": OPERATOR[1]})
        if resp.status_code != 302:
            raise BenchError(f"operator login failed: HTTP {resp.status_code}")
        yield Target(db, app, operator, app.test_client())
    finally:
        app.extensions["mes_engine"].dispose()


def get_ok(client, url: str, headers: dict[str, str] | None = None):
    resp = client.get(url, headers=headers or {})
    if resp.status_code != 200:
        raise BenchError(f"GET {url} answered HTTP {resp.status_code}, not 200: the run would time an error")
    return resp


def follow_queue_pages(client, first_url: str, pages: int) -> list[str]:
    """The URLs of pages 2..pages+1, found as a user finds them: the "Next page" link."""
    urls, url = [], first_url
    for _ in range(pages):
        match = NEXT_LINK.search(get_ok(client, url).get_data(as_text=True))
        if match is None:
            break
        url = html.unescape(match.group(1))
        urls.append(url)
    return urls


def follow_api_pages(client, first_url: str, headers: dict[str, str], pages: int) -> list[str]:
    """The URLs of pages 2..pages+1, following next_cursor as an API client does."""
    urls, url = [], first_url
    base, _, query = first_url.partition("?")
    for _ in range(pages):
        cursor = get_ok(client, url, headers).get_json()["next_cursor"]
        if not cursor:
            break
        url = f"{base}?{query + '&' if query else ''}{urlencode({'cursor': cursor})}"
        urls.append(url)
    return urls


def build_scenarios(target: Target, keys: Keys) -> list[Scenario]:
    """The requests to time.  Cursors depend on the data, so they are followed in each database."""
    partner = {"Authorization": f"Bearer {keys.partner}"}
    crm = {"Authorization": f"Bearer {keys.crm}"}
    deep = follow_queue_pages(target.operator, "/operator/", PAGES_FOLLOWED)
    if len(deep) < PAGES_FOLLOWED:
        raise BenchError(f"the queue has fewer than {PAGES_FOLLOWED + 1} pages; use a larger size")
    ref = existing_open_reference(target.db)

    def api_next(headers: dict[str, str]) -> list[str]:
        urls = follow_api_pages(target.api, "/api/v1/orders", headers, PAGES_FOLLOWED)
        if not urls:
            raise BenchError("the API list has a single page; use a larger size")
        return urls

    n = PAGES_FOLLOWED + 1
    return [
        Scenario("queue_default", "GET /operator/ (open orders by promised date, priority)", ["/operator/"], True),
        Scenario("queue_in_production", "GET /operator/?status=in_production",
                 ["/operator/?status=in_production"], True),
        Scenario("queue_overdue", "GET /operator/?overdue=1", ["/operator/?overdue=1"], True),
        Scenario("queue_at_risk", "GET /operator/?promise=at_risk", ["/operator/?promise=at_risk"], True),
        Scenario("queue_projected", "GET /operator/?sort=projected (latest projected finish first)",
                 ["/operator/?sort=projected"], True),
        Scenario("board", "GET /operator/board (the supervisors' flow board)", ["/operator/board"], True,
                 held_to_goal=False),
        Scenario("queue_search", "GET /operator/?q=<reference of an open order>",
                 [f"/operator/?{urlencode({'q': ref})}"], True),
        Scenario("queue_deep_page", f"GET /operator/?status=open&after=... (page {n}, via the Next links)",
                 [deep[-1]], True),
        Scenario("api_partner_first", "GET /api/v1/orders, partner key", ["/api/v1/orders"], False, partner),
        Scenario("api_partner_next", f"GET /api/v1/orders?cursor=..., partner key (pages 2-{n} in turn)",
                 api_next(partner), False, partner),
        Scenario("api_partner_queued", "GET /api/v1/orders?status=queued, partner key",
                 ["/api/v1/orders?status=queued"], False, partner),
        Scenario("api_crm_first", "GET /api/v1/orders, crm key", ["/api/v1/orders"], False, crm),
        Scenario("api_crm_next", f"GET /api/v1/orders?cursor=..., crm key (pages 2-{n} in turn)",
                 api_next(crm), False, crm),
        Scenario("api_crm_queued", "GET /api/v1/orders?status=queued, crm key",
                 ["/api/v1/orders?status=queued"], False, crm),
    ]


# --------------------------------------------------------------------------------------------- timing
@dataclass
class Timings:
    server_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)


def rows_in(resp) -> int:
    """Rows on the page, to show what was timed (a short page is cheaper at any size)."""
    if resp.mimetype == "application/json":
        return len(resp.get_json()["items"])
    return len(ORDER_ROW.findall(resp.get_data(as_text=True)))


def timed_get(target: Target, scenario: Scenario, i: int) -> tuple[float, float, int]:
    url = scenario.urls[i % len(scenario.urls)]
    started = time.perf_counter()
    resp = get_ok(target.client(scenario), url, scenario.headers)
    wall = (time.perf_counter() - started) * 1000
    match = SERVER_TIMING.search(resp.headers.get("Server-Timing", ""))
    if match is None:
        raise BenchError(f"GET {url} has no Server-Timing app;dur header")
    return float(match.group(1)), wall, rows_in(resp)


def run_requests(targets: list[Target], warmup: int, requests: int) -> dict[tuple[int, str], Timings]:
    """Warm up, then rounds of one request per (size, scenario) pair, timed.

    Interleaving the sizes makes noise from the machine hit them alike.  Each round is shuffled
    (with a fixed seed): in a fixed order, something periodic in the process (garbage
    collection, a timer thread) lined up with the same two scenarios in a first version of
    this bench and inflated only their p95.
    """
    jobs = [(t, sc) for t in targets for sc in t.scenarios]
    for i in range(warmup):
        for target, sc in jobs:
            timed_get(target, sc, i)
    timings = {(t.db.size, sc.name): Timings() for t, sc in jobs}
    rng = random.Random(SHUFFLE_SEED)
    for i in range(requests):
        rng.shuffle(jobs)
        for target, sc in jobs:
            server, wall, rows = timed_get(target, sc, i)
            t = timings[(target.db.size, sc.name)]
            t.server_ms.append(server)
            t.wall_ms.append(wall)
            t.rows.append(rows)
    return timings


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: an actually observed value, no interpolation."""
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


def summarize(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 2), "p95": round(percentile(values, 95), 2),
            "p99": round(percentile(values, 99), 2), "max": round(max(values), 2),
            "mean": round(sum(values) / len(values), 2)}


# --------------------------------------------------------------------------------------------- plans
@contextmanager
def captured_sql(engine: Engine) -> Iterator[list[tuple[str, object]]]:
    """The statements the app sends while the block runs, with their parameters."""
    seen: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _executemany):
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def explain(target: Target) -> list[dict]:
    """EXPLAIN (ANALYZE, BUFFERS) of the exact SQL each scenario sends to the orders table.

    The statements are captured from the app's engine during one real request and replayed
    with their parameters inlined, so the plans are those of the app's queries, not of a
    hand-written approximation.  Run after the timing, on a warm cache, like the requests.
    """
    plans = []
    with target.db.owner_engine() as owner:
        for sc in target.scenarios:
            with captured_sql(target.app.extensions["mes_engine"]) as seen:
                timed_get(target, sc, 0)
            with owner.connect() as conn:
                cursor = conn.connection.dbapi_connection.cursor()
                for statement, params in seen:
                    if not re.search(r"\bFROM orders\b", statement):
                        continue  # accounts, the status counter table, pings
                    sql = cursor.mogrify(statement, params).decode()
                    cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
                    plan = "\n".join(row[0] for row in cursor.fetchall())
                    plans.append({"scenario": sc.name, "url": sc.urls[0], "sql": sql, "plan": plan,
                                  **plan_facts(plan)})
                conn.rollback()
    return plans


def plan_facts(plan: str) -> dict:
    """What the plan says about scaling: which indexes, any sequential scan of orders, any sort."""
    timing = re.search(r"Execution Time: ([0-9.]+) ms", plan)
    buffers = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", plan)  # the top node's: the total
    return {
        "indexes": sorted(set(re.findall(r"Index (?:Only )?Scan(?: Backward)? using (\w+)", plan))
                          | set(re.findall(r"Bitmap Index Scan on (\w+)", plan))),
        "seq_scan_on_orders": bool(re.search(r"Seq Scan on orders\b", plan)),
        "sort": "Sort Method" in plan,
        "rows_removed_by_filter": sum(int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plan)),
        "buffers": sum(int(n or 0) for n in buffers.groups()) if buffers else None,
        "execution_ms": float(timing.group(1)) if timing else None,
    }


def write_plans(path: Path, size: int, plans: list[dict]) -> None:
    lines = [f"-- EXPLAIN (ANALYZE, BUFFERS) of the app's own queries on the orders table at {size:,} orders.",
             f"-- Written by bench/queue_bench.py on {now_iso()}; the statements were captured from real requests.",
             ""]
    first_seen: dict[str, str] = {}
    for p in plans:
        lines.append(f"-- ===== {p['scenario']}: GET {p['url']}")
        if p["sql"] in first_seen:  # e.g. the overdue count, which every queue page runs
            lines += [f"-- also runs the statement shown under {first_seen[p['sql']]} (same plan)", ""]
            continue
        first_seen[p["sql"]] = p["scenario"]
        flags = [f"indexes: {', '.join(p['indexes']) or 'none'}", f"buffers: {p['buffers']}"]
        if p["seq_scan_on_orders"]:
            flags.append("SEQ SCAN ON ORDERS")
        if p["rows_removed_by_filter"]:
            flags.append(f"rows removed by filter: {p['rows_removed_by_filter']:,}")
        lines += [f"-- {'; '.join(flags)}", p["sql"] + ";", "", p["plan"], ""]
    write_atomically(path, "\n".join(lines))


# --------------------------------------------------------------------------------------------- report
def size_report(target: Target, loaded: Loaded, timings: dict[tuple[int, str], Timings], plans: list[dict]) -> dict:
    size = target.db.size
    return {
        "load_seconds": round(loaded.seconds, 1),
        "vacuum_checkpoint_seconds": round(loaded.vacuum_seconds, 1),
        "recompute": {"open_orders": loaded.open_orders, "norms_seconds": round(loaded.norms_seconds, 1),
                      "promises_first_seconds": round(loaded.promises_first_seconds, 1),
                      "promises_steady_seconds": round(loaded.promises_again_seconds, 1)},
        "tables": table_facts(target.db),
        "scenarios": {sc.name: {"description": sc.description, "urls": sc.urls,
                                "server_ms": summarize(timings[(size, sc.name)].server_ms),
                                "wall_ms": summarize(timings[(size, sc.name)].wall_ms),
                                "rows_per_page": max(timings[(size, sc.name)].rows), "held_to_goal": sc.held_to_goal}
                      for sc in target.scenarios},
        "plans": [{k: v for k, v in p.items() if k not in ("plan", "sql")} for p in plans],
    }


def compare(sizes: dict[str, dict], small: int, large: int) -> dict[str, dict]:
    """p95(large)/p95(small) per scenario, and whether it meets the goal (None: not held to it)."""
    out = {}
    for name, s in sizes[str(small)]["scenarios"].items():
        big = sizes[str(large)]["scenarios"][name]
        ratio = big["server_ms"]["p95"] / s["server_ms"]["p95"]
        out[name] = {"p95_ratio": round(ratio, 2),
                     "p50_ratio": round(big["server_ms"]["p50"] / s["server_ms"]["p50"], 2),
                     "meets_goal": ratio <= GOAL_RATIO if s["held_to_goal"] else None}
    return out


def label(size: int) -> str:
    if size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    if size % 1_000 == 0:
        return f"{size // 1_000}k"
    return str(size)


def markdown_tables(report: dict) -> str:
    """Server time with the ratio (the goal), then wall time (the test client's view) for reference."""
    sizes = [int(s) for s in report["sizes"]]
    small, large = sizes[0], sizes[-1]
    names = list(report["sizes"][str(small)]["scenarios"])

    def scenario(size: int, name: str) -> dict:
        return report["sizes"][str(size)]["scenarios"][name]

    head = ["Scenario", "rows " + "/".join(label(s) for s in sizes)]
    head += [f"{label(s)} p50 / p95 / p99" for s in sizes]
    if len(sizes) > 1:
        head.append(f"p95 {label(large)}/{label(small)}")
    server = [_row(head), "|" + "---|" * len(head)]
    for name in names:
        cells = [f"`{name}`", "/".join(str(scenario(s, name)["rows_per_page"]) for s in sizes)]
        cells += [_three(scenario(s, name)["server_ms"]) for s in sizes]
        if len(sizes) > 1:
            c = report["comparison"][name]
            mark = {True: "", False: " ✗", None: " (reported)"}[c["meets_goal"]]
            cells.append(f"**{c['p95_ratio']:.2f}**{mark}")
        server.append(_row(cells))
    head = ["Scenario"] + [f"{label(s)} wall p50 / p95 / p99" for s in sizes]
    wall = [_row(head), "|" + "---|" * len(head)]
    for name in names:
        wall.append(_row([f"`{name}`"] + [_three(scenario(s, name)["wall_ms"]) for s in sizes]))
    return ("Server time (Server-Timing app;dur), ms\n\n" + "\n".join(server)
            + "\n\nWall time around the test-client call, ms\n\n" + "\n".join(wall))


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _three(ms: dict) -> str:
    return f"{ms['p50']:.1f} / {ms['p95']:.1f} / {ms['p99']:.1f}"


def environment() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "git_commit": _git("rev-parse", "HEAD"),
            "src_modified": bool(_git("status", "--porcelain", "--", "src")),
            "postgres_settings": PG_SETTINGS}


def _git(*argv: str) -> str | None:
    try:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def postgres_version(db: Database) -> str:
    with db.owner_engine() as engine, engine.connect() as conn:
        return conn.scalar(text("SHOW server_version"))


def write_atomically(path: Path, content: str) -> None:
    """Through a .tmp file (git-ignored), so an interrupted run never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- main
def parse_sizes(value: str) -> list[int]:
    """"10000,1000000" or "10k,1m", sorted: the first is the baseline of the ratio, the last is compared."""
    sizes = []
    for part in value.split(","):
        part = part.strip().lower().replace("_", "")
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
        try:
            sizes.append(int(part.rstrip("km")) * scale)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a size: {part!r}") from None
    if min(sizes) <= 0:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sorted(set(sizes))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=[10_000, 1_000_000],
                        help="order counts, comma-separated; one database each (default: 10000,1000000)")
    parser.add_argument("--requests", type=int, default=300,
                        help="timed requests per scenario and size (default: 300)")
    parser.add_argument("--warmup", type=int, default=50,
                        help="untimed requests per scenario and size first (default: 50)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder for the JSON and the plans (default: bench/results); "
                             "point trial runs elsewhere so they do not replace the published results")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    report = {"started": now_iso(), "goal": f"p95 at the largest size <= {GOAL_RATIO}x p95 at the smallest",
              "requests_per_scenario": args.requests, "warmup_per_scenario": args.warmup,
              "environment": environment(), "sizes": {}}
    log("starting a throwaway PostgreSQL")
    with temporary_postgres(settings=PG_SETTINGS) as server, ExitStack() as apps:
        log(f"  data in {server.datadir}, port {server.port} (removed at the end)")
        targets, loads = [], {}
        for size in args.sizes:
            log(f"loading {size:,} orders into a database of their own")
            db = create_database(server, size)
            keys = create_accounts(db)
            loads[size] = load(db)
            log(f"  {size:,} orders loaded in {loads[size].seconds:.1f} s "
                f"(then VACUUM ANALYZE + CHECKPOINT {loads[size].vacuum_seconds:.1f} s)")
            log(f"  promise recomputation over {loads[size].open_orders:,} open orders: norms "
                f"{loads[size].norms_seconds:.1f} s, first {loads[size].promises_first_seconds:.1f} s, "
                f"steady {loads[size].promises_again_seconds:.1f} s")
            target = apps.enter_context(open_target(db))
            target.scenarios = build_scenarios(target, keys)
            targets.append(target)
        report["environment"]["postgres"] = postgres_version(targets[0].db)
        log(f"timing {len(targets)} sizes x {len(targets[0].scenarios)} scenarios, interleaved: "
            f"{args.warmup} warm-up + {args.requests} timed requests each")
        load_before, started = os.getloadavg()[0], time.perf_counter()
        timings = run_requests(targets, args.warmup, args.requests)
        report["measure_seconds"] = round(time.perf_counter() - started, 1)
        # The machine's 1-minute load average before and after: noise from other processes shows here.
        report["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        for target in targets:
            plans = explain(target)
            write_plans(args.out / f"plans-{label(target.db.size).lower()}.txt", target.db.size, plans)
            report["sizes"][str(target.db.size)] = size_report(target, loads[target.db.size], timings, plans)
        limiter.reset()
    if len(args.sizes) > 1:
        report["comparison"] = compare(report["sizes"], args.sizes[0], args.sizes[-1])
        report["goal_met"] = all(c["meets_goal"] is not False for c in report["comparison"].values())
    report["finished"] = now_iso()
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    try:
        report = run(args)
    except KeyboardInterrupt:
        log("interrupted; the temporary PostgreSQL was stopped and removed")
        return 130
    write_atomically(args.out / "queue_bench.json", json.dumps(report, indent=2) + "\n")
    print(markdown_tables(report))
    if "goal_met" in report:
        print(f"\nGoal (p95 ratio <= {GOAL_RATIO} in every page scenario; the board is reported): "
              f"{'met' if report['goal_met'] else 'MISSED'}")
    for size, r in report["sizes"].items():
        print(f"{int(size):,} orders loaded in {r['load_seconds']:.0f} s")
    print(f"Details: {os.path.relpath(args.out / 'queue_bench.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
