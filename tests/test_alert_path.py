"""The whole alert path on the production topology (started as `make up` does, in a temporary folder on
free ports): a component stops, Prometheus' rule fires, Alertmanager routes it by severity and its
webhook reaches a receiver, here one this test runs on the stack's receiver port (stack/local.yml:
alert_receiver) in place of the stack's own (stack/alertsink.py). Also: the Watchdog's heartbeat, and
inhibition per pool in the real Alertmanager. Everything is put back as it was."""
from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import yaml
from stack.base import wait_until
from stack.services import AlertReceiver, RedisExporter
from stackutil import GROUP_VARS, ROOT, running_stack, stack_cli

pytestmark = pytest.mark.topology

SLACK = 15  # seconds: the notification's own HTTP round trip, rule groups and scrapes not aligned


@pytest.fixture(scope="module")
def stack():
    with running_stack() as running:
        yield running


def seconds(duration: str) -> float:
    """A Prometheus duration ('30s', '1m', '5m') in seconds."""
    value, unit = re.fullmatch(r"(\d+)([smh])", duration).groups()
    return int(value) * {"s": 1, "m": 60, "h": 3600}[unit]


def rule(path: str, alert: str, severity: str) -> dict:
    groups = yaml.safe_load((ROOT / "monitoring" / "rules" / path).read_text())["groups"]
    return next(r for g in groups for r in g["rules"]
                if r.get("alert") == alert and r["labels"]["severity"] == severity)


