"""The production topology on this machine, started once for this module exactly as `make up` does
(in a temporary folder, on free ports): primary + replica, Pgpool-II, Redis, two gunicorn instances
per pool, HAProxy, Prometheus and the exporters. Real requests, real failures."""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import re
import signal
import socket
import ssl
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from stack.base import wait_until
from mes.testing.otlp import OtlpReceiver
from stackutil import (GROUP_VARS, ROOT, Stack, api, cpu_cgroup, create, gunicorn_processes, late_reason, nice_of,
                       running_stack, stack_cli)

pytestmark = pytest.mark.topology


@pytest.fixture(scope="module")
def traces():
    """The OTLP receiver that the stack's app instances export their spans to."""
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def stack(traces):
    with running_stack({"MES_OTLP_ENDPOINT": traces.endpoint}) as running:
        yield running


def test_every_component_answers(stack):
    r = stack_cli(stack.env, "status")
    assert r.returncode == 0, r.stdout
    lines = r.stdout.splitlines()
    for name in ("pg0", "pg1", "pgpool", "redis", "operator1", "operator2", "public1", "public2", "scheduler",
                 "webhooks", "crmdb", "crmguard", "haproxy", "prometheus"):
        assert any(line.split()[0] == name and " UP " in line for line in lines), r.stdout


def test_the_scheduler_runs_every_job(stack):
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        jobs = stack.mes("jobs")
        if jobs.count("; ok at") == 6:
            break
        time.sleep(2)
    assert jobs.count("; ok at") == 6, jobs
    assert "recompute-promises: next" in jobs and "open orders" in jobs


def test_a_hold_and_a_status_change_reach_the_feed_with_the_promise_they_leave(stack):
    partner = stack.new_key("split-promise")
    order = create(stack, partner, "PROM-1")
    assert order["promise_status"] in ("on_track", "at_risk") and order["estimated_completion"]
    s = requests.Session()
    # As a browser does (Referrer-Policy: same-origin): over HTTPS the CSRF check wants a same-origin Referer.
    s.headers["Referer"] = f"{stack.operator}/operator/"
    page = s.get(f"{stack.operator}/operator/login", timeout=10).text
    token = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    s.post(f"{stack.operator}/operator/login", data={"login": "demo", "password": "demo-pass", "csrf_token": token},
           timeout=10)
    html = s.get(f"{stack.operator}/operator/orders/{order['id']}", timeout=10).text
    token = html.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    code = re.search(r'<select name="reason_code"[^>]*>\s*<option value="">[^<]*</option>\s*<option value="(\d+)"',
                     html).group(1)  # the first hold reason
    html = s.post(f"{stack.operator}/operator/orders/{order['id']}/hold",
                  data={"csrf_token": token, "reason_code": code, "version": "1"}, timeout=10).text
    assert 'id="hold-badge"' in html
    r = requests.post(f"{stack.public}/api/v1/orders/{order['id']}/cancel", json={"reason": "no longer needed"},
                      headers=partner, timeout=10)
    assert r.status_code == 200, r.text
    deadline, mine = time.monotonic() + 15, []
    while len(mine) < 3 and time.monotonic() < deadline:  # the feed is read on the replica
        items = requests.get(f"{stack.public}/api/v1/status-changes?limit=200", headers=partner,
                             timeout=10).json()["items"]
        mine = [i for i in items if i["order_id"] == order["id"]]
        time.sleep(0.3)
    assert [i["type"] for i in mine] == ["status", "hold", "status"]
    assert mine[0]["promise_status"] == order["promise_status"]
    assert mine[1]["previous_promise_status"] == order["promise_status"] and mine[1]["estimated_completion"]
    assert (mine[2]["to_status"], mine[2]["promise_status"], mine[2]["estimated_completion"]) == (
        "cancelled", None, None)


def test_writes_go_to_the_primary_and_reads_to_the_replica(stack):
    from stack import dbtier
    key = stack.new_key("split-rw")
    before = {n["node_id"]: int(n["select_cnt"]) for n in dbtier.pool_nodes(stack.ctx)}
    order = create(stack, key, "RW-1")
    for _ in range(40):
        assert api(stack, "GET", "/orders?limit=5", key).status_code == 200
    after = {n["node_id"]: int(n["select_cnt"]) for n in dbtier.pool_nodes(stack.ctx)}
    roles = {n["node_id"]: n["role"] for n in dbtier.pool_nodes(stack.ctx)}
    standby = next(i for i, role in roles.items() if role == "standby")
    primary = next(i for i, role in roles.items() if role == "primary")
    assert after[standby] - before[standby] >= 40  # the public pool's reads
    primary_row = dbtier.psql(stack.ctx, dbtier.primary_node(stack.ctx),
                              f"SELECT status FROM orders WHERE id = {order['id']}", db=GROUP_VARS["pg_database"])
    assert primary_row.strip() == "received"
    assert after[primary] >= before[primary]


def test_status_reads_are_never_stale_while_the_replica_lags(stack):
    from stack import dbtier
    partner, crm = stack.new_key("split-lag"), stack.new_key("split-crm", tier="crm", scope="crm")
    order = create(stack, partner, "LAG-1")
    time.sleep(1)  # let the replica have the new order
    dbtier.pause_replay(stack.ctx)
    try:
        r = api(stack, "POST", f"/orders/{order['id']}/cancel", partner, json={"reason": "lag test"})
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        replica = next(n for n in stack.ctx.vars["mes_topology"]["pg_nodes"]
                       if n["name"] != dbtier.primary_node(stack.ctx)["name"])
        on_replica = dbtier.psql(stack.ctx, replica, f"SELECT status FROM orders WHERE id = {order['id']}",
                                 db=GROUP_VARS["pg_database"]).strip()
        assert on_replica == "received"  # the replica really lags
        for headers in (partner, crm):  # the cache serves every reader, not only the writer
            r = api(stack, "GET", f"/orders/{order['id']}/status", headers)
            assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        r = api(stack, "GET", f"/orders/{order['id']}", partner)  # read-your-writes for the writer
        assert r.json()["status"] == "cancelled"
        # A cache miss is filled from the primary, never from the lagging replica.
        stack.redis().delete(f"mes:status:{order['id']}")
        r = api(stack, "GET", f"/orders/{order['id']}/status", crm)
        assert r.json()["status"] == "cancelled"
    finally:
        dbtier.resume_replay(stack.ctx)


def test_operator_sees_own_claim_and_changes_at_once(stack):
    """The operator pool reads the replica too; after a write the operator's next page must show it."""
    from stack import dbtier
    partner = stack.new_key("split-op")
    order = create(stack, partner, "OP-1")
    s = requests.Session()
    # As a browser does (Referrer-Policy: same-origin): over HTTPS the CSRF check wants a same-origin Referer.
    s.headers["Referer"] = f"{stack.operator}/operator/"
    page = s.get(f"{stack.operator}/operator/login", timeout=10).text
    token = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    r = s.post(f"{stack.operator}/operator/login", data={"login": "demo", "password": "demo-pass",
                                                         "csrf_token": token}, timeout=10)
    assert r.status_code == 200 and "Orders queue" in r.text
    time.sleep(1)
    dbtier.pause_replay(stack.ctx)
    try:
        html = s.get(f"{stack.operator}/operator/orders/{order['id']}", timeout=10).text
        token = html.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
        html = s.post(f"{stack.operator}/operator/orders/{order['id']}/claim", data={"csrf_token": token},
                      timeout=10).text
        assert "You hold order" in html and "Release" in html
        html = s.post(f"{stack.operator}/operator/orders/{order['id']}/status",
                      data={"csrf_token": token, "target": "queued", "version": "1", **late_reason(html)},
                      timeout=10).text
        assert "is now queued" in html and '<span class="badge" id="status">queued</span>' in html
    finally:
        dbtier.resume_replay(stack.ctx)


