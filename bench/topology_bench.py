#!/usr/bin/env python
"""Benchmark (not a test): what does the split topology buy over the single one, on one machine?

"before" = `python -m stack up --topology single`: one gunicorn pool serves operators and partners,
one PostgreSQL, no replica, no Pgpool, no Redis (no status cache), no HAProxy limits or queues.
"after" = the default split topology: an operator pool and a public pool (2 instances each),
primary + replica behind Pgpool-II, the Redis status cache, HAProxy stick tables and queues.

Both are started by this script, each in its own temporary state folder on free loopback ports
(MES_STACK_DIR, MES_PORT_<NAME>), both loaded with the same demo data, and measured phase by
phase, alternating between them, so that slow drifts of a noisy shared machine hit both alike.
Before each phase the script waits for the machine to be quiet (other work < 0.15 cores), and a
phase that other work disturbed anyway (> 0.25 cores in a measured window) is repeated.
Both are stopped and their folders removed at the end, also on an error, Ctrl-C, SIGTERM or SIGHUP.

Phases (the numbering of BENCHMARKS.md, "Topology: split vs single"):

1. Isolation: the operator orders page (GET /operator/, logged in) at a fixed 10 req/s, idle and
   while the public API is flooded: a crowd of well-behaved clients that saturates the public pool
   plus a runaway client paced at 10x the measured capacity (phase flood, the goal's flood), or the runaway in a tight loop (phase flood_unbounded: the offered load grows as fast as
   refusals come back, 100x and more).  Goal: flooded p95 <= 1.5x idle p95, no operator errors.
2. Shedding: which share of the flood is refused (429/503) and how fast, per status, from
   HAProxy's own log and from a client that samples the public API during the flood; then a
   deeper queue (-c 1500) to reach the queue timeout (503).
3. Status reads: GET /api/v1/orders/{id}/status from the cache, from the database (ids whose
   cache entries do not exist yet, each read once), and the no-op GET /healthz/live through the
   same frontend and pool as the ceiling.  Goal: cached >= 0.7x the no-op's throughput.
4. Read offload: the share of SELECTs that Pgpool-II sends to the replica (SHOW POOL_NODES
   select_cnt before/after) under operator, partner and mixed load.

Load generator: wrk with a small Lua script (bench headers, status counts, Server-Timing).  All
wrk clients of one machine share 127.0.0.1, and HAProxy limits each source address (3000
requests per 10 s, 200 connections): one address would hit that limit first and hide everything
else.  So wrk runs with a tiny LD_PRELOAD shim (compiled here with gcc) that binds its sockets to
127.0.1.N, i.e. it plays N partners on N addresses.  Everything stays on loopback.

    python bench/topology_bench.py [--topologies single,split] [--out DIR] [--quick] [--max-wait 900]
                                   [--retries 2]

Writes bench/results/topology_bench.json and prints Markdown tables for BENCHMARKS.md.
Needs: the stack's Debian packages (`make up` installs them), wrk, gcc, and root (like `make up`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# This checkout's code, for us and for the `mes` CLI that stack.cli.mes runs in a subprocess.
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])

import requests  # noqa: E402
import yaml  # noqa: E402

from mes.testing.postgres import free_port  # noqa: E402
from signals import stop_on_signals  # noqa: E402  (bench/ is on sys.path)
from stack.topology import make_ctx  # noqa: E402

LAYOUT = yaml.safe_load((ROOT / "stack" / "local.yml").read_text())
SETTINGS = yaml.safe_load((ROOT / "ansible" / "group_vars" / "all" / "main.yml").read_text())
TOPOLOGIES = ("single", "split")
LABEL = {"single": "before (single)", "split": "after (split)"}

EXTRA_ORDERS = 50_000      # on top of the 2,000 that `up` loads: a realistic queue
HOT_IDS = 2_000            # status reads of these ids are served from the cache once warmed
READER_KEYS = 24           # crm keys for the measured runs: each stays far below its own limits
RUNAWAY_KEYS = 1           # the runaway client: one crm key in a tight loop
SOURCES = 32               # client addresses of the well-behaved load (127.0.1.1 ..)
RUNAWAY_SOURCE_BASE = 100  # the runaway client's addresses: 127.0.1.101 ..
RUNAWAY_SOURCES = 4
OPERATOR_LOGIN = ("demo", "demo-pass")
GOAL_ISOLATION = 1.5       # flooded p95 / idle p95 of the operator page
FLOOD_TIMES = 10           # the goal's flood: offered load = 10 x the public API's measured capacity
GOAL_CACHED_VS_NOOP = 0.7  # cached status reads / no-op throughput
LIST_PATH = "/api/v1/orders?limit=50"


@dataclass
class Timing:
    """Durations in seconds; --quick shortens them for a trial run (numbers then mean little)."""

    throughput: float = 10      # each wrk throughput run
    probe: float = 20           # the operator page at a fixed rate, idle and flooded
    operator_rate: float = 10   # requests per second of the operator probe
    public_rate: float = 20     # requests per second of the public sampler during the flood
    runaway_head_start: float = 10  # the runaway client runs alone first: its key goes over the limits
    crowd_head_start: float = 5     # then the crowd fills the public queue before the probes start
    deep_queue: float = 20
    offload: float = 10         # operator-only and partner-only runs; the mixed run is twice as long
    settle: float = 11          # stick-table rates are counted over 10 s: let them fall between phases

    @classmethod
    def quick(cls) -> "Timing":
        return cls(throughput=3, probe=5, runaway_head_start=3, crowd_head_start=2, deep_queue=5, offload=3,
                   settle=3)


class BenchError(RuntimeError):
    """The run would measure the wrong thing (a failed login, an uncached "cached" set, ...)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest rank: always an observed value (with 200 samples, p99 is the 2nd slowest)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil
    return sorted_values[int(rank) - 1]


def summarize_ms(values: list[float]) -> dict:
    v = sorted(values)
    r = lambda x: None if x is None else round(x, 1)  # noqa: E731
    return {"n": len(v), "p50": r(percentile(v, 50)), "p95": r(percentile(v, 95)), "p99": r(percentile(v, 99)),
            "max": r(v[-1] if v else None)}