class Receiver:
    """Alertmanager's webhook receiver on loopback, in this process: every notification it gets, with the
    receiver's name (the URL's last path part) and when it came."""

    def __init__(self, host: str, port: int):
        self.notifications: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.notifications.append({"receiver": self.path.strip("/"), "at": time.monotonic(),
                                                   **body})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def find(self, receiver: str, alertname: str, status: str, since: float) -> dict | None:
        with self.lock:
            for n in self.notifications:
                if n["receiver"] == receiver and n["at"] >= since and any(
                        a["labels"].get("alertname") == alertname and a["status"] == status for a in n["alerts"]):
                    return n
        return None

    def wait(self, receiver: str, alertname: str, status: str, since: float, timeout: float) -> dict | None:
        wait_until(lambda: self.find(receiver, alertname, status, since) is not None, timeout, 0.5)
        return self.find(receiver, alertname, status, since)

    def names(self) -> list[tuple[str, str, str]]:
        with self.lock:
            return [(n["receiver"], a["labels"].get("alertname"), a["status"])
                    for n in self.notifications for a in n["alerts"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver(stack):
    """This test's receiver on the stack's receiver port; the stack's own receiver is back afterwards."""
    r = stack.ctx.vars["stack_alert_receiver"]
    AlertReceiver().down(stack.ctx)
    ours = Receiver(r["host"], r["port"])
    try:
        yield ours
    finally:
        ours.close()
        AlertReceiver().up(stack.ctx)


def alertmanager(stack) -> str:
    t = stack.ctx.vars["mes_topology"]["alertmanager"]
    return f"http://{t['host']}:{t['port']}"


def local_alertmanager_setting(stack, name: str) -> float:
    """group_wait or group_interval as the stack rendered alertmanager.yml (from the same template)."""
    rendered = yaml.safe_load(stack.ctx.path("alertmanager", "alertmanager.yml").read_text())
    return seconds(rendered["route"][name])


def test_prometheus_sends_to_the_stacks_alertmanager_which_answers_the_monitoring_user_only(stack):
    def active():  # discovered a moment after Prometheus starts
        answer = requests.get(f"{stack.prometheus}/api/v1/alertmanagers", auth=stack.monitoring, timeout=10).json()
        return [a["url"] for a in answer["data"]["activeAlertmanagers"]]

    wait_until(lambda: active() != [], 30, 0.5)
    assert active() == [f"{alertmanager(stack)}/api/v2/alerts"]
    assert requests.get(f"{alertmanager(stack)}/api/v2/status", timeout=10).status_code == 401
    status = requests.get(f"{alertmanager(stack)}/api/v2/status", auth=stack.monitoring, timeout=10).json()
    config = status["config"]["original"]
    assert "discard" not in config and "/tickets" in config and "/pages" in config


def test_a_stopped_exporter_reaches_the_tickets_receiver_and_its_recovery_too(stack, receiver):
    """The Watchdog's heartbeat arrives on its own receiver; the redis exporter stopped: RedisExporterDown
    (warning) reaches `tickets` (never `pages`) within its `for` + the evaluation interval + a scrape +
    Alertmanager's group_wait; started again: the resolved notification follows within an evaluation
    interval + a scrape + group_interval. The exporter runs again afterwards."""
    group_wait = local_alertmanager_setting(stack, "group_wait")
    group_interval = local_alertmanager_setting(stack, "group_interval")
    evaluation = seconds(GROUP_VARS["prometheus_evaluation_interval"])
    scrape = seconds(GROUP_VARS["prometheus_scrape_interval"])
    watchdog_every = seconds(GROUP_VARS["alertmanager_watchdog_repeat_interval"])
    down = rule("redis.yml", "RedisExporterDown", "warning")
    exporter = RedisExporter()
    stopped = time.monotonic()
    exporter.down(stack.ctx)
    try:
        # The heartbeat goes on meanwhile (the two waits overlap): repeated every interval; a flush that
        # comes a moment too early for the repeat waits for the next.
        assert receiver.wait("watchdog", "Watchdog", "firing", stopped, 2 * watchdog_every + SLACK), \
            receiver.names()
        bound = seconds(down["for"]) + evaluation + scrape + group_wait + SLACK
        fired = receiver.wait("tickets", "RedisExporterDown", "firing", stopped, bound + 30)
        assert fired, (bound, receiver.names())
        assert fired["at"] - stopped <= bound, f"{fired['at'] - stopped:.0f} s > {bound} s"
        alert = next(a for a in fired["alerts"] if a["labels"]["alertname"] == "RedisExporterDown")
        assert alert["labels"]["severity"] == "warning" and alert["labels"]["component"] == "redis"
        assert alert["annotations"]["runbook_url"] == "monitoring/runbooks.md#redisexporterdown"
        assert not receiver.find("pages", "RedisExporterDown", "firing", stopped)
    finally:
        exporter.up(stack.ctx)
    restarted = time.monotonic()
    bound = evaluation + scrape + group_interval + SLACK
    resolved = receiver.wait("tickets", "RedisExporterDown", "resolved", restarted, bound + 30)
    assert resolved, (bound, receiver.names())
    assert resolved["at"] - restarted <= bound, f"{resolved['at'] - restarted:.0f} s > {bound} s"


def test_a_critical_on_one_pool_never_silences_the_other_pools_warning(stack):
    """Inhibition in the stack's Alertmanager (the rule of monitoring/alertmanager.yml.j2): a critical of
    the public pool silences the public pool's warning of the same alert, not the operator pool's."""
    name = f"AlertPathInhibitionProbe{int(time.time())}"
    ends = (datetime.now(timezone.utc) + timedelta(minutes=2)).isoformat()
    # The same alert name, job and instance: only the pool tells them apart (the inhibit rule's `equal`
    # without `pool` would silence the operator pool's warning too).
    alerts = [{"labels": {"alertname": name, "severity": severity, "component": "haproxy", "pool": pool,
                          "job": "haproxy", "instance": "127.0.0.1:8404"}, "endsAt": ends}
              for severity, pool in (("critical", "public"), ("warning", "public"), ("warning", "operator"))]
    r = requests.post(f"{alertmanager(stack)}/api/v2/alerts", json=alerts, auth=stack.monitoring, timeout=10)
    assert r.status_code == 200, r.text

    def states():
        found = requests.get(f"{alertmanager(stack)}/api/v2/alerts", params={"filter": f'alertname="{name}"'},
                             auth=stack.monitoring, timeout=10).json()
        return {(a["labels"]["severity"], a["labels"]["pool"]): a["status"]["state"] for a in found}

    expected = {("critical", "public"): "active", ("warning", "public"): "suppressed",
                ("warning", "operator"): "active"}
    assert wait_until(lambda: states() == expected, 30, 0.5), states()


def frontend_counters(stack, proxy: str) -> dict[str, float]:
    text = requests.get(f"{stack.stats}/metrics", auth=stack.monitoring, timeout=10).text
    found = {}
    for name in ("requests_denied_total", "intercepted_requests_total", "http_requests_total"):
        line = re.search(rf'^haproxy_frontend_{name}{{proxy="{proxy}"}} (\S+)$', text, re.M)
        found[name] = float(line.group(1))
    return found


def test_haproxy_counts_its_429s_apart_from_its_404s(stack):
    """What HAProxyShedding429 reads: the public frontend's 429s over the key's limit are its denied
    requests, the 404s of its path rules (a path scan) its intercepted ones, never mixed."""
    key = stack.new_key("alert-path-flood", tier="crm", scope="crm")
    before = frontend_counters(stack, "public")
    with requests.Session() as s:
        answers = [s.get(f"{stack.public}/not-an-api-path", headers=key, timeout=10).status_code
                   for _ in range(GROUP_VARS["haproxy_key_rate_limit"] + 20)]
    after = frontend_counters(stack, "public")
    assert answers.count(429) >= 20 and answers.count(404) > 0, answers[-30:]
    assert after["requests_denied_total"] - before["requests_denied_total"] == answers.count(429)
    assert after["intercepted_requests_total"] - before["intercepted_requests_total"] == answers.count(404)


def test_the_exporter_sees_a_session_left_idle_in_a_transaction(stack):
    """What PostgresIdleInTransaction reads (pg_sessions of monitoring/postgres_exporter_queries.yml,
    as the exporter's role): a session of the app's role on the primary, idle inside a transaction,
    shows in the primary's exporter with its age; once it ends, it is gone."""
    from sqlalchemy import create_engine, text
    from stack import dbtier

    primary = dbtier.primary_node(stack.ctx)
    exporter = f"http://{primary['host']}:{primary['exporter_port']}/metrics"

    def idle() -> tuple[float, float]:
        metrics = requests.get(exporter, timeout=10).text
        count = re.search(r'^pg_sessions_count\{[^}]*state="idle_in_transaction"[^}]*\} (\S+)$', metrics, re.M)
        oldest = re.search(r'^pg_sessions_oldest_xact_seconds\{[^}]*state="idle_in_transaction"[^}]*\} (\S+)$',
                           metrics, re.M)
        assert count and oldest, metrics[-2000:]
        return float(count.group(1)), float(oldest.group(1))

    engine = create_engine(dbtier.database_urls(stack.ctx)["app_direct"])
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))   # SQLAlchemy's implicit BEGIN: the transaction stays open
            time.sleep(2)
            count, oldest = idle()
            assert count >= 1 and oldest >= 2, (count, oldest)
            conn.rollback()
        assert wait_until(lambda: idle()[0] == 0, 10, 0.5), idle()
    finally:
        engine.dispose()


def test_the_stack_is_whole_again(stack):
    r = stack_cli(stack.env, "status")
    assert r.returncode == 0, r.stdout
    for name in ("alert_receiver", "alertmanager", "redis_exporter", "prometheus"):
        assert any(line.split()[0] == name and " UP " in line for line in r.stdout.splitlines()), r.stdout