def operator_session(stack: Stack, login: str = "demo", password: str = "demo-pass") -> requests.Session:
    """A logged-in operator's browser session on the operator frontend."""
    s = requests.Session()
    # As a browser does (Referrer-Policy: same-origin): over HTTPS the CSRF check wants a same-origin Referer.
    s.headers["Referer"] = f"{stack.operator}/operator/"
    page = s.get(f"{stack.operator}/operator/login", timeout=10).text
    token = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    r = s.post(f"{stack.operator}/operator/login", data={"login": login, "password": password,
                                                         "csrf_token": token}, timeout=10)
    assert r.status_code == 200 and "Orders queue" in r.text
    return s


class HeldRowLock:
    """A transaction on the primary that holds one row of the status counter locked until released,
    so that a status change writes its event and then waits before it can commit."""

    def __init__(self, stack: Stack, status: str):
        from stack import dbtier
        from stack.base import as_user
        node = dbtier.primary_node(stack.ctx)
        argv = [dbtier._bin(stack.ctx, "psql"), "-X", "-q", "-At", "-h", str(dbtier.socket_dir(node)),
                "-p", str(node["port"]), "-U", dbtier.SUPERUSER, "-d", GROUP_VARS["pg_database"]]
        self.proc = subprocess.Popen(as_user(argv, dbtier.PG_USER), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.proc.stdin.write(f"BEGIN;\nSELECT 'locked' FROM status_counts WHERE status = '{status}' FOR UPDATE;\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.communicate("ROLLBACK;\n", timeout=30)


def test_the_feed_on_the_replica_skips_no_late_commit(stack):
    """A's change takes the lower event id and commits last; B's commits first. The CRM polls the feed
    (always on the replica) while A is open, again while the replica has not replayed A's commit, then
    after: it gets both changes, once each. A cursor that moved past A would have lost it for good."""
    from stack import dbtier
    partner, crm = stack.new_key("feed-late"), stack.new_key("feed-crm", tier="crm", scope="crm")
    order_a, order_b = create(stack, partner, "LATE-A")["id"], create(stack, partner, "LATE-B")["id"]
    s = operator_session(stack)
    page = s.get(f"{stack.operator}/operator/orders/{order_b}", timeout=10).text
    token = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    html = s.post(f"{stack.operator}/operator/orders/{order_b}/status",
                  data={"csrf_token": token, "target": "queued", "version": "1", **late_reason(page)}, timeout=10).text
    assert "is now queued" in html

    def poll(cursor: str | None) -> tuple[list, str]:
        page = api(stack, "GET", "/status-changes?limit=500" + (f"&after={cursor}" if cursor else ""), crm).json()
        return [(e["order_id"], e["to_status"]) for e in page["items"]], page["next_cursor"]

    cursor = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # up to date with everything so far (the demo's history too), on the replica
        items, cursor = poll(cursor)
        if (order_b, "queued") in items:
            break
        if not items:
            time.sleep(0.2)
    delivered = []
    before = {n["role"]: int(n["select_cnt"]) for n in dbtier.pool_nodes(stack.ctx)}
    lock = HeldRowLock(stack, "received")  # A (received -> cancelled) writes its event, then waits here
    with ThreadPoolExecutor(1) as pool:
        try:
            cancel_a = pool.submit(api, stack, "POST", f"/orders/{order_a}/cancel", partner, json={})
            time.sleep(1)  # A's event row exists, uncommitted
            r = api(stack, "POST", f"/orders/{order_b}/cancel", partner, json={})  # queued -> cancelled
            assert r.status_code == 200, r.text
            time.sleep(2)  # B's commit is on the replica, older than any settle window
            for _ in range(3):
                items, cursor = poll(cursor)
                delivered += items
            dbtier.pause_replay(stack.ctx)
        finally:
            lock.release()
        try:
            assert cancel_a.result(30).status_code == 200
            items, cursor = poll(cursor)  # A committed on the primary, not replayed yet
            delivered += items
        finally:
            dbtier.resume_replay(stack.ctx)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(delivered) < 2:
        items, cursor = poll(cursor)
        delivered += items
        time.sleep(0.2)
    after = {n["role"]: int(n["select_cnt"]) for n in dbtier.pool_nodes(stack.ctx)}
    assert sorted(delivered) == sorted([(order_a, "cancelled"), (order_b, "cancelled")]), delivered
    assert after["standby"] - before["standby"] >= 5  # the polls read the replica


def test_the_stick_table_answers_429_before_the_app(stack):
    """Over the per-key rate, HAProxy refuses the key before any app worker is involved. The flood uses
    a path HAProxy answers itself (404), which the key's counter also counts, so it is fast enough to
    cross the limit within the 10 s window even on a busy machine."""
    key, other = stack.new_key("split-flood", tier="crm", scope="crm"), stack.new_key("split-calm")
    limit = GROUP_VARS["haproxy_key_rate_limit"]
    with requests.Session() as s:
        flood = [s.get(f"{stack.public}/not-an-api-path", headers=key, timeout=10).status_code
                 for _ in range(limit + 10)]
        refused = s.get(f"{stack.public}/api/v1/orders?limit=1", headers=key, timeout=10)
        calm = s.get(f"{stack.public}/api/v1/orders?limit=1", headers=other, timeout=10)
    assert flood[0] == 404 and flood[-1] == 429, flood[-20:]
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert "RateLimit-Limit" not in refused.headers  # HAProxy answered: the app never saw it
    body = json.loads(refused.text)
    assert body["status"] == 429 and "key-rate" in body["detail"]
    assert calm.status_code == 200  # another key from the same address is not affected


def test_flask_limiter_answers_429_with_ratelimit_headers(stack, one_rate_window):
    key = stack.new_key("split-trial", tier="trial")
    limit = int(GROUP_VARS["mes_rate_limits"]["trial"].split("/")[0])
    with requests.Session() as s:
        answers = [s.get(f"{stack.public}/api/v1/orders?limit=1", headers=key, timeout=10) for _ in range(limit + 1)]
    assert [r.status_code for r in answers[:limit]] == [200] * limit
    last = answers[-1]
    assert last.status_code == 429 and last.headers["RateLimit-Limit"] == str(limit)
    assert last.headers["RateLimit-Remaining"] == "0" and int(last.headers["Retry-After"]) > 0
    assert last.json()["type"] == "/problems/rate-limited"


def test_public_frontend_never_reaches_operator_routes(stack):
    for path in ("/operator/", "/operator/login", "//operator/login", "/api/v1/../../operator/login",
                 "/%2e%2e/operator/login", "/api/v1/%2e%2e/%2e%2e/operator/login", "/metrics",
                 "/api/v1/%2e%2e/%2e%2e/metrics", "/OPERATOR/login", "/api/v1/..%2f..%2foperator/login"):
        r = requests.get(f"{stack.public}{path}", timeout=10, allow_redirects=False)
        assert r.status_code in (400, 403, 404), (path, r.status_code)
        assert "Operator login" not in r.text and "flask_http_request" not in r.text, path


def _tls() -> ssl.SSLContext:
    """A client context that trusts the running stack's CA only (running_stack sets REQUESTS_CA_BUNDLE)."""
    return ssl.create_default_context(cafile=os.environ["REQUESTS_CA_BUNDLE"])


def _raw(port: int, data: bytes, source: str = "127.0.0.1", wait: float = 15, tls: bool = True) -> tuple[bytes, float]:
    """Send raw bytes to HAProxy on 127.0.0.1 (from `source`, another loopback address when a test needs
    a second client), over TLS unless `tls` is false, and read until the connection closes; returns the
    answer and the seconds it took (the handshake included)."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack_:
        s = stack_.enter_context(socket.create_connection(("127.0.0.1", port), timeout=wait,
                                                          source_address=(source, 0)))
        if tls:
            s = stack_.enter_context(_tls().wrap_socket(s, server_hostname="127.0.0.1"))
        s.sendall(data)
        answer = b""
        with contextlib.suppress(socket.timeout, ConnectionResetError, ssl.SSLEOFError):
            while chunk := s.recv(65536):
                answer += chunk
    return answer, time.monotonic() - started


def _problem(answer: bytes) -> tuple[int, dict, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_haproxys_and_gunicorns_own_errors_are_problem_json_with_the_request_id(stack):
    """400 (gunicorn refusing a lowercase method), 408 (a body that never comes), 414, 431 on the public
    frontend: problem+json with the request id; the operator frontend answers the same with a page."""
    public = _port(stack.public)
    cases = {
        400: b"get /api/v1/orders HTTP/1.1\r\nHost: mes\r\nConnection: close\r\nX-Request-ID: edge-400\r\n\r\n",
        408: b"POST /api/v1/orders HTTP/1.1\r\nHost: mes\r\nX-Request-ID: edge-408\r\nContent-Type: application/json"
             b"\r\nContent-Length: 100\r\n\r\n{\"reference\":",
        414: b"GET /api/v1/orders?cursor=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: mes\r\nConnection: close\r\n"
             b"X-Request-ID: edge-414\r\n\r\n",
        431: b"GET /api/v1/orders HTTP/1.1\r\nHost: mes\r\nConnection: close\r\nX-Request-ID: edge-431\r\n"
             b"X-Big: " + b"b" * 9000 + b"\r\n\r\n",
    }
    timeout = float(GROUP_VARS["haproxy_timeout_http_request"].rstrip("s"))
    for status, request in cases.items():
        answer, seconds = _raw(public, request)
        got, headers, body = _problem(answer)
        assert got == status, answer[:300]
        assert headers["content-type"] == "application/problem+json", (status, headers)
        assert body["status"] == status and body["request_id"] == f"edge-{status}", body
        assert headers["x-request-id"] == f"edge-{status}"
        assert seconds < (timeout + 3 if status == 408 else 3), (status, seconds)
    page = requests.get(f"{stack.operator}/operator/{'a' * 5000}", headers={"X-Request-ID": "edge-op"}, timeout=10)
    assert page.status_code == 414 and page.headers["Content-Type"].startswith("text/html")
    assert "edge-op" in page.text


def test_one_address_cannot_lock_operators_out_with_idle_connections(stack):
    """600 idle connections from one address (more than the operator frontend's maxconn): the address
    keeps only its share, another address's operator is served at once, idle ones are closed soon."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    operator = _port(stack.operator)
    idle, closed = [], 0
    try:
        for _ in range(600):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", operator))
            except ConnectionResetError:  # refused so fast that the handshake's end met the reset
                closed += 1
                s.close()
                continue
            idle.append(s)
        started = time.monotonic()
        r = requests.get(f"{stack.operator}/operator/login", timeout=30)
        assert r.status_code == 200 and time.monotonic() - started < 2, time.monotonic() - started
        for s in idle:
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                try:
                    closed += s.recv(1) == b""
                except ConnectionResetError:
                    closed += 1
        assert closed >= 600 - GROUP_VARS["haproxy_operator_src_conn_limit"] - 5, closed
    finally:
        for s in idle:
            s.close()
    # An idle connection on either frontend is closed after timeout http-request.
    timeout = float(GROUP_VARS["haproxy_timeout_http_request"].rstrip("s"))
    for port in (operator, _port(stack.public)):
        _, seconds = _raw(port, b"GET /healthz/live HTTP/1.1\r\nHost: mes\r\n", source="127.0.0.4", wait=30)
        assert seconds < timeout + 2, (port, seconds)


def test_header_variants_share_one_key_in_the_stick_table(stack):
    """Every Authorization form the app accepts is one key to HAProxy's per-key limit."""
    calm = stack.new_key("variants-calm")["Authorization"].split()[1]
    variants = ["Bearer {}", "bearer {}", "BEARER\t{}", "Bearer   {}", "Bearer \t {}"]
    for form in variants:  # the app takes each of them
        r = requests.get(f"{stack.public}/api/v1/orders?limit=1", headers={"Authorization": form.format(calm)},
                         timeout=10)
        assert r.status_code == 200, (form, r.text)
    key = stack.new_key("variants-flood", tier="crm", scope="crm")["Authorization"].split()[1]
    limit = GROUP_VARS["haproxy_key_rate_limit"]
    # From an address of its own, so that the source-rate limit of 127.0.0.1 stays out of it.
    conn = http.client.HTTPSConnection("127.0.0.1", _port(stack.public), timeout=10, source_address=("127.0.0.3", 0),
                                       context=_tls())
    statuses = []
    for i in range(limit + 10):
        conn.request("GET", "/not-an-api-path", headers={"Authorization": variants[i % len(variants)].format(key)})
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
    assert statuses[0] == 404 and statuses[-len(variants):] == [429] * len(variants), statuses[-20:]


def test_no_log_holds_a_key_and_every_log_is_private_to_its_service(stack):
    key = stack.new_key("logs")
    secret = key["Authorization"].split()[1]
    requests.get(f"{stack.public}/api/v1/orders?limit=1&api_key={secret}", headers=key, timeout=10)
    requests.get(f"{stack.public}/api/v1/orders?token={secret}", headers={"Authorization": f"Bearer\t{secret}x"},
                 timeout=10)
    time.sleep(1)
    logs = stack.state / "logs"
    assert stat.S_IMODE(logs.stat().st_mode) == 0o750
    for path in logs.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
        assert secret not in path.read_text(errors="replace"), path
    assert (logs / "redis.log").stat().st_uid == pwd.getpwnam("redis").pw_uid
    assert (logs / "pg0.log").stat().st_uid == pwd.getpwnam("postgres").pw_uid


def test_operator_frontend_stays_fast_while_the_public_pool_is_stalled(stack):
    """Both public instances hang (SIGSTOP): partners queue and get 503 + Retry-After, operators do not notice."""
    key = stack.new_key("split-stall", tier="bulk")
    for name in ("public1", "public2"):
        stack.signal_group(name, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(requests.get, f"{stack.public}/api/v1/orders?limit=1", headers=key, timeout=20)
                       for _ in range(24)]
            time.sleep(1)
            started = time.monotonic()
            for _ in range(10):
                r = requests.get(f"{stack.operator}/operator/login", timeout=5)
                assert r.status_code == 200
            operator_seconds = (time.monotonic() - started) / 10
            shed = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and len(shed) < 5:
                shed = [f.result() for f in futures if f.done() and not f.exception()]
                time.sleep(0.2)
    finally:
        for name in ("public1", "public2"):
            stack.signal_group(name, signal.SIGCONT)
    overloaded = [r for r in shed if r.status_code == 503]
    assert overloaded, [r.status_code for r in shed]
    assert int(overloaded[0].headers["Retry-After"]) > 0
    assert overloaded[0].headers["Content-Type"].startswith("application/problem+json")
    assert operator_seconds < 1.0  # a sanity bound, far above normal; the benchmark measures for real
    metrics = requests.get(f"{stack.stats}/metrics", auth=stack.monitoring, timeout=10).text
    assert any(line.startswith("haproxy_backend_max_queue{") and 'proxy="public"' in line
               and not line.endswith(" 0") for line in metrics.splitlines())


def test_prometheus_scrapes_every_target_and_the_app_metrics(stack):
    # One request per pool, so that their request counters exist also when this test runs alone.
    requests.get(f"{stack.operator}/operator/login", timeout=10)
    requests.get(f"{stack.public}/api/v1/orders", timeout=10)
    deadline = time.monotonic() + 60
    targets = []
    while time.monotonic() < deadline:
        targets = requests.get(f"{stack.prometheus}/api/v1/targets", auth=stack.monitoring,
                               timeout=10).json()["data"]["activeTargets"]
        if targets and all(t["health"] == "up" for t in targets):
            break
        time.sleep(1)
    assert targets and all(t["health"] == "up" for t in targets), [(t["scrapePool"], t["health"],
                                                                     t.get("lastError")) for t in targets]
    jobs = {t["labels"]["job"] for t in targets}
    assert {"haproxy", "mes_operator", "mes_public", "webhooks", "postgres", "redis", "node"} <= jobs
    pools: set = set()
    while time.monotonic() < deadline and not {"operator", "public"} <= pools:  # the next scrape may be due
        pools = {r["metric"].get("pool") for r in prometheus_query(stack, "sum by (pool) (flask_http_request_total)")}
        time.sleep(1)
    assert {"operator", "public"} <= pools
    for metric in ("mes_orders_received_total", "mes_orders_overdue", "haproxy_backend_current_queue"):
        result = requests.get(f"{stack.prometheus}/api/v1/query", params={"query": metric}, auth=stack.monitoring,
                              timeout=10).json()
        assert result["data"]["result"], metric


def prometheus_query(stack: Stack, expr: str) -> list[dict]:
    answer = requests.get(f"{stack.prometheus}/api/v1/query", params={"query": expr}, auth=stack.monitoring,
                          timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def test_the_promise_series_and_the_promise_dashboard_answer_after_an_order_ships(stack):
    """An order created through the public API and moved to shipped on the operator frontend: the app's
    counter and lead-time histogram, postgres_exporter's mes_flow_*/mes_promise_* series (the exporters read
    the MES database with the grants `mes migrate` gave them), the settings rendered from group_vars, and
    every query of the MES promise dashboard (monitoring/dashboards/mes-promise.json) answers."""
    order = create(stack, stack.new_key("promise"), "PROMISE-1")
    # Both operator instances' counters scraped at 0 first (increase() ignores a series' first value).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(prometheus_query(
            stack, 'mes_orders_shipped_total{job="mes_operator", promise="met"} == 0')) < 2:
        time.sleep(1)
    s = operator_session(stack)
    page = f"{stack.operator}/operator/orders/{order['id']}"
    token = s.get(page, timeout=10).text.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    html = s.post(f"{page}/claim", data={"csrf_token": token}, timeout=10).text
    assert "You hold order" in html
    for version, target in enumerate(["queued", "in_production", "quality_check", "packed"], start=1):
        html = s.post(f"{page}/status", data={"csrf_token": token, "target": target, "version": str(version),
                                              **late_reason(html)}, timeout=10).text
        assert f"is now {target.replace('_', ' ')}" in html
    form = s.get(f"{page}/ship", timeout=10).text  # the shipment form (it asks for a late reason if one is due)
    html = s.post(f"{page}/ship", data={"csrf_token": token, "version": "5", "carrier": "DHL", "packages": "1",
                                        "quantity": str(order["quantity"]), **late_reason(form)}, timeout=10).text
    assert f"Order {order['id']} shipped" in html

    stages = {"received", "queued", "in_production", "quality_check", "packed"}
    expected = {  # query -> what must be in its answer
        'sum(mes_orders_shipped_total{job="mes_operator", promise="met"})': lambda r: float(r[0]["value"][1]) >= 1,
        'sum(mes_order_lead_time_days_count{job="mes_operator"})': lambda r: float(r[0]["value"][1]) >= 1,
        'sum(mes_order_lead_time_days_bucket{job="mes_operator", le="3.0"})': lambda r: float(r[0]["value"][1]) >= 1,
        "stage:mes_flow_wip:primary": lambda r: {x["metric"]["stage"] for x in r} == stages,
        'count by (node) (mes_flow_oldest_age_seconds{job="postgres"})':  # both nodes answer, five stages each
            lambda r: sorted(float(x["value"][1]) for x in r) == [5, 5],
        "stage:mes_flow_oldest_unheld_age_seconds:primary": lambda r: len(r) == 5,
        "stage:mes_flow_at_risk:primary": lambda r: len(r) == 5,
        "stage:mes_flow_late:primary": lambda r: len(r) == 5,
        "reason:mes_flow_hold_orders:primary": lambda r: {"machine_down", "other"} <= {x["metric"]["reason"] for x in r},
        "promise:mes_promise_open_orders:primary":
            lambda r: {x["metric"]["promise"] for x in r} == {"on_track", "at_risk", "late", "unknown"},
        "mes:promise_shipped:30d": lambda r: float(r[0]["value"][1]) >= 1,
        "mes:promise_on_time_ratio:30d": lambda r: 0 <= float(r[0]["value"][1]) <= 1,
        "mes:promise_slo_target": lambda r: float(r[0]["value"][1]) == GROUP_VARS["mes_promise_slo_target"],
        "mes:flow_age_limit_seconds": lambda r: len(r) == 5,
        "mes:orders_shipped:increase1d": lambda r: float(r[0]["value"][1]) > 0,
    }
    # The recording rules of the burn rates run every minute, the exporters' queries are cached up to one.
    deadline, missing = time.monotonic() + 180, dict(expected)
    while missing and time.monotonic() < deadline:
        for expr, ok in list(missing.items()):
            result = prometheus_query(stack, expr)
            if result and ok(result):
                del missing[expr]
        time.sleep(3)
    assert not missing, {expr: prometheus_query(stack, expr) for expr in missing}
    assert not prometheus_query(stack, 'ALERTS{alertname=~"MesPromise(Metrics|Settings)Missing"}')

    dashboard = json.loads((ROOT / "monitoring" / "dashboards" / "mes-promise.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 20
    empty = []
    for expr in exprs:
        if not prometheus_query(stack, expr.replace("$window", "1d").replace("$__rate_interval", "1m")):
            empty.append(expr)
    # Right after the start nothing is a day old and maybe no promise alert fires; everything else has data.
    assert set(empty) <= {'sum(promise:mes_promise_open_orders:primary{promise="at_risk"} offset 1d)',
                          'ALERTS{alertstate="firing", component="promise"}'}, empty


def test_a_killed_instance_is_taken_out_and_requests_keep_succeeding(stack):
    key = stack.new_key("split-kill", tier="bulk")
    victim = stack.pid("public1")
    stack.signal_group("public1", signal.SIGKILL)
    codes = []
    with requests.Session() as s:
        for _ in range(60):
            codes.append(s.get(f"{stack.public}/api/v1/orders?limit=1", headers=key, timeout=10).status_code)
            time.sleep(0.05)
    assert codes.count(200) == len(codes), codes
    deadline, state = time.monotonic() + 10, None
    while time.monotonic() < deadline:
        metrics = requests.get(f"{stack.stats}/metrics", auth=stack.monitoring, timeout=10).text
        state = [line for line in metrics.splitlines()
                 if line.startswith("haproxy_server_status{") and 'server="public1"' in line and 'state="DOWN"' in line]
        if state and state[0].endswith(" 1"):
            break
        time.sleep(0.5)
    assert state and state[0].endswith(" 1"), state
    # `make up` again brings back exactly what is missing.
    r = stack_cli(stack.env, "up")
    assert r.returncode == 0, r.stdout + r.stderr
    assert stack.pid("public1") not in (None, victim)


def test_make_up_twice_is_harmless(stack):
    names = ["pg0", "pg1", "pgpool", "redis", "operator1", "public2", "haproxy", "prometheus"]
    before = {n: stack.pid(n) for n in names}
    r = stack_cli(stack.env, "up")
    assert r.returncode == 0, r.stdout + r.stderr
    assert {n: stack.pid(n) for n in names} == before
    assert "operator login: demo / demo-pass" in r.stdout


def test_a_point_in_time_restore_has_what_was_committed_before_the_target_only(stack):
    """pgBackRest: a full backup, an order, the target time, another order; the restore to the target
    on a fresh folder (a host that never ran this database) has the first order and not the second."""
    import datetime
    import subprocess

    from mes.testing.postgres import free_port
    from stack import backup, dbtier

    key = stack.new_key("pitr")
    backup.backup(stack.ctx, "full")
    time.sleep(1.5)  # pgBackRest records the backup's stop time in whole seconds
    before = create(stack, key, "PITR-BEFORE")
    primary = dbtier.primary_node(stack.ctx)
    target = dbtier.psql(stack.ctx, primary, "SELECT clock_timestamp()")
    time.sleep(1)
    after = create(stack, key, "PITR-AFTER")
    dbtier.psql(stack.ctx, primary, "SELECT pg_switch_wal()")  # the WAL past the target reaches the archive
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not dbtier.psql(
            stack.ctx, primary, "SELECT last_archived_wal >= pg_walfile_name(pg_current_wal_lsn() - 1) "
                                "FROM pg_stat_archiver") == "t":
        time.sleep(0.5)

    work = stack.state / "pitr"  # a folder the postgres user can reach (removed with the stack)
    work.mkdir(mode=0o755)
    subprocess.run(["chown", "postgres:postgres", str(work)], check=True)
    dest = work / "restored"
    backup.restore_to_point_in_time(stack.ctx, dest, target)
    sockets = work / "run"
    sockets.mkdir()
    subprocess.run(["chown", "postgres:postgres", str(sockets)], check=True)
    port = free_port()
    bindir = stack.ctx.vars["mes_topology"]["pg_bindir"]
    server = [f"{bindir}/pg_ctl", "-D", str(dest), "-w", "-t", "120", "-l", str(work / "restored.log"), "-o",
              f"-c port={port} -c listen_addresses='' -c unix_socket_directories={sockets} -c archive_mode=off "
              f"-c max_connections={GROUP_VARS['pg_max_connections']} "
              f"-c hba_file={dest}/pg_hba.conf -c ident_file={dest}/pg_ident.conf"]
    started = subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--",
                              *server[:1], "start", *server[1:]], cwd="/", capture_output=True, text=True)
    log = work / "restored.log"
    assert started.returncode == 0, started.stderr + (log.read_text()[-3000:] if log.exists() else "")
    try:
        node = {"name": "restored", "port": port, "socket_dir": str(sockets)}
        deadline = time.monotonic() + 60
        while dbtier._try_psql(stack.ctx, node, "SELECT pg_is_in_recovery()") != "f" and time.monotonic() < deadline:
            time.sleep(0.5)
        found = dbtier.psql(stack.ctx, node, "SELECT reference FROM orders WHERE reference LIKE 'PITR-%' "
                                             "ORDER BY reference", db=GROUP_VARS["pg_database"])
        assert found.split() == ["PITR-BEFORE"], (found, before["id"], after["id"], target)
    finally:
        subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", server[0],
                        "stop", "-D", str(dest), "-m", "fast", "-w"], cwd="/", capture_output=True)