# ============================================================================================ the stacks
class Stack:
    """One topology started with `python -m stack up` in a temporary folder on free ports.

    Exactly what `make up` runs, so that what is measured is what is deployed; the context object
    (pids, ports, dbtier helpers) is the stack's own, built from the same environment."""

    def __init__(self, topology: str):
        self.topology = topology
        self.state = Path(tempfile.mkdtemp(prefix=f"mes-bench-{topology}-"))
        self.state.chmod(0o755)
        self.ports = {name: free_port() for name in LAYOUT["ports"]}
        self.env = {**os.environ, "MES_STACK_DIR": str(self.state),
                    **{f"MES_PORT_{name.upper()}": str(port) for name, port in self.ports.items()}}
        self.public = f"https://127.0.0.1:{self.ports['public']}"
        self.operator = f"https://127.0.0.1:{self.ports['operator']}"
        self.ctx = None
        self.keys: dict[str, list[str]] = {}
        self.cookie = ""
        self.max_order_id = 0
        self.next_cold_id = HOT_IDS + 1  # cold ids not read yet (a repeated phase takes the next ones)

    @property
    def split(self) -> bool:
        return self.topology == "split"

    def cli(self, *args: str, timeout: float = 600) -> str:
        result = subprocess.run([sys.executable, "-m", "stack", *args], cwd=ROOT, env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise BenchError(f"python -m stack {' '.join(args)} ({self.topology}) failed:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    def up(self) -> None:
        # stack/topology.py reads the topology of an existing state folder from its `topology` file but
        # never writes it, so a later `python -m stack down` would stop the split components and leave
        # a single stack's gunicorn running.  Write it here (what `up` should do; harmless once it does).
        (self.state / "topology").write_text(self.topology + "\n")
        started = time.monotonic()
        self.cli("up", "--topology", self.topology)
        self.ctx = make_ctx(self.topology, self.env)
        # HTTPS at both frontends: Python's clients verify them against the stack's own CA (wrk does not verify).
        os.environ["REQUESTS_CA_BUNDLE"] = str(self.state / "pki" / "ca.crt")
        log(f"  {self.topology}: up in {time.monotonic() - started:.0f} s, state in {self.state}")

    def down(self) -> None:
        """Stop every component by pid (also after a half-finished `up`) and remove the folder.
        Then make sure: any process still carrying this state folder in its environment (every
        component does) is ours and is stopped by its pid, with a warning."""
        try:
            self.cli("down", timeout=300)
        finally:
            for pid in self.leftover_pids():
                log(f"warning: pid {pid} of the {self.topology} stack survived `down`; stopping it")
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            shutil.rmtree(self.state, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        marker = f"MES_STACK_DIR={self.state}".encode()
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    if marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                        pids.append(int(entry))
                except OSError:
                    continue
        return pids

    def mes(self, *args: str) -> str:
        from stack.cli import mes
        return mes(self.ctx, *args)

    def psql(self, sql: str) -> str:
        from stack import dbtier
        return dbtier.psql(self.ctx, dbtier.primary_node(self.ctx), sql, db=SETTINGS["pg_database"])

    def pid(self, name: str) -> int | None:
        return self.ctx.pid(name)


def prepare(stack: Stack) -> None:
    """Demo data, API keys, the operator's session: the same for both topologies."""
    log(f"  {stack.topology}: loading {EXTRA_ORDERS:,} more demo orders")
    stack.mes("demo-data", "--orders", str(EXTRA_ORDERS))
    stack.max_order_id = int(stack.psql("SELECT max(id) FROM orders"))
    settle_database(stack)
    names = {"reader": READER_KEYS, "runaway": RUNAWAY_KEYS}
    stack.keys = {group: create_keys(stack, group, n) for group, n in names.items()}
    stack.cookie = operator_cookie(stack)


def settle_database(stack: Stack) -> None:
    """VACUUM ANALYZE + CHECKPOINT after the bulk load, so that neither autovacuum nor a checkpoint
    starts in the middle of a measurement, and wait until the replica has replayed it all."""
    stack.psql("VACUUM (ANALYZE); CHECKPOINT;")
    if not stack.split:
        return
    lsn = stack.psql("SELECT pg_current_wal_lsn()")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        caught_up = stack.psql(f"SELECT count(*) > 0 AND bool_and(replay_lsn >= '{lsn}') FROM pg_stat_replication")
        if caught_up == "t":
            return
        time.sleep(0.5)
    raise BenchError("the replica did not catch up within 120 s")


def create_keys(stack: Stack, group: str, n: int) -> list[str]:
    """CRM clients (tier crm): they read every order.  With the `mes` CLI, as an operator would;
    four at a time, because each call is a new Python process."""
    def one(i: int) -> str:
        out = stack.mes("create-client", f"bench-{group}-{i:02d}", "--scope", "crm", "--tier", "crm")
        return out.strip().splitlines()[-1]

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(n)))


def operator_cookie(stack: Stack) -> str:
    """Log in as the demo operator through the operator frontend, with the form's CSRF token."""
    with requests.Session() as s:
        s.headers["Referer"] = f"{stack.operator}/operator/"  # the CSRF check over HTTPS wants it, as browsers send it
        page = s.get(f"{stack.operator}/operator/login", timeout=10).text
        match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
        if not match:
            raise BenchError("no CSRF token in the login form")
        r = s.post(f"{stack.operator}/operator/login", timeout=10, data={
            "login": OPERATOR_LOGIN[0], "password": OPERATOR_LOGIN[1], "csrf_token": match.group(1)})
        if r.status_code != 200 or "Orders queue" not in r.text:
            raise BenchError(f"operator login failed on {stack.topology}: HTTP {r.status_code}")
        return "; ".join(f"{k}={v}" for k, v in s.cookies.get_dict().items())


# ============================================================================================ wrk
SHIM_C = r"""
/* LD_PRELOAD shim for the load generator: bind each loopback connection to 127.0.1.(1+BASE+k),
   k = 0..BENCH_SOURCES-1 in turn, so that HAProxy sees BENCH_SOURCES client addresses. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>

static atomic_uint next_source;

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real_connect)(int, const struct sockaddr *, socklen_t);
    if (!real_connect)
        real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    const char *count = getenv("BENCH_SOURCES"), *base = getenv("BENCH_SOURCE_BASE");
    if (count && atoi(count) > 0 && addr && addr->sa_family == AF_INET &&
        (ntohl(((const struct sockaddr_in *)addr)->sin_addr.s_addr) >> 24) == 127) {
        unsigned k = (base ? (unsigned)atoi(base) : 0u) + atomic_fetch_add(&next_source, 1) % (unsigned)atoi(count);
        struct sockaddr_in src = {0};
        src.sin_family = AF_INET;
        src.sin_addr.s_addr = htonl(0x7f000101u + k);
        int one = 1;  /* pick the port at connect time: no ephemeral port exhaustion */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        bind(fd, (const struct sockaddr *)&src, sizeof src);
    }
    return real_connect(fd, addr, len);
}
"""

# Paths and one header per request, both rotated; thread t sends items t, t+T, t+2T, ... so that a
# list of distinct ids is read once each across threads.  Counts statuses, the app's own 429s
# (flask-limiter adds RateLimit-Limit; HAProxy's do not have it) and the app's Server-Timing.
WRK_LUA = r"""
local threads = {}

local function lines(path)
  local t = {}
  for line in io.lines(path) do if line ~= "" then t[#t + 1] = line end end
  return t
end

-- BENCH_DELAY_MS paces each connection (a fixed flood rate); without it, a tight loop
local pace = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pace then
  function delay() return pace end
end

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  paths, headers = lines(os.getenv("BENCH_PATHS")), lines(os.getenv("BENCH_HEADERS"))
  step = tonumber(os.getenv("BENCH_THREADS"))
  counter = id
  statuses, app_limited, app_sum, app_n = {}, 0, 0, 0
end

function request()
  local i = counter
  counter = counter + step
  local name, value = headers[(i % #headers) + 1]:match("^([^:]+):%s*(.*)$")
  return wrk.format("GET", paths[(i % #paths) + 1], {[name] = value})
end

function response(status, hdrs, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 429 and (hdrs["ratelimit-limit"] or hdrs["RateLimit-Limit"]) then app_limited = app_limited + 1 end
  local timing = hdrs["server-timing"] or hdrs["Server-Timing"]
  if status == 200 and timing then
    local ms = timing:match("app;dur=([%d%.]+)")
    if ms then app_sum, app_n = app_sum + tonumber(ms), app_n + 1 end
  end
end

function done(summary, latency, requests)
  local total, limited, asum, an = {}, 0, 0, 0
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do total[code] = (total[code] or 0) + n end
    limited, asum, an = limited + t:get("app_limited"), asum + t:get("app_sum"), an + t:get("app_n")
  end
  local codes = {}
  for code, n in pairs(total) do codes[#codes + 1] = string.format('"%d": %d', code, n) end
  local e = summary.errors
  local f = io.open(os.getenv("BENCH_OUT"), "w")
  f:write(string.format('{"requests": %d, "duration_us": %d, "statuses": {%s}, "app_limited_429": %d, ' ..
    '"app_ms_sum": %.3f, "app_ms_n": %d, "errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p95": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, table.concat(codes, ", "), limited, asum, an,
    e.connect, e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(95), latency:percentile(99), latency.max))
  f:close()
end
"""


class Wrk:
    """Runs wrk with the Lua script above and the source-address shim, and reads its JSON."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.lua = workdir / "bench.lua"
        self.lua.write_text(WRK_LUA)
        self.shim = compile_shim(workdir)
        self.running: list[subprocess.Popen] = []
        self._n = 0

    def start(self, base_url: str, paths: list[str], headers: list[str], *, seconds: float, connections: int,
              threads: int = 2, sources: int = SOURCES, source_base: int = 0, nice: int = 0,
              rate: float | None = None) -> "WrkRun":
        """Start wrk in the background; `nice` > 0 lets the servers win the CPU over the load
        generator, which in production runs on other machines.  `rate` (requests per second over all
        connections) paces each connection; fast answers then cannot turn into a bigger flood."""
        self._n += 1
        stem = self.workdir / f"run{self._n:03d}"
        stem.with_suffix(".paths").write_text("\n".join(paths) + "\n")
        stem.with_suffix(".headers").write_text("\n".join(headers) + "\n")
        out = stem.with_suffix(".json")
        env = {**os.environ, "BENCH_PATHS": str(stem.with_suffix(".paths")),
               "BENCH_HEADERS": str(stem.with_suffix(".headers")), "BENCH_OUT": str(out),
               "BENCH_THREADS": str(threads), "BENCH_SOURCES": str(sources),
               "BENCH_SOURCE_BASE": str(source_base), "LD_PRELOAD": str(self.shim)}
        if rate:
            env["BENCH_DELAY_MS"] = str(max(1, round(connections * 1000 / rate)))
        argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "35s",
                "-s", str(self.lua), base_url + "/"]
        if nice:
            argv = ["nice", "-n", str(nice), *argv]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.running.append(proc)
        return WrkRun(proc, out, connections)

    def run(self, *args, **kwargs) -> dict:
        return self.start(*args, **kwargs).result()

    def stop_all(self) -> None:
        """Ctrl-C or an error: end the wrk processes we started, by their pid."""
        for proc in self.running:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()


@dataclass
class WrkRun:
    proc: subprocess.Popen
    out: Path
    connections: int

    def result(self) -> dict:
        stdout, _ = self.proc.communicate()
        if self.proc.returncode != 0 or not self.out.exists():
            raise BenchError(f"wrk failed ({self.proc.returncode}):\n{stdout[-2000:]}")
        raw = json.loads(self.out.read_text())
        seconds = raw["duration_us"] / 1e6
        statuses = {int(k): v for k, v in raw["statuses"].items()}
        ok = statuses.get(200, 0)
        return {
            "connections": self.connections,
            "seconds": round(seconds, 1),
            "requests": raw["requests"],
            "req_per_s": round(raw["requests"] / seconds, 1),
            "ok_per_s": round(ok / seconds, 1),
            "statuses": statuses,
            "app_limited_429": raw["app_limited_429"],
            "socket_errors": raw["errors"],
            # wrk's latency mixes every status; it is the whole answer only when all are 200
            "latency_ms": {k: round(v / 1000, 1) for k, v in raw["latency_us"].items()},
            "app_ms_mean": round(raw["app_ms_sum"] / raw["app_ms_n"], 2) if raw["app_ms_n"] else None,
        }


def compile_shim(workdir: Path) -> Path:
    if shutil.which("gcc") is None:
        raise BenchError("gcc is needed to build the source-address shim for wrk: apt-get install gcc")
    source, library = workdir / "srcbind.c", workdir / "srcbind.so"
    source.write_text(SHIM_C)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"], check=True)
    return library


def auth_headers(keys: list[str]) -> list[str]:
    return [f"Authorization: Bearer {k}" for k in keys]


def status_paths(ids) -> list[str]:
    return [f"/api/v1/orders/{i}/status" for i in ids]


def public_mix(hot_ids: int = HOT_IDS) -> list[str]:
    """What partners and the CRM send: order lists and status reads of the hot ids, half and half.
    Each path twice in a row, because the 2 wrk threads take every other item: each thread then
    still alternates status, list, status, list."""
    return [p for i in range(1, hot_ids + 1) for p in [f"/api/v1/orders/{i}/status"] * 2 + [LIST_PATH] * 2]


# ============================================================================================ observations
CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_ticks() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, CPU ticks incl. reaped children) of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    return table


def machine_busy_ticks() -> tuple[int, int]:
    """(time in processes, time in interrupts) of all CPUs: loopback traffic is partly softirq
    time that no process is charged with, so it is reported apart from "everything else"."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return user + nice + system + steal, irq + softirq


def component_roots(stack: Stack) -> dict[str, list[int]]:
    """The process trees whose CPU we attribute: what a phase costs, and where.  The load
    generators are this script's own tree: wrk runs as our child (a finished one's CPU is in our
    children's time), the probes are our threads."""
    from stack import dbtier
    t = stack.ctx.vars["mes_topology"]
    pools = {"operator pool": [a["name"] for a in t["app_operator"]],
             "public pool": [a["name"] for a in t["app_public"]],
             "single pool": [a["name"] for a in t["app_single"]]}
    roots = {name: [stack.pid(n) for n in members] for name, members in pools.items() if members}
    roots["haproxy"] = [stack.pid("haproxy")]
    # Patroni starts each postmaster detached (its parent is init): both are counted.
    roots["postgresql"] = [dbtier.PatroniNode(n).postmaster_pid() for n in t["pg_nodes"]]
    roots["patroni, etcd"] = [stack.pid(n["name"]) for n in t["pg_nodes"]] + [stack.pid(m["name"]) for m in t["etcd"]]
    if stack.split:
        roots["pgpool"] = [stack.pid("pgpool")]
        roots["redis"] = [stack.pid("redis")]
    roots["monitoring"] = [stack.pid(n) for n in ("prometheus", "node_exporter", "redis_exporter",
                                                  "pg0_exporter", "pg1_exporter")]
    roots["load generators (wrk, probes)"] = [os.getpid()]
    return {k: [p for p in v if p] for k, v in roots.items()}


class CpuMeter:
    """CPU seconds per component between start() and stop(), plus the rest of the machine."""

    def __init__(self, roots: dict[str, list[int]]):
        self.roots = roots

    def _snapshot(self) -> tuple[dict[str, int], tuple[int, int]]:
        table = process_ticks()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)

        def tree(pid: int) -> int:
            return table.get(pid, (0, 0))[1] + sum(tree(c) for c in children.get(pid, []))

        return {name: sum(tree(p) for p in pids) for name, pids in self.roots.items()}, machine_busy_ticks()

    def start(self) -> None:
        self.t0, (self.c0, self.m0) = time.monotonic(), self._snapshot()

    def stop(self) -> dict:
        c1, m1 = self._snapshot()
        seconds = time.monotonic() - self.t0
        cores = {k: round((c1[k] - self.c0[k]) / CLK_TCK / seconds, 2) for k in self.roots}
        processes, interrupts = ((m1[i] - self.m0[i]) / CLK_TCK / seconds for i in (0, 1))
        cores["everything else"] = round(max(0.0, processes - sum(cores.values())), 2)
        cores["kernel interrupts"] = round(interrupts, 2)
        return {"cores_busy_total": round(processes + interrupts, 2), "cores_by_component": cores}


