#!/usr/bin/env python
"""Benchmark (not a test): what each fault of the database tier costs, and what synchronous commit costs.

Starts the split topology (`python -m stack up`, in a temporary folder on free loopback ports) and,
under a steady stream of order creations through HAProxy (25/s, 4 client threads, each create sent
once with an Idempotency-Key), injects one fault after another, restoring the stack (`stack up`)
after each:

- host loss of the primary (kill -9 of its Patroni, postmaster and backends), with the standby in
  sync, and with the primary's walsender stopped for 4 s before (the standby lagging);
- kill -9 of the primary's PostgreSQL alone (Patroni restarts it);
- SIGSTOP of the primary's PostgreSQL, and of the whole node (Patroni too), SIGCONT once writes succeed
  again;
- host loss of the synchronous standby;
- pg_terminate_backend of every app session on the primary; a Pgpool-II restart; an etcd member lost.

For each: seconds from the fault until the first create that started after it succeeded, the longest
time without a successful create, the answers (201/503/...), and how many acknowledged orders are
missing afterwards. Then the cost of synchronous commit: closed-loop order creation (16 client threads,
20 s per run) with Patroni's synchronous_mode off and on, alternating, two runs each; throughput and
p95 per mode (medians of the runs).

    python bench/failover_bench.py [--out bench/results] [--skip-faults] [--skip-sync] [--faults 1,4]

Writes bench/results/failover_bench.json and prints Markdown tables for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from mes.testing.postgres import free_port  # noqa: E402
from mes.testing.writeload import ORDER, WriteLoad  # noqa: E402
from stack import dbtier  # noqa: E402
from stack.cli import mes  # noqa: E402
from stack.topology import make_ctx  # noqa: E402
from stack.topology import ports as stack_ports  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LAYOUT = yaml.safe_load((ROOT / "stack" / "local.yml").read_text())


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Stack:
    def __init__(self):
        self.state = Path(tempfile.mkdtemp(prefix="mes-failover-bench-"))
        self.state.chmod(0o755)
        self.env = {**os.environ, "MES_STACK_DIR": str(self.state)}
        self.env.update({f"MES_PORT_{n.upper()}": str(free_port()) for n in LAYOUT["ports"]})
        self.public = f"https://127.0.0.1:{stack_ports(self.env)['public']}"
        self.ctx = None

    def cli(self, *args: str) -> None:
        r = subprocess.run([sys.executable, "-m", "stack", *args], cwd=ROOT, env=self.env, capture_output=True,
                           text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"stack {' '.join(args)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")

    def up(self) -> None:
        self.cli("up")
        self.ctx = make_ctx(None, self.env)
        os.environ["REQUESTS_CA_BUNDLE"] = str(self.state / "pki" / "ca.crt")  # HTTPS, verified against the stack's CA

    def down(self) -> None:
        try:
            self.cli("down")
        finally:
            subprocess.run(["rm", "-rf", str(self.state)], check=False)

    def key(self, name: str) -> dict:
        out = mes(self.ctx, "create-client", name, "--partner", f"Partner {name}", "--tier", "bulk")
        return {"Authorization": f"Bearer {out.strip().splitlines()[-1]}"}

    def primary(self) -> str:
        return dbtier.primary_node(self.ctx)["name"]

    def timeline(self) -> int:
        return int(next(m for m in dbtier.cluster(self.ctx)["members"] if m["role"] == "leader")["timeline"])


# --- faults ------------------------------------------------------------------------------------------

def missing(stack: Stack, load: WriteLoad) -> int:
    rows = dbtier.psql(stack.ctx, dbtier.primary_node(stack.ctx),
                       f"SELECT reference FROM orders WHERE reference LIKE 'W-{load.prefix}-%'", db="mes")
    return len(set(load.acknowledged()) - set(rows.split()))


def wait_writes(load: WriteLoad, since: float, limit: float = 120) -> float | None:
    deadline = since + limit
    while time.monotonic() < deadline:
        if load.write_gap(since) is not None:
            return load.write_gap(since)
        time.sleep(0.2)
    return None


def fault_host_loss(stack: Stack, lag: bool):
    old = stack.primary()
    stopped = []
    if lag:
        postmaster = dbtier.PatroniNode(dbtier.node_by_name(stack.ctx, old)).postmaster_pid()
        stopped = [p for p in dbtier._children(postmaster) if b"walsender" in Path(f"/proc/{p}/cmdline").read_bytes()]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(4)
    dbtier.kill_node(stack.ctx, old)
    return None


def fault_postgres_crash(stack: Stack):
    dbtier.kill_node(stack.ctx, stack.primary(), postgres_only=True)


def fault_hang(stack: Stack, whole: bool):
    return dbtier.kill_node(stack.ctx, stack.primary(), postgres_only=not whole, sig=signal.SIGSTOP)


def fault_standby_loss(stack: Stack):
    dbtier.kill_node(stack.ctx, dbtier.standby_nodes(stack.ctx)[0]["name"])


def fault_terminate(stack: Stack):
    for _ in range(3):
        dbtier.psql(stack.ctx, dbtier.primary_node(stack.ctx),
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'mes-%' AND pid <> pg_backend_pid()")
        time.sleep(1.5)


def fault_pgpool_restart(stack: Stack):
    dbtier.Pgpool().down(stack.ctx)
    dbtier.Pgpool().up(stack.ctx)


def fault_etcd_member(stack: Stack):
    os.kill(stack.ctx.pid(stack.ctx.vars["mes_topology"]["etcd"][0]["name"]), signal.SIGKILL)
    time.sleep(stack.ctx.vars["patroni_ttl"] + 5)


FAULTS = [
    ("host loss of the primary, standby in sync", lambda s: fault_host_loss(s, lag=False)),
    ("host loss of the primary, standby lagging 4 s", lambda s: fault_host_loss(s, lag=True)),
    ("kill -9 of the primary's PostgreSQL (Patroni alive)", fault_postgres_crash),
    ("SIGSTOP of the primary's PostgreSQL", lambda s: fault_hang(s, whole=False)),
    ("SIGSTOP of the primary's whole node (Patroni too)", lambda s: fault_hang(s, whole=True)),
    ("host loss of the synchronous standby", fault_standby_loss),
    ("pg_terminate_backend of every app session, 3 times", fault_terminate),
    ("Pgpool-II restart", fault_pgpool_restart),
    ("one of three etcd members lost", fault_etcd_member),
]


def run_fault(stack: Stack, name: str, inject) -> dict:
    log(f"fault: {name}")
    load = WriteLoad(stack.public, stack.key(f"fault-{time.monotonic_ns()}"), rate=25).start()
    time.sleep(5)
    before = (stack.primary(), stack.timeline())
    at = time.monotonic()
    stopped = inject(stack)
    gap = wait_writes(load, at)
    for pid in stopped or []:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    time.sleep(8)
    load.stop()
    after = (stack.primary(), stack.timeline())
    result = {"fault": name, "writes_back_after_s": None if gap is None else round(gap, 1),
              "longest_gap_s": round(load.longest_outage(), 1), "answers": load.statuses(),
              "acknowledged": len(load.acknowledged()), "missing": missing(stack, load),
              "failover": before[0] != after[0], "new_timeline": after[1] != before[1]}
    log(f"  {result}")
    stack.up()  # bring back what was killed
    return result


# --- the cost of synchronous commit ------------------------------------------------------------------

def set_synchronous(stack: Stack, on: bool) -> None:
    leader = dbtier.primary_node(stack.ctx)
    body = json.dumps({"synchronous_mode": on}).encode()
    request = urllib.request.Request(f"http://{leader['host']}:{leader['patroni_port']}/config", data=body,
                                     method="PATCH", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sync = dbtier.psql(stack.ctx, leader, "SHOW synchronous_standby_names")
        if bool(sync) == on and (not on or any(m["role"] == "sync_standby"
                                               for m in dbtier.cluster(stack.ctx)["members"])):
            return
        time.sleep(0.5)
    raise RuntimeError(f"synchronous_mode={on} did not take effect")


def closed_loop(stack: Stack, keys: list[dict], threads: int = 16, seconds: float = 20) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        session, n = requests.Session(), 0
        while time.monotonic() < stop:
            n += 1
            ref = f"S-{i}-{n}-{time.monotonic_ns()}"
            t0 = time.monotonic()
            r = session.post(f"{stack.public}/api/v1/orders", json={**ORDER, "reference": ref},
                             headers={**keys[i % len(keys)], "Idempotency-Key": ref}, timeout=30)
            with lock:
                if r.status_code == 201:
                    latencies.append((time.monotonic() - t0) * 1000)
                else:
                    errors[0] += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    latencies.sort()
    return {"creates_per_s": round(len(latencies) / seconds, 1),
            "p50_ms": round(latencies[len(latencies) // 2], 1),
            "p95_ms": round(latencies[int(len(latencies) * 0.95)], 1), "errors": errors[0]}


def sync_cost(stack: Stack, rounds: int = 2) -> dict:
    keys = [stack.key(f"sync-{i}-{time.monotonic_ns()}") for i in range(8)]
    closed_loop(stack, keys, seconds=5)  # warm up
    runs: dict[str, list[dict]] = {"asynchronous": [], "synchronous": []}
    for _ in range(rounds):
        for mode in ("asynchronous", "synchronous"):
            set_synchronous(stack, mode == "synchronous")
            run = closed_loop(stack, keys)
            log(f"  {mode}: {run}")
            runs[mode].append(run)
    set_synchronous(stack, True)
    summary = {mode: {k: statistics.median(r[k] for r in rs) for k in ("creates_per_s", "p50_ms", "p95_ms")}
               for mode, rs in runs.items()}
    summary["throughput_ratio"] = round(summary["synchronous"]["creates_per_s"]
                                        / summary["asynchronous"]["creates_per_s"], 2)
    summary["p95_ratio"] = round(summary["synchronous"]["p95_ms"] / summary["asynchronous"]["p95_ms"], 2)
    return {"runs": runs, "summary": summary}


def markdown(report: dict) -> str:
    lines = []
    if report.get("faults"):
        lines += ["| fault | writes back after | longest gap | answers | acknowledged | missing | failover |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for f in report["faults"]:
            answers = ", ".join(f"{k}: {v}" for k, v in sorted(f["answers"].items(), key=lambda kv: str(kv[0])))
            back = "-" if f["writes_back_after_s"] is None else f"{f['writes_back_after_s']} s"
            lines.append(f"| {f['fault']} | {back} | {f['longest_gap_s']} s | {answers} | {f['acknowledged']} | "
                         f"{f['missing']} | {'yes' if f['failover'] else 'no'} |")
    if report.get("synchronous_commit"):
        s = report["synchronous_commit"]["summary"]
        lines += ["", "| commit | creates/s | p50 | p95 |", "| --- | --- | --- | --- |"]
        for mode in ("asynchronous", "synchronous"):
            lines.append(f"| {mode} | {s[mode]['creates_per_s']} | {s[mode]['p50_ms']} ms | {s[mode]['p95_ms']} ms |")
        lines.append(f"\nthroughput ratio (sync/async) {s['throughput_ratio']}, p95 ratio {s['p95_ratio']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--skip-sync", action="store_true")
    parser.add_argument("--faults", default="", help="comma-separated numbers (1-based) of the faults to run")
    args = parser.parse_args(argv)
    stack = Stack()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    report = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cores": os.cpu_count()}
    try:
        log(f"starting the stack in {stack.state}")
        stack.up()
        if not args.skip_faults:
            chosen = [int(i) - 1 for i in args.faults.split(",") if i] or range(len(FAULTS))
            report["faults"] = [run_fault(stack, *FAULTS[i]) for i in chosen]
        if not args.skip_sync:
            log("the cost of synchronous commit")
            report["synchronous_commit"] = sync_cost(stack)
    finally:
        log("stopping the stack")
        stack.down()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failover_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
