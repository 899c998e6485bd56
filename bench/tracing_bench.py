#!/usr/bin/env python
"""Benchmark (not a test): what request tracing costs the app.

Four ways of running the same app on the same real PostgreSQL and Redis, each in a process of its own
(OpenTelemetry allows one tracer provider per process):

- `none`: the app without tracing: `mes.tracing.init_tracing` replaced by a no-op in the benchmark's
  process only (the baseline; the app itself has no such switch);
- `ids`: what ships when no collector is configured: the instrumentations run, every span is the SDK's
  non-recording span, the ids still reach the logs and every SQL statement's comment;
- `export-10%`: spans exported over OTLP/HTTP to a receiver in the benchmark's process, for the 10% of
  requests whose `traceparent` says sampled (what HAProxy sends at `mes_trace_sample_ratio` 0.1);
- `export-100%`: every request sampled and exported.

Every request carries a `traceparent`, as every request through HAProxy does. Requests go through
Flask's test client (no HTTP server or network is timed): a partner's status read (Redis cache hit after
the first read of each id), the operator's queue page and an order page. Per request the wall time and the
process's CPU time are kept; each mode's total CPU includes flushing its last spans at the end. The modes
run in shuffled rounds, so that a burst of noise on a shared machine hits every mode alike.

    python bench/tracing_bench.py [--orders 20000] [--requests 300] [--rounds 4]

Writes bench/results/tracing_bench.json and prints a Markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "src"))

MODES = ("none", "ids", "export-10%", "export-100%")
SAMPLED = {"none": 0.1, "ids": 0.1, "export-10%": 0.1, "export-100%": 1.0}  # share of traceparents flagged
OPERATOR = ("bench-operator", "bench-password")
NO_LIMITS = {"standard": "10000000/minute", "bulk": "10000000/minute", "crm": "10000000/minute"}
SEED = 20261130


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ one mode
def child(args) -> None:
    """Run one mode's requests in this process; print its timings as JSON."""
    import mes
    from mes.config import Settings

    if args.child == "none":
        mes.init_tracing = lambda app, engine, pool: None  # create_app calls the name it imported
    settings = Settings(pools=("operator", "public"), database_url=args.app_url,
                        migration_database_url=args.owner_url, app_db_role=args.app_role, redis_url=args.redis_url,
                        secret_key="bench-secret", rate_limits=dict(NO_LIMITS), log_level="WARNING")
    app = mes.create_app(settings)
    app.config["WTF_CSRF_ENABLED"] = False  # for the login POST; the measured requests are GETs
    operator, api = app.test_client(), app.test_client()
    if operator.post("/operator/login", data={"login": OPERATOR[0], "password": OPERATOR[1]}).status_code != 302:
        raise SystemExit("operator login failed")
    ids = json.loads(args.ids)
    rng = random.Random(SEED)
    scenarios = {
        "status read (API)": lambda i: api.get(f"/api/v1/orders/{ids[i % len(ids)]}/status",
                                               headers={"Authorization": f"Bearer {args.key}", **_tp(rng, args)}),
        "queue page (operator)": lambda i: operator.get("/operator/", headers=_tp(rng, args)),
        "order page (operator)": lambda i: operator.get(f"/operator/orders/{ids[i % len(ids)]}",
                                                         headers=_tp(rng, args)),
    }
    for name, call in scenarios.items():  # warm up: caches, connection pool, first renders
        for i in range(30):
            _ok(call(i), name)
    timings = {name: {"wall": [], "cpu": []} for name in scenarios}
    order = [name for name in scenarios for _ in range(args.requests)]
    rng.shuffle(order)
    counters = dict.fromkeys(scenarios, 0)
    cpu_started = time.process_time()
    for name in order:
        i = counters[name] = counters[name] + 1
        wall, cpu = time.perf_counter(), time.process_time()
        _ok(scenarios[name](i), name)
        timings[name]["wall"].append((time.perf_counter() - wall) * 1000)
        timings[name]["cpu"].append((time.process_time() - cpu) * 1000)
    from opentelemetry import trace
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()  # the last batch of spans is exported: part of the cost
    total_cpu = (time.process_time() - cpu_started) * 1000
    app.extensions["mes_engine"].dispose()
    print(json.dumps({"mode": args.child, "timings": timings, "cpu_total_ms": total_cpu, "requests": len(order)}))