# frontend, Tw (wait in HAProxy's queue), Tr (server response), Ta (total), status, why
HAPROXY_LINE = re.compile(r"^\S+ \[[^\]]+\] (\S+) \S+ -?\d+/(-?\d+)/-?\d+/(-?\d+)/(-?\d+) (\d+) .* why=(\S+) \"")


class HaproxyLog:
    """HAProxy logs every request with its timers and, for its own refusals, why=.  The lines
    written between mark() and read() are one phase's requests: per frontend and kind (status and
    why), the total time Ta, and for requests that reached a server the time waiting in HAProxy's
    queue (Tw) and the server's response time (Tr, which includes waiting in gunicorn's backlog)."""

    def __init__(self, stack: Stack):
        self.path = stack.ctx.logfile("haproxy")

    def mark(self) -> None:
        self.offset, self.t0 = self.path.stat().st_size, time.monotonic()

    def read(self) -> dict[str, dict]:
        seconds = time.monotonic() - self.t0
        timers: dict[tuple[str, str], tuple[list[int], list[int], list[int]]] = {}
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            for raw in fh:
                m = HAPROXY_LINE.match(raw.decode("utf-8", "replace"))
                if not m:
                    continue
                frontend, tw, tr, ta, status, why = m.groups()
                frontend = frontend.rstrip("~")  # HAProxy marks a TLS frontend's name with ~
                kind = status + ("" if why == "-" else f" {why}")
                waits, responses, totals = timers.setdefault((frontend, kind), ([], [], []))
                totals.append(int(ta))
                if int(tr) >= 0:
                    waits.append(int(tw))
                    responses.append(int(tr))
        out = {}
        for frontend in sorted({f for f, _ in timers}):
            kinds = {k: v for (f, k), v in timers.items() if f == frontend}
            total = sum(len(v[2]) for v in kinds.values())
            out[frontend] = {
                "seconds": round(seconds, 1), "requests": total,
                "req_per_s": round(total / seconds, 1) if seconds else None,
                "kinds": {k: {"share": round(len(ta) / total, 4), "count": len(ta), "Ta_ms": summarize_ms(ta),
                              **({"Tw_ms": summarize_ms(tw), "Tr_ms": summarize_ms(tr)} if tr else {})}
                          for k, (tw, tr, ta) in sorted(kinds.items(), key=lambda kv: -len(kv[1][2]))},
            }
        return out