def _redis(stack: Stack):
    return stack.redis(decode_responses=True)


def test_a_hung_redis_under_load_costs_no_request_more_than_the_timeout(stack):
    """SIGSTOP of Redis: the cache, the limiter and read-your-writes all meet it; every answer is a success,
    none waits much longer than one Redis timeout (redis-py's default retries made it 10 s and more)."""
    keys = [stack.new_key(f"hung-{i}", tier="bulk") for i in range(4)]
    orders = [create(stack, key, f"HUNG-{i}") for i, key in enumerate(keys)]
    stop = time.monotonic() + 6

    def traffic(i: int) -> list[tuple[int, float]]:
        seen, n = [], 0
        with requests.Session() as s:
            while time.monotonic() < stop:
                n += 1
                path = ["/orders?limit=5", f"/orders/{orders[i]['id']}", f"/orders/{orders[i]['id']}/status"][n % 3]
                started = time.monotonic()
                if n % 4 == 0:
                    r = s.post(f"{stack.public}/api/v1/orders", timeout=15, json={
                        "reference": f"HUNG-{i}-{n}", "product": "P", "material": "M", "quantity": 1},
                        headers={**keys[i], "Idempotency-Key": f"hung-{i}-{n}"})
                else:
                    r = s.get(f"{stack.public}/api/v1{path}", headers=keys[i], timeout=15)
                seen.append((r.status_code, time.monotonic() - started))
        return seen

    stack.signal_group("redis", signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(4) as pool:  # fewer clients than the pool has workers: no queueing
            seen = [answer for answers in pool.map(traffic, range(4)) for answer in answers]
    finally:
        stack.signal_group("redis", signal.SIGCONT)
    codes = {code for code, _ in seen}
    durations = sorted(duration for _, duration in seen)
    timeout, median, slowest = GROUP_VARS["mes_redis_timeout"], durations[len(durations) // 2], durations[-1]
    assert len(seen) > 40 and codes <= {200, 201}, (len(seen), codes)
    # The breaker spares most requests the wait altogether: after one timeout a process skips Redis for
    # its cool-down. The slowest request may have waited one timeout, and on two shared cores another
    # test's burst can add a second or two; redis-py's retries, which this guards against, cost 10 s.
    assert median < timeout, (median, slowest)
    assert slowest < timeout + 3.0, (median, slowest)


def test_a_reload_during_a_redis_outage_leaves_no_stale_status(stack):
    """The cancel's cache update fails while Redis hangs with the old entry inside; every worker is then
    replaced (SIGHUP to gunicorn) before Redis answers again: no process remembers what it missed."""
    partner = stack.new_key("reload-outage")
    orders = [create(stack, partner, f"RELOAD-{i}") for i in range(5)]
    for order in orders:
        assert api(stack, "GET", f"/orders/{order['id']}/status", partner).json()["status"] == "received"
    # Every entry in Redis first: on a loaded machine a put can miss the 0.25 s timeout, and then the
    # entry comes with the next settle (or a read's fill) instead.
    deadline = time.monotonic() + 20
    while not all(_redis(stack).hget(f"mes:status:{o['id']}", "d") for o in orders) and time.monotonic() < deadline:
        for order in orders:
            api(stack, "GET", f"/orders/{order['id']}/status", partner)
        time.sleep(0.5)
    assert all('"received"' in (_redis(stack).hget(f"mes:status:{o['id']}", "d") or "") for o in orders)
    stack.signal_group("redis", signal.SIGSTOP)
    try:
        for order in orders:
            r = api(stack, "POST", f"/orders/{order['id']}/cancel", partner, json={"reason": "outage"})
            assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        for name in ("public1", "public2"):
            os.kill(stack.pid(name), signal.SIGHUP)  # gunicorn: new workers, old ones leave
        time.sleep(3)
    finally:
        stack.signal_group("redis", signal.SIGCONT)
    assert all('"received"' in _redis(stack).hget(f"mes:status:{o['id']}", "d") for o in orders)  # still inside
    time.sleep(GROUP_VARS["mes_redis_cooldown"])
    for _ in range(4):  # through both instances and several workers
        for order in orders:
            r = api(stack, "GET", f"/orders/{order['id']}/status", partner)
            assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert all('"cancelled"' in _redis(stack).hget(f"mes:status:{o['id']}", "d") for o in orders)


def test_read_your_writes_with_a_paused_replay(stack):
    """The writer reads its order from the primary while the replica has not replayed it, and goes back
    to the replica (its marker forgotten) as soon as the replica has."""
    from stack import dbtier
    writer = stack.new_key("ryw-writer")
    markers_before = set(_redis(stack).scan_iter("mes:rw:*"))
    paused = dbtier.pause_replay(stack.ctx)
    replica = next(n for n in stack.ctx.vars["mes_topology"]["pg_nodes"] if n["name"] == paused[0])
    try:
        order = create(stack, writer, "RYW-1")
        marker = set(_redis(stack).scan_iter("mes:rw:*")) - markers_before
        assert len(marker) == 1, marker
        assert dbtier.psql(stack.ctx, replica, f"SELECT count(*) FROM orders WHERE id = {order['id']}",
                           db=GROUP_VARS["pg_database"]).strip() == "0"  # the replica really lags
        for _ in range(3):
            r = api(stack, "GET", f"/orders/{order['id']}", writer)
            assert r.status_code == 200 and r.json()["reference"] == "RYW-1", r.text
        assert _redis(stack).exists(*marker)  # not replayed: still routed
    finally:
        dbtier.resume_replay(stack.ctx)
    deadline = time.monotonic() + 15
    while _redis(stack).exists(*marker) and time.monotonic() < deadline:
        assert api(stack, "GET", f"/orders/{order['id']}", writer).status_code == 200
        time.sleep(0.2)
    assert not _redis(stack).exists(*marker), "the marker must be forgotten once the replica replayed the write"
    roles = {n["node_id"]: n["role"] for n in dbtier.pool_nodes(stack.ctx)}
    standby = next(i for i, role in roles.items() if role == "standby")
    before = {n["node_id"]: int(n["select_cnt"]) for n in dbtier.pool_nodes(stack.ctx)}
    for _ in range(20):
        assert api(stack, "GET", f"/orders/{order['id']}", writer).status_code == 200
    after = {n["node_id"]: int(n["select_cnt"]) for n in dbtier.pool_nodes(stack.ctx)}
    assert after[standby] - before[standby] >= 20  # the writer reads the replica again


def test_both_frontends_speak_tls_with_the_generated_ca_and_plain_http_serves_nothing(stack):
    """HTTPS on both frontends, verified against the CA that `up` made (and by nothing else); HSTS;
    plain HTTP redirects the operator UI and answers API calls with a problem+json, never with data."""
    key = stack.new_key("tls")
    for url in (f"{stack.public}/api/v1/orders?limit=1", f"{stack.operator}/operator/login"):
        r = requests.get(url, headers=key, timeout=10, verify=stack.ca)
        assert r.status_code == 200 and r.headers["Strict-Transport-Security"].startswith("max-age="), url
        with pytest.raises(requests.exceptions.SSLError):  # the public CAs do not vouch for it
            requests.get(url, headers=key, timeout=10, verify=requests.certs.where())
    with socket.create_connection(("127.0.0.1", _port(stack.public)), timeout=10) as raw, \
            _tls().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert ("IP Address", "127.0.0.1") in tls.getpeercert()["subjectAltName"]

    plain = requests.get(f"{stack.http}/api/v1/orders?limit=1", headers=key, timeout=10, allow_redirects=False)
    assert plain.status_code == 403 and plain.headers["Content-Type"] == "application/problem+json"
    problem = plain.json()
    assert problem["type"] == "/problems/https-required" and "rotate the key" in problem["detail"]
    assert "items" not in plain.text and plain.headers.get("X-Request-ID")
    for path in ("/", "/operator/login?next=%2Foperator%2F"):
        moved = requests.get(f"{stack.http}{path}", timeout=10, allow_redirects=False)
        assert moved.status_code == 301, path
        assert moved.headers["Location"] == f"{stack.operator}{path}", moved.headers["Location"]
    # Followed like a browser would, it ends on the login page, over HTTPS.
    assert "Operator login" in requests.get(f"{stack.http}/operator/login", timeout=10).text

    session = operator_session(stack)
    cookie = next(c for c in session.cookies if c.name.endswith("_session"))
    assert cookie.secure


def test_a_haproxy_reload_under_load_fails_no_request(stack):
    """`make up` after a configuration change reloads HAProxy (master-worker: new workers, the old ones
    finish their requests); clients on both frontends, on new and kept-alive connections, see no error."""
    from stack.services import HAProxy

    key = stack.new_key("reload", tier="crm", scope="crm")
    stop, failures, done = time.monotonic() + 8, [], []

    def client(url: str, keep_alive: bool) -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            try:
                r = (session if keep_alive else requests).get(url, headers=key, timeout=10)
                (done if r.status_code == 200 else failures).append(r.status_code)
            except requests.RequestException as err:
                failures.append(repr(err))
            time.sleep(0.01)

    master = stack.pid("haproxy")
    workers = set(subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split())
    urls = [f"{stack.public}/api/v1/orders?limit=1", f"{stack.operator}/healthz/ready"]
    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(client, url, keep_alive) for url in urls for keep_alive in (True, False)]
        for _ in range(2):
            time.sleep(2.5)
            HAProxy().reload(stack.ctx)
        for r in running:
            r.result()
    assert not failures and len(done) > 100, (failures[:5], len(done))
    assert stack.pid("haproxy") == master
    assert wait_until(lambda: not workers & set(subprocess.run(["pgrep", "-P", str(master)], capture_output=True,
                                                               text=True).stdout.split()), 30)


# --- the monitoring plane answers the monitoring user only -------------------------------------------

def assert_basic_auth_only(stack: Stack, method: str, url: str) -> requests.Response:
    """No credentials or a wrong password: 401 with a Basic challenge; the monitoring user's: 200."""
    user, password = stack.monitoring
    for auth in (None, (user, password + "x"), ("admin", password)):
        refused = requests.request(method, url, auth=auth, timeout=10, allow_redirects=False)
        assert refused.status_code == 401, (url, auth and auth[0], refused.status_code)
        assert refused.headers.get("WWW-Authenticate", "").startswith("Basic"), refused.headers
    allowed = requests.request(method, url, auth=stack.monitoring, timeout=10, allow_redirects=False)
    assert allowed.status_code == 200, (url, allowed.status_code, allowed.text[:300])
    return allowed


def test_prometheus_answers_the_monitoring_user_only_and_its_lifecycle_api_too(stack):
    for path in ("/-/ready", "/-/healthy", "/metrics", "/api/v1/status/buildinfo", "/api/v1/query?query=up",
                 "/api/v1/targets"):
        assert_basic_auth_only(stack, "GET", f"{stack.prometheus}{path}")
    pid = stack.pid("prometheus")
    for path in ("/-/quit", "/-/reload"):
        assert requests.post(f"{stack.prometheus}{path}", timeout=10).status_code == 401
    assert_basic_auth_only(stack, "POST", f"{stack.prometheus}/-/reload")
    time.sleep(1)
    assert stack.pid("prometheus") == pid
    assert requests.get(f"{stack.prometheus}/-/ready", auth=stack.monitoring, timeout=10).status_code == 200
    # Its self-scrape and the HAProxy scrapes send the credentials: those targets are up.
    up = prometheus_query(stack, 'up{job=~"prometheus|haproxy|haproxy_db"}')
    assert sorted((r["metric"]["job"], r["value"][1]) for r in up) == [
        ("haproxy", "1"), ("haproxy_db", "1"), ("prometheus", "1")], up


def test_haproxy_stats_pages_and_metrics_answer_the_monitoring_user_only(stack):
    db_stats = stack.ctx.vars["mes_topology"]["db_endpoints"]["stats_port"]
    for base in (stack.stats, f"http://127.0.0.1:{db_stats}"):
        page = assert_basic_auth_only(stack, "GET", f"{base}/stats")
        assert "Statistics Report" in page.text
        assert "haproxy_process_nbthread" in assert_basic_auth_only(stack, "GET", f"{base}/metrics").text
        assert_basic_auth_only(stack, "GET", f"{base}/stats;csv")


def test_prometheus_and_haproxy_stats_files_keep_a_hash_of_the_password_only(stack):
    """The servers' files hold a bcrypt hash; only Prometheus' own configuration, which it sends from,
    holds the password, and no other local user can read either."""
    password = stack.monitoring[1]
    topology = stack.ctx.vars["mes_topology"]
    prometheus_dir = topology["prometheus"]["dir"]
    for path in (f"{prometheus_dir}/web.yml", f"{topology['haproxy']['dir']}/haproxy.cfg",
                 f"{topology['db_endpoints']['dir']}/db.cfg"):
        text = open(path).read()
        assert password not in text and "$2b$" in text, path
    for path in (f"{prometheus_dir}/web.yml", f"{prometheus_dir}/prometheus.yml"):
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o007 == 0, path


# --- Redis' logins (ACL users of redis/redis.conf.j2) ------------------------------------------------

def test_the_app_was_never_refused_and_its_redis_user_may_do_nothing_else(stack):
    """ACL LOG holds every refusal since Redis started (a command, a key, a failed login): none of the
    app's while this module ran (so this runs before the wrong-password test). Then what the app never
    runs is refused, also from inside a script, and keys outside mes:* too."""
    import redis
    assert api(stack, "GET", "/orders?limit=1", stack.new_key("acl-limits")).status_code == 200
    assert list(stack.redis().scan_iter("mes:limits:*"))  # flask-limiter counts in Redis, under the app's keys
    app_user = stack.ctx.vars["redis_app_user"]
    refused = [(e["reason"], e["object"], e["count"]) for e in stack.redis().acl_log() if e["username"] == app_user]
    assert not refused, refused
    app = stack.redis("app")
    assert app.hget("mes:status:0", "d") is None  # let in: a miss, not a refusal
    for command in (["FLUSHALL"], ["CONFIG", "GET", "maxmemory"], ["KEYS", "mes:*"], ["SCAN", "0"],
                    ["ACL", "LIST"], ["SHUTDOWN"], ["GET", "other:key"]):
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.execute_command(*command)
    script = app.script_load("return redis.call('FLUSHALL')")  # the app loads scripts: they run as the app
    with pytest.raises(redis.ResponseError, match="can't run this command"):
        app.evalsha(script, 0)


def test_redis_refuses_a_client_that_does_not_log_in_or_has_a_wrong_password(stack):
    import redis
    t = stack.ctx.vars["mes_topology"]["redis"]
    with pytest.raises(redis.AuthenticationError, match="Authentication required"):  # NOAUTH
        redis.Redis(host=t["host"], port=t["port"], protocol=2, socket_timeout=5).ping()
    for user in (stack.ctx.vars["redis_app_user"], "default"):
        with pytest.raises(redis.AuthenticationError, match="invalid username-password pair"):
            redis.Redis(host=t["host"], port=t["port"], username=user, password="wrong", socket_timeout=5).ping()


def test_no_log_or_config_file_holds_a_redis_password(stack):
    passwords = [stack.ctx.vars["mes_secrets"][f"redis_{role}_password"]
                 for role in ("app", "exporter", "patroni", "admin")]
    config = Path(stack.ctx.vars["mes_topology"]["redis"]["dir"]) / "redis.conf"
    for path in [*(stack.state / "logs").iterdir(), config]:
        text = path.read_text(errors="replace")
        assert not [p for p in passwords if p in text], path
    assert "\nprotected-mode yes\n" in config.read_text()


def test_the_redis_exporter_logs_in(stack):
    t = stack.ctx.vars["mes_topology"]["redis"]
    metrics = requests.get(f"http://{t['host']}:{t['exporter_port']}/metrics", timeout=10).text
    assert "\nredis_up 1\n" in metrics
    assert 'redis_exporter_last_scrape_error{err=""} 0' in metrics


def test_the_promotion_callback_logs_in_to_redis_and_empties_only_status_entries(stack):
    """patroni/on_role_change.sh as Patroni runs it on a promoted node (no failover needed)."""
    admin = stack.redis()
    admin.set("mes:status:callback-test", "x")
    admin.set("mes:rw:callback-test", "0/0", ex=60)
    script = Path(stack.ctx.vars["mes_topology"]["pg_nodes"][0]["conf_dir"]) / "on_role_change.sh"
    done = stack.ctx.run([str(script), "on_role_change", "primary", "mes"], user="postgres")
    assert "order-status cache emptied" in done.stderr, done.stderr
    assert not list(admin.scan_iter("mes:status:*"))
    assert admin.exists("mes:rw:callback-test")


# --- TLS inside the database tier -------------------------------------------------------------------

def _pg_connect(stack: Stack, host: str, port: int, **params):
    """A connection as the app role to the MES database at host:port with libpq `params`."""
    import psycopg2
    return psycopg2.connect(host=host, port=port, user=GROUP_VARS["pg_app_role"], dbname=GROUP_VARS["pg_database"],
                            password=stack.ctx.vars["mes_secrets"]["db_app_password"], connect_timeout=10,
                            application_name="tls-test", **params)


def _primary_and_pgpool(stack: Stack) -> list[tuple[str, int]]:
    from stack import dbtier
    primary, pgpool = dbtier.primary_node(stack.ctx), stack.ctx.vars["mes_topology"]["pgpool"]
    return [(primary["host"], primary["port"]), (pgpool["host"], pgpool["port"])]


def test_a_connection_without_tls_is_refused_by_the_primary_and_by_pgpool(stack):
    """The right password, but no TLS: pg_hba.conf and pool_hba.conf refuse it before any password."""
    import psycopg2
    for host, port in _primary_and_pgpool(stack):
        with pytest.raises(psycopg2.OperationalError) as refused:
            _pg_connect(stack, host, port, sslmode="disable").close()
        assert "no encryption" in str(refused.value) or "SSL off" in str(refused.value), (port, refused.value)


def test_verified_tls_to_the_primary_and_to_pgpool_and_only_with_the_stacks_ca(stack, tmp_path):
    """verify-full with the stack's CA: the certificate names the address we connect to; the same
    connection with another CA's certificate is refused by the client."""
    import psycopg2
    from stack import dbtier, pki
    ca = str(pki.ca_file(stack.ctx))
    for host, port in _primary_and_pgpool(stack):
        conn = _pg_connect(stack, host, port, sslmode="verify-full", sslrootcert=ca)
        try:
            assert conn.info.ssl_in_use
            with conn.cursor() as cur:  # through pgpool: its own connection to the backend
                cur.execute("/*NO LOAD BALANCE*/ SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                assert cur.fetchone() == (True,)
        finally:
            conn.close()
    subprocess.run([str(pki.SCRIPT), "ca", str(tmp_path), "Another CA", "1"], check=True)
    for host, port in _primary_and_pgpool(stack):
        with pytest.raises(psycopg2.OperationalError, match="certificate verify failed"):
            _pg_connect(stack, host, port, sslmode="verify-full", sslrootcert=str(tmp_path / "ca.crt")).close()
    assert dbtier.tls_params(stack.ctx)["sslmode"] == "verify-full"


def test_every_tcp_connection_to_the_primary_is_tls_and_replication_verifies_the_primary(stack):
    """The app's sessions (through pgpool), replication, the CRM's subscription and the exporter: all TLS on
    the primary; the standby streams with the primary's certificate verified. Pgpool-II's checks (a short session every
    sr_check_period) work: it finds the primary and the standby, which it can only ask over TLS."""
    from stack import dbtier
    api(stack, "GET", "/orders?limit=1", stack.new_key("tls-app"))  # an app session through pgpool
    v = GROUP_VARS
    want = {v["pg_app_role"], v["pg_replication_role"], v["pg_exporter_role"], v["crm_replication_role"]}
    sql = ("SELECT a.usename, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
           "WHERE a.client_addr IS NOT NULL")
    deadline, rows = time.monotonic() + 20, []
    while time.monotonic() < deadline:
        rows = [line.split("|") for line in dbtier.psql(stack.ctx, dbtier.primary_node(stack.ctx), sql).splitlines()]
        if want <= {user for user, _ in rows}:
            break
        time.sleep(0.5)
    assert want <= {user for user, _ in rows}, rows
    assert all(ssl == "t" for _, ssl in rows), rows
    assert sorted(n["role"] for n in dbtier.pool_nodes(stack.ctx)) == ["primary", "standby"]
    standby = dbtier.standby_nodes(stack.ctx)[0]
    conninfo = dbtier.psql(stack.ctx, standby, "SELECT conninfo FROM pg_stat_wal_receiver")
    assert "sslmode=verify-full" in conninfo and "sslrootcert=" in conninfo, conninfo


def test_pgpool_refuses_a_backend_whose_certificate_its_ca_did_not_sign(stack):
    """What Pgpool-II 4.3 checks of its backends: the certificate's chain (ssl_ca_cert). A second
    Pgpool-II, the stack's in every setting but trusting another CA, gets no session from the same
    endpoints."""
    import re
    import shutil
    import tempfile
    from pathlib import Path

    import psycopg2
    from mes.testing.postgres import free_port
    from stack import dbtier, pki
    from stack.base import as_user

    folder = Path(tempfile.mkdtemp(prefix="mes-pgpool-tls-"))
    try:
        (folder / "oiddir").mkdir()
        subprocess.run([str(pki.SCRIPT), "ca", str(folder / "other"), "Another CA", "1"], check=True)
        source, port = dbtier.pgpool_dir(stack.ctx), free_port()
        for name in ("pool_hba.conf", "pool_passwd", ".pgpoolkey", "pcp.conf"):
            shutil.copy(source / name, folder / name)
        conf = (source / "pgpool.conf").read_text().replace(str(source), str(folder))
        conf = re.sub(r"(?m)^ssl_ca_cert = .*$", f"ssl_ca_cert = '{folder / 'other' / 'ca.crt'}'", conf)
        conf = re.sub(r"(?m)^port = .*$", f"port = {port}", conf)
        (folder / "pgpool.conf").write_text(re.sub(r"(?m)^pcp_port = .*$", f"pcp_port = {free_port()}", conf))
        folder.chmod(0o755)
        subprocess.run(["chown", "-R", f"{dbtier.PG_USER}:", str(folder)], check=os.geteuid() == 0)
        argv = ["pgpool", "-n", "-D", "-f", str(folder / "pgpool.conf"), "-F", str(folder / "pcp.conf"),
                "-a", str(folder / "pool_hba.conf"), "-k", str(folder / ".pgpoolkey")]
        with open(folder / "log", "wb") as log:
            proc = subprocess.Popen(as_user(argv, dbtier.PG_USER), stdout=log, stderr=subprocess.STDOUT, cwd="/")
        try:
            host = stack.ctx.vars["mes_topology"]["pgpool"]["host"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
                    break
                time.sleep(0.3)
            with pytest.raises(psycopg2.OperationalError):
                _pg_connect(stack, host, port, sslmode="verify-full", sslrootcert=str(pki.ca_file(stack.ctx))).close()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        assert "certificate verify failed" in (folder / "log").read_text()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_operator_instances_run_at_a_higher_cpu_priority_than_public_instances(stack):
    """Operators first (stack/priority.py): every process of an instance is in its pool's cgroup, whose
    weight is the pool's cpu_weight; where cgroups cannot be written, each runs at its pool's nice value."""
    from stack import priority
    found = priority.cpu_hierarchy()
    groups = priority.groups(stack.ctx, found[1]) if found else {}
    placed = bool(groups) and all(g.is_dir() for g in groups.values())
    for pool, instances in (("operator", stack.ctx.vars["mes_topology"]["app_operator"]),
                            ("public", stack.ctx.vars["mes_topology"]["app_public"])):
        weight = GROUP_VARS["mes_pools"][pool]["cpu_weight"]
        for instance in instances:
            processes = gunicorn_processes(stack.pid(instance["name"]), GROUP_VARS["mes_pools"][pool]["workers"])
            if placed:
                version, mount = found
                assert {cpu_cgroup(pid, version) for pid in processes} == {f"/{groups[pool].relative_to(mount)}"}
                shares = (groups[pool] / ("cpu.weight" if version == 2 else "cpu.shares")).read_text().strip()
                assert shares == str(weight if version == 2 else weight * 1024 // 100)
            else:
                assert {nice_of(pid) for pid in processes} == {priority.nice(stack.ctx, pool)}
    assert placed == (found is not None and os.access(found[1], os.W_OK))


# --- one trace through every hop (haproxy/haproxy.cfg.j2, mes.tracing) -------------------------------

SERVER_SPAN, CLIENT_SPAN = 2, 3  # OTLP span kinds


def app_log_lines(stack: Stack, pool: str = "public") -> dict[str, dict]:
    """The app's request lines of every instance of `pool`, by request id."""
    lines = {}
    for instance in stack.ctx.vars["mes_topology"][f"app_{pool}"]:
        for raw in stack.ctx.logfile(instance["name"]).read_text(errors="replace").splitlines():
            if raw.startswith("{") and '"message": "request"' in raw:
                line = json.loads(raw)
                lines[line["request_id"]] = line
    return lines


def haproxy_trace_ids(stack: Stack) -> dict[str, str]:
    """HAProxy's trace id of every request it logged, by request id."""
    import re
    found = re.findall(r" id=(\S+) trace=(\S+) ", stack.ctx.logfile("haproxy").read_text(errors="replace"))
    return dict(found)


def test_a_clients_traceparent_is_one_trace_through_haproxy_the_app_redis_and_postgresql(stack, traces):
    import secrets
    crm = stack.new_key("trace-crm", tier="crm", scope="crm")
    order = create(stack, stack.new_key("trace-partner"), "TRACE-1")
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    r = api(stack, "GET", f"/orders/{order['id']}/status", {**crm, "traceparent": f"00-{trace_id}-{parent}-01"})
    assert r.status_code == 200, r.text
    request_id = r.headers["X-Request-ID"]

    spans = traces.wait_for_trace(trace_id, lambda s: any(x.kind == SERVER_SPAN for x in s))
    server = [s for s in spans if s.kind == SERVER_SPAN]
    assert len(server) == 1 and server[0].parent_id == parent, spans
    server = server[0]
    assert server.service == "mes-public" and server.attributes["http.route"] == "/api/v1/orders/<id:order_id>/status"
    assert server.attributes["mes.request_id"] == request_id and server.attributes["mes.client_id"] > 0
    children = [s for s in spans if s.parent_id == server.span_id]
    systems = {s.attributes.get("db.system") or s.attributes.get("db.system.name") for s in children}
    assert {"postgresql", "redis"} <= systems, [(s.name, s.attributes) for s in children]
    assert all(s.kind == CLIENT_SPAN for s in children)

    assert wait_until(lambda: haproxy_trace_ids(stack).get(request_id) == trace_id, 10), request_id
    line = app_log_lines(stack)[request_id]
    assert (line["trace_id"], line["span_id"]) == (trace_id, server.span_id)


def test_haproxy_starts_a_trace_where_none_or_a_malformed_one_comes_in_and_records_its_share(stack, traces):
    """No traceparent or a malformed one: HAProxy starts a new trace each time, logs it and
    passes it on; it marks mes_trace_sample_ratio of them sampled, and the app records exactly those."""
    crm = stack.new_key("trace-start", tier="crm", scope="crm")
    bad = ["00-xyz-01", f"00-{'0' * 32}-{'1' * 16}-01", f"01-{'a' * 32}-{'b' * 16}-01", f"00-{'A' * 32}-{'b' * 16}-01"]
    sent = {}
    session = requests.Session()
    for n in range(400):
        headers = dict(crm)
        if n % 4 == 1:
            headers["traceparent"] = bad[n // 4 % len(bad)]
        r = session.get(f"{stack.public}/api/v1/orders?limit=1", headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        sent[r.headers["X-Request-ID"]] = headers.get("traceparent")
    time.sleep(8)  # the exporters' batches (every 5 s)
    logged_by_haproxy, logged_by_app = haproxy_trace_ids(stack), app_log_lines(stack)
    started = {rid: logged_by_haproxy[rid] for rid in sent}
    assert len(set(started.values())) == len(sent)
    for rid, incoming in sent.items():
        assert len(started[rid]) == 32 and started[rid] != "0" * 32 and started[rid] not in (incoming or "")
        assert logged_by_app[rid]["trace_id"] == started[rid]
    recorded = {rid for rid, trace_id in started.items() if traces.trace(trace_id)}
    ratio = GROUP_VARS["mes_trace_sample_ratio"]
    # Binomial(400, 0.1): 40 expected; outside 15..70 once in millions of runs.
    assert 15 <= len(recorded) <= 70 if ratio == 0.1 else abs(len(recorded) / 400 - ratio) < 0.1, len(recorded)


def test_a_slow_statement_in_postgresqls_log_names_the_request_that_sent_it(stack):
    """A cancel waits on a row lock longer than pg_log_min_duration_statement: PostgreSQL logs the
    statement, and its sqlcommenter comment names the trace, the handler and the route."""
    import re
    import secrets
    from stack import dbtier
    partner = stack.new_key("trace-slow")
    order = create(stack, partner, "TRACE-SLOW")
    trace_id = secrets.token_hex(16)
    log = stack.ctx.logfile(dbtier.primary_node(stack.ctx)["name"])
    offset = log.stat().st_size
    lock = HeldRowLock(stack, "received")
    with ThreadPoolExecutor(1) as pool:
        try:
            cancel = pool.submit(api, stack, "POST", f"/orders/{order['id']}/cancel",
                                 {**partner, "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-00"},
                                 json={"reason": "trace test"})
            time.sleep(GROUP_VARS["pg_log_min_duration_statement"] / 1000 + 0.7)
        finally:
            lock.release()
        assert cancel.result(30).status_code == 200

    def slow_record() -> str | None:
        with log.open(errors="replace") as fh:
            fh.seek(offset)
            records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", fh.read())
        return next((r for r in records if "duration:" in r and f"traceparent='00-{trace_id}-" in r), None)

    assert wait_until(lambda: slow_record() is not None, 10)
    record = slow_record()
    assert "app=mes-public" in record and "controller='api.cancel_order'" in record, record
    assert "route='/api/v1/orders/<id:order_id>/cancel'" in record, record