def _tp(rng: random.Random, args) -> dict[str, str]:
    flags = "01" if rng.random() < args.sampled else "00"
    return {"traceparent": f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-{flags}"}


def _ok(resp, name: str):
    if resp.status_code != 200:
        raise SystemExit(f"{name}: HTTP {resp.status_code}")
    return resp


# ------------------------------------------------------------------------------------------ the run
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    from signals import stop_on_signals
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    from mes.config import Settings
    from mes.demo import PARTNER_NAMES, load_orders
    from mes.migrate import upgrade
    from mes.services import accounts
    from mes.testing.otlp import OtlpReceiver
    from mes.testing.postgres import create_mes_database, temporary_postgres
    from mes.testing.redis import temporary_redis

    stop_on_signals()
    with temporary_postgres({"shared_buffers": "256MB"}) as server, temporary_redis() as redis, \
            OtlpReceiver() as receiver:
        owner_url, app_url = create_mes_database(server)
        upgrade(Settings(database_url=app_url, migration_database_url=owner_url, app_db_role="mes_app"))
        engine = create_engine(owner_url)
        with Session(engine) as session:
            accounts.create_operator(session, *OPERATOR, role="supervisor")
            key = accounts.create_client(session, "bench-partner", scope="partner",
                                         partner_name=PARTNER_NAMES[0]).key
        log(f"loading {args.orders:,} orders")
        load_orders(engine, args.orders, seed=1)
        with engine.connect() as conn:
            ids = list(conn.scalars(text(
                "SELECT o.id FROM orders o JOIN partners p ON p.id = o.partner_id WHERE p.name = :p "
                "ORDER BY o.id DESC LIMIT 200"), {"p": PARTNER_NAMES[0]}))
        engine.dispose()
        base = [sys.executable, __file__, "--owner-url", owner_url, "--app-url", app_url, "--app-role", "mes_app",
                "--redis-url", redis.url, "--key", key, "--ids", json.dumps(ids), "--requests", str(args.requests)]
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        rng = random.Random(SEED)
        for round_ in range(1, args.rounds + 1):
            modes = list(MODES)
            rng.shuffle(modes)
            for mode in modes:
                env = {**os.environ, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                       "OTEL_TRACES_SAMPLER_ARG": "0.1"}
                for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
                    env.pop(name, None)
                if mode.startswith("export"):
                    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
                spans_before = len(receiver.spans)
                out = subprocess.run([*base, "--child", mode, "--sampled", str(SAMPLED[mode])], env=env,
                                     check=True, capture_output=True, text=True).stdout
                result = json.loads(out.strip().splitlines()[-1])
                result["spans_exported"] = len(receiver.spans) - spans_before
                runs[mode].append(result)
                log(f"round {round_} {mode:12} cpu/request {result['cpu_total_ms'] / result['requests']:.2f} ms, "
                    f"{result['spans_exported']} spans exported")
    report = summarize(runs, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tracing_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


def summarize(runs: dict[str, list[dict]], args) -> dict:
    scenarios = list(runs[MODES[0]][0]["timings"])
    modes = {}
    for mode, results in runs.items():
        per = {}
        for name in scenarios:
            wall = [v for r in results for v in r["timings"][name]["wall"]]
            per[name] = {"median_ms": statistics.median(wall), "p95_ms": _p95(wall)}
        modes[mode] = {"scenarios": per,
                       "cpu_per_request_ms": statistics.median(r["cpu_total_ms"] / r["requests"] for r in results),
                       "spans_exported_per_run": statistics.median(r["spans_exported"] for r in results)}
    return {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": f"python bench/tracing_bench.py --orders {args.orders} --requests {args.requests} "
                       f"--rounds {args.rounds}",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "orders": args.orders, "requests_per_scenario_per_run": args.requests, "rounds": args.rounds,
            "modes": modes}


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def markdown(report: dict) -> str:
    modes = report["modes"]
    base = modes["none"]
    lines = ["| mode | " + " | ".join(f"{s} median / p95 (ms)" for s in base["scenarios"])
             + " | CPU per request (ms) | vs none |",
             "|---|" + "---|" * (len(base["scenarios"]) + 2)]
    for mode, m in modes.items():
        cells = [f"{v['median_ms']:.2f} / {v['p95_ms']:.2f}" for v in m["scenarios"].values()]
        ratio = m["cpu_per_request_ms"] / base["cpu_per_request_ms"]
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {m['cpu_per_request_ms']:.2f} | {ratio:.2f}x |")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=300, help="per scenario, per mode, per round")
    parser.add_argument("--rounds", type=int, default=4)
    for name in ("child", "owner-url", "app-url", "app-role", "redis-url", "key", "ids"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--sampled", type=float, default=0.1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