def select_counts(stack: Stack) -> dict[str, int]:
    """Pgpool-II's SELECT count per node role (standby = the replica)."""
    from stack import dbtier
    return {n["role"]: int(n["select_cnt"]) for n in dbtier.pool_nodes(stack.ctx)}


def redis_client(stack: Stack):
    import redis
    from stack.services import redis_url
    # As the admin user: INFO commandstats is no other user's.
    return redis.Redis.from_url(redis_url(stack.ctx, "admin"), socket_timeout=5)


def redis_calls(stack: Stack) -> dict[str, int]:
    stats = redis_client(stack).info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}


def cache_flags(stack: Stack, ids) -> list[bool]:
    """Whether each of these orders has a status entry in Redis right now."""
    pipe = redis_client(stack).pipeline(transaction=False)
    for i in ids:
        pipe.exists(f"mes:status:{i}")
    return [bool(x) for x in pipe.execute()]


def cached_share(stack: Stack, ids) -> float:
    flags = cache_flags(stack, ids)
    return sum(flags) / len(flags)


@contextmanager
def per_request_work(stack: Stack, into: dict) -> Iterator[None]:
    """What one request costs the data tier: Pgpool SELECTs per node and Redis commands, as the
    counters' difference over a run divided by its requests (into["requests"], set by the caller).
    Includes HAProxy's health checks (one SELECT 1 per instance and second): a rounding error."""
    if not stack.split:
        yield
        return
    selects, calls = select_counts(stack), redis_calls(stack)
    yield
    n = max(1, into.get("requests", 0))
    after_selects, after_calls = select_counts(stack), redis_calls(stack)
    into["selects_per_request"] = {role: round((after_selects[role] - selects.get(role, 0)) / n, 2)
                                   for role in after_selects}
    into["redis_calls_per_request"] = {cmd: round((c - calls.get(cmd, 0)) / n, 2) for cmd, c in after_calls.items()
                                       if cmd != "info" and (c - calls.get(cmd, 0)) / n >= 0.01}


# ============================================================================================ probes
class FixedRateProbe:
    """Sends one GET every 1/rate seconds for `seconds`, whatever the previous ones are doing (a
    thread pool), and measures each from its scheduled start: a slow answer cannot hide the ones
    that would have queued behind it (no coordinated omission)."""

    def __init__(self, rate: float, seconds: float, make_request):
        self.rate, self.seconds, self.make_request = rate, seconds, make_request
        self.local = threading.local()

    def _one(self, index: int, scheduled: float) -> tuple[str, float]:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        try:
            outcome = self.make_request(self.local.session, index)
        except requests.RequestException as exc:
            outcome = f"error {type(exc).__name__}"
        return outcome, (time.perf_counter() - scheduled) * 1000

    def run(self) -> list[tuple[str, float]]:
        count = int(self.rate * self.seconds)
        with ThreadPoolExecutor(64) as pool:
            start = time.perf_counter() + 0.05
            futures = []
            for i in range(count):
                scheduled = start + i / self.rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(self._one, i, scheduled))
            return [f.result() for f in futures]


