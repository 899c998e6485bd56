"""Both pools under real gunicorn with several workers: metrics merged across workers, JSON request logs."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import NEW_ORDER, auth
from stackutil import autogroup_nice, cpu_cgroup, gunicorn_processes, nice_of

from mes.testing.postgres import free_port


class Gunicorn:
    def __init__(self, pool: str, backend, tmp: Path, workers: int = 3, launcher: tuple[str, ...] = ()):
        """`launcher`: an argv prefix the command runs under (the local stack's priority, stack/priority.py)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"{pool}.log"
        env = {**os.environ, "DATABASE_URL": backend.app_url, "SECRET_KEY": "gunicorn-test",
               "GUNICORN_BIND": f"127.0.0.1:{self.port}", "GUNICORN_WORKERS": str(workers),
               "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"{pool}-metrics"), "MES_RATE_LIMIT_STANDARD": "100000/minute",
               "PYTHONPATH": os.pathsep.join(sys.path)}
        self.proc = subprocess.Popen([*launcher, sys.executable, "-m", "gunicorn", "-c", f"python:mes.gunicorn.{pool}"],
                                     env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=bool(launcher))  # as the stack starts it: a session of its own
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if requests.get(f"{self.url}/healthz/ready", timeout=10).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or a first answer slowed by a busy machine
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gunicorn {pool} did not become ready:\n{self.log.read_text()[-3000:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]


@pytest.fixture
def public_pool(app, backend, tmp_path):
    server = Gunicorn("public", backend, tmp_path)
    yield server
    server.stop()


def scrape(url: str) -> str:
    return requests.get(f"{url}/metrics", timeout=10).text


def sample(text: str, name: str, **labels) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_public_pool_metrics_add_up_across_workers(public_pool, accounts_):
    partner = accounts_.partner()
    for i in range(30):
        assert requests.get(f"{public_pool.url}/api/v1/orders", headers=auth(partner), timeout=10).status_code == 200
    for i in range(4):
        r = requests.post(f"{public_pool.url}/api/v1/orders", json={**NEW_ORDER, "reference": f"G-{i}"},
                          headers={**auth(partner), "Idempotency-Key": f"g-{i}"}, timeout=10)
        assert r.status_code == 201
    text = scrape(public_pool.url)
    assert sample(text, "flask_http_request_total", method="GET", status="200", pool="public") >= 30
    assert sample(text, "flask_http_request_duration_seconds_count", url_rule="/api/v1/orders", pool="public") == 34
    assert sample(text, "flask_http_request_duration_seconds_count", url_rule="/api/v1/orders/<int:order_id>") == 0
    assert re.search(r"^mes_orders_received_total(\{\})? 4\.0$", text, re.M)
    assert sample(text, "mes_status_transitions_total", from_status="none", to_status="received") == 4
    assert re.search(r"^mes_orders_overdue(\{[^}]*\})? 0\.0$", text, re.M)
    # The promise's series exist in every worker's samples from the start (nothing shipped yet).
    assert re.search(r'^mes_orders_shipped_total\{promise="met"\} 0\.0$', text, re.M)
    assert re.search(r'^mes_orders_shipped_total\{promise="missed"\} 0\.0$', text, re.M)
    assert re.search(r'^mes_order_lead_time_days_bucket\{le="21\.0"\} 0\.0$', text, re.M)


def test_one_json_log_line_per_request_without_secrets(public_pool, accounts_):
    partner = accounts_.partner()
    key = partner["Authorization"].split()[1]
    r = requests.get(f"{public_pool.url}/api/v1/orders", headers={**auth(partner), "X-Request-ID": "trace-42"},
                     timeout=10)
    assert r.headers["X-Request-ID"] == "trace-42"
    requests.get(f"{public_pool.url}/api/v1/orders", headers={"Authorization": "Bearer mes_bad_key"}, timeout=10)
    time.sleep(0.5)
    lines = public_pool.log_lines()
    mine = [x for x in lines if x.get("request_id") == "trace-42"]
    assert len(mine) == 1
    line = mine[0]
    assert line["pool"] == "public" and line["rule"] == "/api/v1/orders" and line["status"] == 200
    assert line["client_id"] == partner["_client_id"] and line["duration_ms"] >= 0
    assert any(x.get("status") == 401 for x in lines if x.get("rule") == "/api/v1/orders")
    raw = public_pool.log.read_text()
    assert key not in raw and "mes_bad_key" not in raw


def test_operator_pool_serves_only_the_ui(app, backend, tmp_path):
    server = Gunicorn("operator", backend, tmp_path, workers=2)
    try:
        assert "Operator login" in requests.get(f"{server.url}/operator/login", timeout=10).text
        assert requests.get(f"{server.url}/api/v1/orders", timeout=10).status_code == 404
        assert "flask_http_request_total" in scrape(server.url)
    finally:
        server.stop()


def test_refused_requests_are_timed_too(public_pool):
    for _ in range(3):
        assert requests.get(f"{public_pool.url}/api/v1/orders", timeout=10).status_code == 401
    text = scrape(public_pool.url)
    assert sample(text, "flask_http_request_duration_seconds_count", url_rule="/api/v1/orders", status="401") == 3


def test_one_log_line_per_request_with_the_query_redacted(public_pool, accounts_):
    """gunicorn's access log is off: each request is the app's JSON line alone, and a key sent in the
    query string never reaches the log."""
    partner = accounts_.partner()
    secret = partner["Authorization"].split()[1]
    for i in range(3):
        requests.get(f"{public_pool.url}/api/v1/orders?limit=1&api_key={secret}",
                     headers={**auth(partner), "X-Request-ID": f"once-{i}"}, timeout=10)
    time.sleep(0.5)
    raw = public_pool.log.read_text()
    assert secret not in raw
    assert len([line for line in raw.splitlines() if "/api/v1/orders" in line]) == 3, raw[-3000:]
    assert all(line.startswith("{") for line in raw.splitlines() if line.strip()), raw[-3000:]
    mine = [x for x in public_pool.log_lines() if x.get("request_id", "").startswith("once-")]
    assert [x["query"] for x in mine] == ["limit=1&api_key=[redacted]"] * 3


def test_health_probes_that_pass_are_not_logged(public_pool):
    for _ in range(5):
        assert requests.get(f"{public_pool.url}/healthz/ready", timeout=10).status_code == 200
        assert requests.get(f"{public_pool.url}/healthz/live", timeout=10).status_code == 200
    time.sleep(0.5)
    raw = public_pool.log.read_text()
    assert "healthz" not in raw, raw[-3000:]


@pytest.mark.postgresql_only
def test_the_local_stack_runs_operator_workers_at_a_higher_cpu_priority_than_public_workers(app, backend, tmp_path):
    """stack/priority.py as `make up` uses it, with real gunicorn pools. Where the cpu controller's
    hierarchy can be written, each pool with every worker is in its own cgroup with the pool's weight from
    group_vars, and the cgroups go once the pools are gone; without them (here: before they are made)
    each pool and its session's autogroup run at the nice value of its weight."""
    from stack import priority
    from stack.topology import make_ctx
    ctx = make_ctx("split", {"MES_STACK_DIR": str(tmp_path / "stack")})
    weights = {pool: ctx.vars["mes_pools"][pool]["cpu_weight"] for pool in ("operator", "public")}
    assert weights["operator"] > weights["public"]
    assert priority.nice(ctx, "operator") < priority.nice(ctx, "public")

    for pool in ("operator", "public"):
        (tmp_path / pool).mkdir()
        niced = Gunicorn(pool, backend, tmp_path / pool, launcher=tuple(priority.launcher(ctx, pool)))
        try:
            for pid in gunicorn_processes(niced.proc.pid, 3):
                assert nice_of(pid) == os.nice(0) + priority.nice(ctx, pool), pool
                if autogroup_nice(pid) is not None:  # in an autogroup: the session's group is niced too
                    assert autogroup_nice(pid) == priority.nice(ctx, pool), pool
        finally:
            niced.stop()

    found = priority.cpu_hierarchy()
    made = priority.ensure(ctx)
    assert made == (found is not None and os.access(found[1], os.W_OK))
    if not made:
        return  # no writable cgroups here: the pools are niced, as above
    version, mount = found
    groups = priority.groups(ctx, mount)
    servers: dict[str, Gunicorn] = {}
    try:
        for pool in ("operator", "public"):
            servers[pool] = Gunicorn(pool, backend, tmp_path, launcher=tuple(priority.launcher(ctx, pool)))
        for pool, server in servers.items():
            weight = (groups[pool] / ("cpu.weight" if version == 2 else "cpu.shares")).read_text().strip()
            assert weight == str(weights[pool] if version == 2 else weights[pool] * 1024 // 100)
            for pid in gunicorn_processes(server.proc.pid, 3):
                assert cpu_cgroup(pid, version) == "/" + str(groups[pool].relative_to(mount)), pool
        priority.remove(ctx)  # busy: nothing is removed
        assert all(group.is_dir() for group in groups.values())
    finally:
        for server in servers.values():
            server.stop()
    priority.remove(ctx)
    assert not any(group.exists() for group in groups.values())