def operator_probe(stack: Stack, timing: Timing) -> FixedRateProbe:
    """The operator orders page as the logged-in demo operator; anything but the page is an error."""
    def get(session: requests.Session, _i: int) -> str:
        r = session.get(f"{stack.operator}/operator/", headers={"Cookie": stack.cookie}, timeout=30,
                        allow_redirects=False)
        return "ok" if r.status_code == 200 and "Orders queue" in r.text else f"error HTTP {r.status_code}"

    return FixedRateProbe(timing.operator_rate, timing.probe, get)


def operator_summary(samples: list[tuple[str, float]]) -> dict:
    errors = [o for o, _ in samples if o != "ok"]
    return {**summarize_ms([ms for _, ms in samples]), "errors": len(errors), "error_kinds": sorted(set(errors))}


def public_sampler(stack: Stack, timing: Timing, keys: dict[str, list[str]]) -> FixedRateProbe:
    """During the flood: status reads with the flood's own keys (crowd and runaway in turn), from
    127.0.0.1, to see per status how long an answer takes from the client's side."""
    groups = list(keys.items())

    def get(session: requests.Session, i: int) -> str:
        group, group_keys = groups[i % len(groups)]
        key = group_keys[(i // len(groups)) % len(group_keys)]
        r = session.get(f"{stack.public}/api/v1/orders/{1 + i % HOT_IDS}/status", timeout=35,
                        headers={"Authorization": f"Bearer {key}"})
        return f"{group} {r.status_code}"

    return FixedRateProbe(timing.public_rate, timing.probe, get)


def sampler_summary(samples: list[tuple[str, float]]) -> dict:
    by: dict[str, list[float]] = {}
    for outcome, ms in samples:
        by.setdefault(outcome, []).append(ms)
    return {k: summarize_ms(v) for k, v in sorted(by.items())}


# ============================================================================================ phases
def warm_up(stack: Stack, wrk: Wrk, timing: Timing) -> dict:
    """Connections, worker imports and PostgreSQL buffers warm; on split, the hot ids' cache
    entries filled (their first read is a miss that fills the cache) and checked in Redis."""
    headers, hot = auth_headers(stack.keys["reader"]), list(range(1, HOT_IDS + 1))
    out = {"status": wrk.run(stack.public, status_paths(hot), headers, seconds=8, connections=8),
           "mix": wrk.run(stack.public, public_mix(), headers, seconds=5, connections=8),
           "operator": wrk.run(stack.operator, ["/operator/"], [f"Cookie: {stack.cookie}"], seconds=3,
                               connections=2)}
    for name, r in out.items():
        log(f"    {stack.topology:<6} warm-up {name:<8} {r['ok_per_s']:>6.0f} ok/s  {r['statuses']}")
    if stack.split:
        for _ in range(5):  # read each hot id that is not cached yet, until none is left
            missing = [i for i, hit in zip(hot, cache_flags(stack, hot)) if not hit]
            if not missing:
                break
            wrk.run(stack.public, status_paths(missing), headers, seconds=max(2, len(missing) / 100), connections=8)
        out["hot_ids_cached_share"] = cached_share(stack, hot)
        if out["hot_ids_cached_share"] < 1:
            raise BenchError(f"only {out['hot_ids_cached_share']:.0%} of the hot ids are cached after the warm-up")
    return out


def status_reads(stack: Stack, wrk: Wrk, timing: Timing) -> dict:
    """3. The status endpoint from the cache and from the database, and the no-op ceiling.

    "database": ids above HOT_IDS never read before, each read once (threads interleave over a
    list of distinct ids), none in the cache before the run: every read is a miss that reads the
    primary and fills the cache, which is what a cold status read costs in the split topology.  In
    the single topology there is no cache: every status read is a database read, hot ids or cold."""
    headers = auth_headers(stack.keys["reader"])
    cold = list(range(stack.next_cold_id, stack.max_order_id + 1))
    runs = {"noop /healthz/live": ["/healthz/live"], "status, hot ids": status_paths(range(1, HOT_IDS + 1)),
            "status, cold ids (each once)": status_paths(cold)}
    out = {}
    for name, paths in runs.items():
        is_cold = name.startswith("status, cold")
        if stack.split and is_cold and cached_share(stack, cold) > 0:
            raise BenchError("cold ids are already cached: the database run would hit the cache")
        result: dict = {}
        cpu = CpuMeter(component_roots(stack))
        cpu.start()
        with per_request_work(stack, result):
            result.update(wrk.run(stack.public, paths, headers, seconds=timing.throughput, connections=16))
        result["cpu"] = cpu.stop()
        if is_cold:
            # the 2 threads take every other id and need not send as many requests: skip generously
            stack.next_cold_id += 2 * result["requests"] + 100
            if result["requests"] > len(cold):
                result["note"] = "more requests than cold ids: some were read twice (cache hits)"
        if stack.split and is_cold:
            # every read a miss: as many cold ids are in the cache now as there were answers
            result["cold_ids_cached_per_answer"] = round(
                cached_share(stack, cold) * len(cold) / max(1, result["statuses"].get(200, 0)), 3)
        out[name] = result
        log(f"    {stack.topology:<6} {name:<30} {result['ok_per_s']:>7.0f} ok/s  p95 "
            f"{result['latency_ms']['p95']:>6.1f} ms  app {result['app_ms_mean']} ms  {result['statuses']}")
    noop = out["noop /healthz/live"]["ok_per_s"]
    for name in list(out)[1:]:
        out[name]["vs_noop"] = round(out[name]["ok_per_s"] / noop, 2) if noop else None
    return out


def capacity(stack: Stack, wrk: Wrk, timing: Timing) -> dict:
    """The public API's throughput at moderate concurrency (16 connections, ~3 per worker)."""
    cpu = CpuMeter(component_roots(stack))
    cpu.start()
    result = wrk.run(stack.public, public_mix(), auth_headers(stack.keys["reader"]), seconds=timing.throughput,
                     connections=16)
    result["cpu"] = cpu.stop()
    log(f"    {stack.topology:<6} public API capacity: {result['ok_per_s']:.0f} ok/s  "
        f"p95 {result['latency_ms']['p95']} ms  {result['statuses']}")
    return result


def idle_operator(stack: Stack, timing: Timing) -> dict:
    haproxy, cpu = HaproxyLog(stack), CpuMeter(component_roots(stack))
    haproxy.mark()
    cpu.start()
    result = operator_summary(operator_probe(stack, timing).run())
    result["cpu"] = cpu.stop()
    result["haproxy_operator"] = haproxy.read().get("operator")
    log(f"    {stack.topology:<6} operator page, idle:    p50 {result['p50']} p95 {result['p95']} "
        f"p99 {result['p99']} ms, errors {result['errors']}")
    return result


def flood(stack: Stack, wrk: Wrk, timing: Timing, capacity_ok_per_s: float, *, paced: bool = True) -> dict:
    """1 + 2. The public API flooded by
    - a runaway client: one key on 50 connections from 4 addresses, started first, alone, so that on
      split it is over its limits (the app's 100/s for tier crm, then HAProxy's per-key and
      per-address rates) by the time we measure, and from then on answered at once.  `paced`: it
      aims at FLOOD_TIMES times the capacity, the goal's "10x flood" (it reaches a little less, as
      each connection waits for its answers, and the crowd adds its own share); otherwise a tight
      loop, whose offered load grows as fast as the refusals come back;
    - a crowd: 24 keys, each well below its limits, on 200 connections from 32 addresses, which
      alone keeps every public worker busy and a queue in front of them;
    while the operator page is probed at a fixed rate and a sampler reads statuses with the flood's
    keys.  wrk runs at nice 10: on this 2-core machine the load generator should lose the CPU to
    the servers (in production it is on other machines).  Measured over the probe window only."""
    seconds = timing.runaway_head_start + timing.crowd_head_start + timing.probe + 3
    rate = FLOOD_TIMES * capacity_ok_per_s if paced else None
    runaway = wrk.start(stack.public, public_mix(), auth_headers(stack.keys["runaway"]), seconds=seconds,
                        connections=50, threads=1, sources=RUNAWAY_SOURCES, source_base=RUNAWAY_SOURCE_BASE, nice=10,
                        rate=rate)
    time.sleep(timing.runaway_head_start)
    crowd = wrk.start(stack.public, public_mix(), auth_headers(stack.keys["reader"]),
                      seconds=seconds - timing.runaway_head_start, connections=200, nice=10)
    time.sleep(timing.crowd_head_start)
    haproxy, cpu = HaproxyLog(stack), CpuMeter(component_roots(stack))
    haproxy.mark()
    cpu.start()
    with ThreadPoolExecutor(2) as pool:
        op = pool.submit(operator_probe(stack, timing).run)
        pub = pool.submit(public_sampler(stack, timing, {"crowd": stack.keys["reader"],
                                                         "runaway": stack.keys["runaway"]}).run)
        operator, sampled = operator_summary(op.result()), sampler_summary(pub.result())
    cpu_window = cpu.stop()
    logged = haproxy.read()
    window = {"cpu": cpu_window, "haproxy_public": logged["public"], "haproxy_operator": logged.get("operator")}
    result = {"operator": operator, "public_sampler": sampled, **window,
              "wrk_runaway": runaway.result(), "wrk_crowd": crowd.result()}
    offered = window["haproxy_public"]["req_per_s"]
    result["runaway_target_req_per_s"] = round(rate) if rate else None
    result["offered_vs_capacity"] = round(offered / capacity_ok_per_s, 1) if capacity_ok_per_s else None
    result["refused_share"] = round(sum(k["share"] for kind, k in window["haproxy_public"]["kinds"].items()
                                        if kind.split()[0] in ("429", "503")), 4)
    log(f"    {stack.topology:<6} operator page, flooded ({'paced' if paced else 'tight loop'}): p50 {operator['p50']} p95 {operator['p95']} "
        f"p99 {operator['p99']} ms, errors {operator['errors']}; public offered {offered:.0f}/s "
        f"({result['offered_vs_capacity']}x capacity), refused {result['refused_share']:.1%}; "
        f"runaway {result['wrk_runaway']['statuses']}, crowd {result['wrk_crowd']['statuses']}")
    return result


def deep_queue(stack: Stack, wrk: Wrk, timing: Timing) -> dict:
    """2. A crowd deep enough (1500 connections, 24 keys below their limits, 32 addresses) that the
    wait for a public worker passes haproxy_public_timeout_queue: split answers 503 then; single has
    no queue timeout, so everyone waits."""
    haproxy, cpu = HaproxyLog(stack), CpuMeter(component_roots(stack))
    haproxy.mark()
    cpu.start()
    result = wrk.run(stack.public, public_mix(), auth_headers(stack.keys["reader"]), seconds=timing.deep_queue,
                     connections=1500, nice=10)
    out = {"wrk": result, "cpu": cpu.stop(), "haproxy_public": haproxy.read()["public"]}
    out["refused_share"] = round(sum(k["share"] for kind, k in out["haproxy_public"]["kinds"].items()
                                     if kind.split()[0] in ("429", "503")), 4)
    log(f"    {stack.topology:<6} deep queue (-c 1500): {result['statuses']}, "
        f"p50 {result['latency_ms']['p50']} ms, refused {out['refused_share']:.1%}")
    return out


def read_offload(stack: Stack, wrk: Wrk, timing: Timing) -> dict:
    """4. Share of SELECTs that Pgpool sends to the replica, per load: operator pages only, the
    partner mix only, both at once (the brief's number).  Split only: single has no replica."""
    if not stack.split:
        return {"note": "single topology: one database, every SELECT goes to the primary"}
    operator_paths = ["/operator/", "/operator/?status=queued", "/operator/?overdue=1"] + \
        [f"/operator/orders/{i}" for i in range(1, 200)]
    loads = {
        "operator pages": [(stack.operator, operator_paths, [f"Cookie: {stack.cookie}"], 4)],
        "partner API mix": [(stack.public, public_mix(), auth_headers(stack.keys["reader"]), 8)],
    }
    loads["mixed operator + partner"] = loads["operator pages"] + loads["partner API mix"]
    out = {}
    for name, parts in loads.items():
        seconds = timing.offload * (2 if len(parts) > 1 else 1)
        before = select_counts(stack)
        runs = [wrk.start(url, paths, headers, seconds=seconds, connections=c) for url, paths, headers, c in parts]
        results = [r.result() for r in runs]
        after = select_counts(stack)
        delta = {role: after[role] - before.get(role, 0) for role in after}
        total = sum(delta.values())
        out[name] = {"selects": delta, "replica_share": round(delta.get("standby", 0) / total, 3) if total else None,
                     "ok_per_s": [r["ok_per_s"] for r in results], "statuses": [r["statuses"] for r in results]}
        log(f"    {stack.topology:<6} read offload, {name:<26} replica share {out[name]['replica_share']:.1%} "
            f"of {total} SELECTs")
    return out


# ============================================================================================ report
def cpu_priority(stack: Stack) -> dict[str, dict]:
    """Where each app instance's gunicorn master runs (stack/priority.py): its cgroups and its nice value."""
    out = {}
    t = stack.ctx.vars["mes_topology"]
    for instance in t["app_operator"] + t["app_public"] + t["app_single"]:
        pid = stack.pid(instance["name"])
        cgroups = Path(f"/proc/{pid}/cgroup").read_text().split()
        nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        cpu = [c for c in cgroups if c.split(":")[1] in ("", "cpu") or "cpu" in c.split(":")[1].split(",")]
        out[instance["name"]] = {"cgroups": cpu, "nice": nice}  # v2's line and v1's cpu controller
    return out


def environment() -> dict:
    def first_line(argv: list[str]) -> str | None:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return None

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "git_commit": first_line(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
            "uncommitted_changes_in": [d for d in ("src", "stack", "haproxy", "pgpool", "ansible")
                                       if first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--", d])],
            "haproxy": first_line(["haproxy", "-v"]), "pgpool": first_line(["pgpool", "--version"]),
            "postgres": first_line(["pg_config", "--version"]),
            "wrk": first_line(["wrk", "--version"])}


def other_tests_running() -> list[str]:
    """A concurrent pytest run (e.g. CI) on this machine would disturb the numbers: note it."""
    return subprocess.run(["pgrep", "-af", "pytest"], capture_output=True, text=True).stdout.splitlines()


def goals(report: dict) -> dict:
    """The goals of the phases that ran (--phases may leave some out)."""
    out = {}
    for topology, r in report["topologies"].items():
        out[topology] = mine = {}
        if "isolation_idle" in r and "flood" in r:
            idle, flooded = r["isolation_idle"], r["flood"]["operator"]
            ratio = flooded["p95"] / idle["p95"] if idle["p95"] else None
            mine.update(isolation_p95_ratio=round(ratio, 2) if ratio else None,
                        isolation_met=bool(ratio and ratio <= GOAL_ISOLATION and flooded["errors"] == 0),
                        operator_errors_flooded=flooded["errors"])
        if "isolation_idle" in r and "flood_unbounded" in r:
            idle, flooded = r["isolation_idle"], r["flood_unbounded"]["operator"]
            mine.update(unbounded_flood_p95_ratio=round(flooded["p95"] / idle["p95"], 2) if idle["p95"] else None,
                        operator_errors_unbounded_flood=flooded["errors"])
        if "status_reads" in r:
            cached = r["status_reads"]["status, hot ids"]["vs_noop"]
            mine.update(hot_status_vs_noop=cached, status_goal_met=bool(cached and cached >= GOAL_CACHED_VS_NOOP))
    return out


def disturbance(report: dict, threshold: float = 0.25) -> dict[str, float]:
    """Measured windows in which processes outside both stacks and the load generators used more
    than `threshold` cores (of 2): their numbers are disturbed by other work on the machine."""
    out = {}
    for topology, r in report["topologies"].items():
        windows = {name: r[name]["cpu"] for name in ("capacity", "isolation_idle", "flood", "flood_unbounded",
                                                      "deep_queue") if name in r}
        windows.update({f"status_reads/{k}": v["cpu"] for k, v in r.get("status_reads", {}).items()})
        for name, cpu in windows.items():
            other = cpu["cores_by_component"]["everything else"]
            if other > threshold:
                out[f"{topology}/{name}"] = other
    return out


def markdown(report: dict) -> str:
    """The tables of the BENCHMARKS.md section (the prose there is written by hand)."""
    tops = list(report["topologies"])
    t = report["topologies"]
    lines = ["| | " + " | ".join(LABEL[x] for x in tops) + " |", "|---|" + "---|" * len(tops)]

    def row(title, fn):
        cells = []
        for x in tops:
            try:
                cells.append(fn(t[x]))
            except (KeyError, TypeError):
                cells.append("–")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    three = lambda s: f"{s['p50']} / {s['p95']} / {s['p99']}"  # noqa: E731
    row("public API capacity (mix, -c 16), ok/s", lambda r: f"{r['capacity']['ok_per_s']:.0f}")
    row("operator page idle p50 / p95 / p99, ms", lambda r: three(r["isolation_idle"]))
    row("operator page flooded p50 / p95 / p99, ms", lambda r: three(r["flood"]["operator"]))
    row("flooded / idle p95", lambda r: f"**{report['goals'][r['topology']]['isolation_p95_ratio']}**")
    row("operator errors, flooded", lambda r: str(r["flood"]["operator"]["errors"]))
    row("flood offered, req/s (x capacity)", lambda r: f"{r['flood']['haproxy_public']['req_per_s']:.0f} "
                                                         f"({r['flood']['offered_vs_capacity']}x)")
    row("flood refused (429/503)", lambda r: f"{r['flood']['refused_share']:.1%}")
    row("tight-loop flood: operator p95 ms (x idle)",
        lambda r: f"{r['flood_unbounded']['operator']['p95']} "
                  f"({report['goals'][r['topology']]['unbounded_flood_p95_ratio']}x)")
    row("tight-loop flood offered, req/s (x capacity)",
        lambda r: f"{r['flood_unbounded']['haproxy_public']['req_per_s']:.0f} "
                  f"({r['flood_unbounded']['offered_vs_capacity']}x)")
    for name in ("noop /healthz/live", "status, hot ids", "status, cold ids (each once)"):
        row(f"{name}: ok/s, p95 ms", lambda r, n=name: f"{r['status_reads'][n]['ok_per_s']:.0f}, "
                                                      f"{r['status_reads'][n]['latency_ms']['p95']}")
    row("hot status / no-op throughput", lambda r: f"**{r['status_reads']['status, hot ids']['vs_noop']}**")
    row("deep queue (-c 1500) refused", lambda r: f"{r['deep_queue']['refused_share']:.1%}")
    row("replica share of SELECTs, mixed load",
        lambda r: f"{r['read_offload']['mixed operator + partner']['replica_share']:.1%}")
    return "\n".join(lines)


def write_atomically(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)


# ============================================================================================ noise
QUIET_CORES = 0.15  # other work on the machine below this: a phase may start


def other_work(stacks: list[Stack], seconds: float = 5) -> float:
    """Cores used by processes outside both stacks and this script's tree over `seconds`."""
    roots: dict[str, list[int]] = {}
    for stack in stacks:
        roots.update({f"{stack.topology}/{k}": v for k, v in component_roots(stack).items() if "load" not in k})
    roots["load generators"] = [os.getpid()]
    meter = CpuMeter(roots)
    meter.start()
    time.sleep(seconds)
    return meter.stop()["cores_by_component"]["everything else"]


def wait_for_quiet(stacks: list[Stack], max_wait: float) -> dict:
    """This machine is shared (CI runs, deployments): before a phase, wait until other work uses
    less than QUIET_CORES, at most max_wait seconds; then go on, and say so in the results."""
    started = time.monotonic()
    while True:
        other = other_work(stacks)
        waited = time.monotonic() - started
        if other < QUIET_CORES or waited >= max_wait:
            if other >= QUIET_CORES:
                log(f"  the machine is still busy ({other:.2f} cores of other work) after {waited:.0f} s: "
                    f"measuring anyway")
            return {"waited_s": round(waited), "other_cores_before": round(other, 2)}
        log(f"  waiting for a quiet machine: other work uses {other:.2f} cores")
        time.sleep(10)


def cpu_windows(result) -> list[dict]:
    """Every CpuMeter result inside a phase's result."""
    if not isinstance(result, dict):
        return []
    found = [result["cpu"]] if isinstance(result.get("cpu"), dict) and "cores_by_component" in result["cpu"] else []
    return found + [w for k, v in result.items() if k != "cpu" for w in cpu_windows(v)]


def phase_disturbed(results: dict[str, dict], threshold: float = 0.25) -> float:
    """The most other work (cores) seen in any measured window of this phase, if over threshold."""
    worst = max((w["cores_by_component"]["everything else"] for r in results.values() for w in cpu_windows(r)),
                default=0.0)
    return worst if worst > threshold else 0.0


# ============================================================================================ main
PHASES = ("warm_up", "status_reads", "capacity", "isolation_idle", "flood", "flood_unbounded", "deep_queue",
          "read_offload")
HEAVY = ("capacity", "flood", "flood_unbounded", "deep_queue")  # afterwards, wait until the 10 s stick-table rates fall


def run_phase(phase: str, stack: Stack, wrk: Wrk, timing: Timing, results: dict) -> dict:
    if phase == "warm_up":
        return warm_up(stack, wrk, timing)
    if phase == "status_reads":
        return status_reads(stack, wrk, timing)
    if phase == "capacity":
        return capacity(stack, wrk, timing)
    if phase == "isolation_idle":
        return idle_operator(stack, timing)
    if phase in ("flood", "flood_unbounded"):
        return flood(stack, wrk, timing, results["capacity"]["ok_per_s"], paced=phase == "flood")
    if phase == "deep_queue":
        return deep_queue(stack, wrk, timing)
    return read_offload(stack, wrk, timing)


def run(args: argparse.Namespace, cleanup: ExitStack) -> dict:
    timing = Timing.quick() if args.quick else Timing()
    busy = other_tests_running()
    if busy:
        log(f"warning: other test runs are active and will disturb the numbers: {busy}")
    report = {"started": now_iso(), "environment": environment(), "timing": vars(timing),
              "loadavg_at_start": os.getloadavg(), "other_tests_running_at_start": busy,
              "settings": {k: SETTINGS[k] for k in ("haproxy_key_rate_limit", "haproxy_src_rate_limit",
                                                    "haproxy_src_conn_limit", "haproxy_public_timeout_queue",
                                                    "mes_pools", "mes_single_pool", "mes_rate_limits")},
              "topologies": {}}
    if args.export_traces:
        # Spans go to a receiver in this process (on VMs, Tempo on the monitoring host): what exporting
        # costs the app, at the deployment's sampling ratio.
        from mes.testing.otlp import OtlpReceiver
        receiver = cleanup.enter_context(OtlpReceiver())
        os.environ["MES_OTLP_ENDPOINT"] = receiver.endpoint
        cleanup.callback(lambda: report.__setitem__("tracing", {
            "exported": True, "sample_ratio": SETTINGS["mes_trace_sample_ratio"],
            "export_requests": receiver.requests, "spans_received": len(receiver.spans)}))
    else:
        os.environ.pop("MES_OTLP_ENDPOINT", None)
        report["tracing"] = {"exported": False}
    workdir = Path(tempfile.mkdtemp(prefix="topology-bench-"))
    cleanup.callback(shutil.rmtree, workdir, True)
    wrk = Wrk(workdir)
    cleanup.callback(wrk.stop_all)
    stacks = []
    for topology in args.topologies:
        stack = Stack(topology)
        cleanup.callback(stack.down)  # registered first: a failed `up` is stopped too
        log(f"starting the {topology} topology")
        stack.up()
        prepare(stack)
        stacks.append(stack)
        report["topologies"][topology] = {"topology": topology, "orders": stack.max_order_id,
                                          "cpu_priority": cpu_priority(stack)}
    try:
        for i, phase in enumerate(args.phases):
            order = stacks if i % 2 == 0 else stacks[::-1]  # alternate who goes first
            for attempt in range(1, args.retries + 2):
                log(f"phase {phase}" + (f" (attempt {attempt})" if attempt > 1 else ""))
                quiet = wait_for_quiet(stacks, args.max_wait)
                for stack in order:
                    results = report["topologies"][stack.topology]
                    results[phase] = run_phase(phase, stack, wrk, timing, results)
                    results.setdefault("phase_runs", {})[phase] = {
                        "attempt": attempt, **quiet, "loadavg_after": round(os.getloadavg()[0], 2)}
                    time.sleep(timing.settle if phase in HEAVY else 2)
                worst = phase_disturbed({s.topology: report["topologies"][s.topology][phase] for s in stacks})
                if not worst:
                    break
                log(f"  phase {phase} was disturbed: other work used up to {worst:.2f} cores")
    finally:
        wrk.stop_all()  # before the stacks go down
    report["goals"] = goals(report)
    report["disturbed_windows"] = disturbance(report)
    report["other_tests_running_at_end"] = other_tests_running()
    report["finished"] = now_iso()
    return report


def _phases(value: str) -> list[str]:
    wanted = {p.strip() for p in value.split(",") if p.strip()}
    unknown = wanted - set(PHASES)
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(f"phases are some of {', '.join(PHASES)}")
    if wanted & {"flood", "flood_unbounded"} and "capacity" not in wanted:
        raise argparse.ArgumentTypeError("flood is sized from capacity: run capacity too")
    return [p for p in PHASES if p in wanted]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topologies", default="single,split",
                        type=lambda v: [t for t in v.split(",") if t in TOPOLOGIES] or list(TOPOLOGIES),
                        help="which to run, in this order (default: single,split)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder of topology_bench.json (default: bench/results); point trial runs elsewhere")
    parser.add_argument("--quick", action="store_true", help="short phases, for trying the script out")
    parser.add_argument("--phases", default=",".join(PHASES), type=_phases,
                        help="which phases to run, in the usual order (default: all). warm_up fills the status "
                             "cache that status_reads needs; flood needs capacity; e.g. warm_up,status_reads")
    parser.add_argument("--max-wait", type=float, default=900,
                        help="before each phase, wait up to this many seconds for other work on the machine to "
                             "stop (default: 900)")
    parser.add_argument("--retries", type=int, default=2,
                        help="repeat a phase (both topologies) this many times at most when other work "
                             "disturbed it (default: 2)")
    parser.add_argument("--export-traces", action="store_true",
                        help="the app instances export their spans over OTLP to a receiver in this process, "
                             "sampled at mes_trace_sample_ratio (default: ids only, nothing exported)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))  # wrk -c 1500
    try:
        with ExitStack() as cleanup:
            report = run(args, cleanup)
            log("stopping the stacks")
    except KeyboardInterrupt:
        log("interrupted; the stacks were stopped and their folders removed")
        return 130
    except BenchError as err:
        log(f"error: {err}\nthe stacks were stopped and their folders removed")
        return 1
    write_atomically(args.out / "topology_bench.json", json.dumps(report, indent=2) + "\n")
    if len(report["topologies"]) == len(TOPOLOGIES) and args.phases == list(PHASES):
        print(markdown(report))
    print(f"\nGoals: {json.dumps(report['goals'], indent=2)}")
    if report["disturbed_windows"]:
        print(f"\nWARNING: other work used over 0.25 cores during {json.dumps(report['disturbed_windows'])}; "
              f"rerun on a quiet machine before publishing")
    print(f"Details: {os.path.relpath(args.out / 'topology_bench.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
