"""The playbooks against real Debian 12 hosts (systemd-nspawn containers built by the harness in this
folder): lint, site.yml from bare hosts, idempotency, the app through HAProxy, read/write split,
monitoring, a rolling deploy under traffic, a primary failure and the rejoin of the old primary
(pg_rewind), a planned switchover, a backup with a restore check, and a third database node added
under traffic.

The tests run in order and build on each other (one set of hosts for the module); a test whose
prerequisite failed is skipped with the reason. Every client runs in the controller namespace.

Contract assumed with the playbooks and roles (see README.md in this folder):
- `site.yml --skip-tags loki,alloy,grafana` builds everything else from bare hosts; a second run
  changes nothing; the mes_app role takes `mes_app_wheelhouse` (the hosts reach no package index).
- app hosts: the pool's environment in /etc/mes/<pool>.env, the code in /opt/mes/current/venv
  (`mes` CLI, python with SQLAlchemy); PostgreSQL's data in /var/lib/postgresql/15/main.
- `deploy.yml` rolls the app servers one at a time (takes `mes_app_release` to force a new release);
  `switchover.yml -e switchover_rejoin_only=true` rejoins every node that is not streaming, and
  `switchover.yml -e switchover_target=<replica>` is a planned switchover; `backup.yml` reports its
  restore check in a debug line; `add_replica.yml -e new_replica=<host>` with the spare inventory.
"""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from .cluster import ANSIBLE_DIR, REPO, Cluster, Settings
from .network import CTL_NS
from .util import log, run, wait_until
from .wheelhouse import ensure_wheelhouse

pytestmark = pytest.mark.deploy

SKIP_TAGS = "loki,alloy,grafana"       # Grafana, Loki and Alloy are not in Debian: not installable here
APP_ENV = "/etc/mes/{pool}.env"        # mes_app_config_dir/<pool>.env
APP_VENV = "/opt/mes/current/venv"     # mes_app_root/current/venv
PG_DATA = "/var/lib/postgresql/15/main"
PORTS = yaml.safe_load((ANSIBLE_DIR / "group_vars" / "all" / "topology.yml").read_text())["mes_ports"]
GROUP_VARS = yaml.safe_load((ANSIBLE_DIR / "group_vars" / "all" / "main.yml").read_text())
PASSED: set[str] = set()               # names of the steps that passed, for the tests that need them


def need(*steps: str) -> None:
    missing = [s for s in steps if s not in PASSED]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to have passed first")


REUSE = os.environ.get("MES_DEPLOY_REUSE") == "1"


@pytest.fixture(scope="module")
def cluster():
    """The hosts, built for this module and removed after it. MES_DEPLOY_REUSE=1 uses the hosts that
    `python -m tests.deploy up` left running instead (site.yml already run by hand), and leaves them."""
    if REUSE:
        PASSED.add("site.yml")
        yield Cluster(Settings()).attach()
        return
    c = Cluster(Settings())
    c.up()
    try:
        yield c
    finally:
        c.down()
        left = c.leftovers()
        assert not left, f"the harness left: {left}"


@pytest.fixture(scope="module")
def extra_vars(cluster) -> dict:
    return {"mes_app_wheelhouse": str(ensure_wheelhouse(REPO, cluster.settings.cache_dir))}


# --- helpers -------------------------------------------------------------------------------------------------

def check_run(cluster: Cluster, result, what: str) -> None:
    """The playbook run succeeded; if not: its output's end and the failed units of the failed hosts."""
    if not result.ok:
        pytest.fail(f"{what} failed (log {result.log_path}):\n{result.tail(120)}\n\n"
                    f"{cluster.diagnose(result.failed_hosts)}", pytrace=False)


def first(cluster: Cluster, group: str) -> str:
    data = yaml.safe_load((ANSIBLE_DIR / "inventories" / "test" / "hosts.yml").read_text())
    return next(iter(data["all"]["children"][group]["hosts"]))


def address(cluster: Cluster, group: str) -> str:
    return cluster.hosts[first(cluster, group)]


def url(cluster: Cluster, port_name: str, path: str, group: str = "lb") -> str:
    return f"http://{address(cluster, group)}:{PORTS[port_name]}{path}"


def ns_client(cluster: Cluster, *args: str, timeout: float = 60) -> dict:
    """One nsclient command inside the controller namespace; its JSON answer."""
    r = cluster.in_ctl([sys.executable, "-m", "tests.deploy.nsclient", *args], cwd=REPO, timeout=timeout,
                       quiet=True)
    return json.loads(r.stdout)


def mes_cli(cluster: Cluster, host: str, pool: str, arguments: str) -> str:
    """The mes CLI on an app host, with its pool's settings, through an ad-hoc ansible run; its stdout."""
    command = f"set -a && . {APP_ENV.format(pool=pool)} && set +a && {APP_VENV}/bin/mes {arguments}"
    result = cluster.adhoc(host, "ansible.builtin.shell", command)[host]
    assert result.get("rc") == 0, result
    return result["stdout"]


def new_client(cluster: Cluster, tier: str = "bulk") -> str:
    name = f"deploy-test-{uuid.uuid4().hex[:8]}"
    out = mes_cli(cluster, first(cluster, "app_public"), "public",
                  f"create-client {name} --partner 'Deploy Test' --tier {tier}")
    return out.strip().splitlines()[-1].strip()


def api(cluster: Cluster, method: str, path: str, key: str, body: dict | None = None) -> dict:
    args = ["request", method, url(cluster, "public", f"/api/v1{path}"), "--header", f"Authorization:Bearer {key}"]
    if body is not None:
        args += ["--json", json.dumps(body)]
    return ns_client(cluster, *args)


def new_order(reference: str) -> dict:
    return {"reference": reference, "product": "BRKT-200", "material": "steel S235", "quantity": 3}


POOL_NODES_SCRIPT = """set -a && . {env} && set +a && {venv}/bin/python - <<'EOF'
import json, os, sqlalchemy
engine = sqlalchemy.create_engine(os.environ["DATABASE_URL"])
with engine.connect() as conn:
    rows = conn.exec_driver_sql("SHOW POOL_NODES").mappings().all()
print(json.dumps([dict(r) for r in rows]))
EOF"""


def pool_nodes(cluster: Cluster) -> dict[str, dict]:
    """SHOW POOL_NODES through pgpool, from an app host (pool_hba admits only those), by host name."""
    host = first(cluster, "app_operator")
    out = cluster.ssh(host, POOL_NODES_SCRIPT.format(env=APP_ENV.format(pool="operator"), venv=APP_VENV),
                      quiet=True).stdout
    by_address = {a: h for h, a in cluster.hosts.items()}
    return {by_address.get(n["hostname"], n["hostname"]): n for n in json.loads(out.strip().splitlines()[-1])}


def psql(cluster: Cluster, host: str, sql: str) -> str:
    r = cluster.ssh(host, f"cd / && runuser -u postgres -- psql -d {GROUP_VARS['pg_database']} -AtXc \"{sql}\"",
                    check=False, quiet=True)
    return r.stdout.strip() if r.returncode == 0 else f"ERROR {r.returncode}: {r.stderr.strip()}"


def primary_of(nodes: dict[str, dict]) -> str:
    return next(h for h, n in nodes.items() if n["role"] == "primary")


def all_nodes_up(cluster: Cluster) -> dict[str, dict] | None:
    nodes = pool_nodes(cluster)
    return nodes if all(n["status"] in ("up", "waiting") for n in nodes.values()) else None


def rejoined_by_rewind(result, host: str) -> None:
    """The rejoin of `host` in this switchover.yml run went the pg_rewind way, not a new base backup."""
    assert f"postgresql : Pg_rewind from the primary => {host}" in result.changed_tasks, result.changed_tasks
    assert not [t for t in result.changed_tasks if t.startswith("postgresql : Keep the old data beside")], \
        result.changed_tasks


def kill_the_primary(cluster: Cluster) -> tuple[str, str, dict[str, dict]]:
    """SIGKILL to the primary's postmaster; waits until pgpool has it down and another node promoted.
    Returns (old primary, new primary, pgpool's nodes then)."""
    old_primary = primary_of(pool_nodes(cluster))
    log(f"killing PostgreSQL on the primary {old_primary} (SIGKILL to its postmaster)")
    cluster.ssh(old_primary, f"kill -KILL $(head -1 {PG_DATA}/postmaster.pid)")

    def promoted():
        try:
            now = pool_nodes(cluster)
        except Exception:       # pgpool may refuse connections for a moment while it fails over
            return False
        new = [h for h, n in now.items() if n["role"] == "primary" and h != old_primary]
        return now if new and now[old_primary]["status"] == "down" else False
    after = wait_until(promoted, 90, interval=1, what="pgpool to promote a standby")
    return old_primary, primary_of(after), after


def write_through_haproxy(cluster: Cluster, key: str, reference: str) -> int:
    """Create an order through HAProxy, retrying while the data tier settles; its id."""
    def write_ok():
        r = api(cluster, "POST", "/orders", key, new_order(reference))
        return r if r["status"] == 201 else None
    return wait_until(write_ok, 60, interval=1, what=f"a write of {reference} through HAProxy")["json"]["id"]


@contextmanager
def steady_traffic(cluster: Cluster, what: str):
    """Requests on both pools through HAProxy from the controller namespace while the block runs; yields
    a dict that holds the generator's summary (total, lost, by_target) once the block has ended."""
    key, writer_key = new_client(cluster), new_client(cluster)
    summary: dict = {}
    with tempfile.TemporaryDirectory(prefix="mes-deploy-traffic-") as tmp:
        out, stop = Path(tmp) / "traffic.json", Path(tmp) / "stop"
        targets = [
            f"list,GET,{url(cluster, 'public', '/api/v1/orders?limit=5')},8,Authorization:Bearer {key}",
            f"create,POST,{url(cluster, 'public', '/api/v1/orders')},2,Authorization:Bearer {writer_key}",
            f"operator,GET,{url(cluster, 'operator', '/operator/login')},5",
        ]
        argv = ["ip", "netns", "exec", CTL_NS, sys.executable, "-m", "tests.deploy.nsclient", "traffic",
                "--out", str(out), "--stop-file", str(stop), "--max-seconds", "1500"]
        for t in targets:
            argv += ["--target", t]
        log(f"traffic starts (in the controller namespace) for {what}")
        traffic = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(5)
            yield summary
            time.sleep(5)
        finally:
            stop.touch()
            try:
                _, err = traffic.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                traffic.kill()
                _, err = traffic.communicate()
        assert out.exists(), f"the traffic generator wrote no result: {err[-2000:]}"
        summary.update(json.loads(out.read_text()))
    log(f"traffic during {what}: {summary['total']} requests, {summary['lost']} lost, {summary['by_target']}")


# --- lint ----------------------------------------------------------------------------------------------------

def _offline(argv: list[str]) -> subprocess.CompletedProcess:
    """Linters run in a fresh network namespace with nothing but loopback: they cannot reach anything."""
    return run(["unshare", "--net", "--", *argv], check=False, cwd=ANSIBLE_DIR, timeout=900)


def test_ansible_lint_production_profile():
    bin_dir = Settings().ansible_bin
    r = _offline([str(bin_dir / "ansible-lint"), "--offline", "--profile", "production", "--nocolor"])
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]


def test_yamllint_is_clean():
    bin_dir = Settings().ansible_bin
    r = _offline([str(bin_dir / "yamllint"), "-f", "parsable", "."])
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout[-6000:] + r.stderr[-2000:]


# --- site.yml ------------------------------------------------------------------------------------------------

def test_site_from_bare_hosts(cluster, extra_vars):
    result = cluster.playbook("site.yml", "--skip-tags", SKIP_TAGS, extra_vars=extra_vars, timeout=1200)
    check_run(cluster, result, "site.yml")
    assert set(result.recap) == set(cluster.site_hosts), result.recap
    PASSED.add("site.yml")


def test_second_run_changes_nothing(cluster, extra_vars):
    need("site.yml")
    result = cluster.playbook("site.yml", "--skip-tags", SKIP_TAGS, extra_vars=extra_vars, timeout=600)
    check_run(cluster, result, "the second site.yml run")
    assert result.changed == 0, "changed on the second run:\n  " + "\n  ".join(result.changed_tasks)


# --- the app through HAProxy -----------------------------------------------------------------------------------

def test_operator_ui_login_through_haproxy(cluster):
    need("site.yml")
    login, password = "deploytest", "deploy-test-pass-1"
    mes_cli(cluster, first(cluster, "app_operator"), "operator",
            f"create-operator {login} --password {password} --role operator")
    r = ns_client(cluster, "operator-login", url(cluster, "operator", ""), login, password)
    assert r["form_status"] == 200 and r["login_status"] == 302, r
    assert r["queue_status"] == 200 and r["queue_has_title"], r


def test_partner_api_creates_and_reads_an_order(cluster):
    need("site.yml")
    key = new_client(cluster)
    created = api(cluster, "POST", "/orders", key, new_order("DT-API-1"))
    assert created["status"] == 201, created
    order = created["json"]
    read = api(cluster, "GET", f"/orders/{order['id']}", key)
    assert read["status"] == 200 and read["json"]["reference"] == "DT-API-1", read
    assert api(cluster, "GET", "/orders?limit=5", "not-a-key")["status"] == 401
    PASSED.add("api")


def test_writes_go_to_the_primary_and_reads_to_the_replica(cluster):
    need("api")
    writer, reader = new_client(cluster), new_client(cluster)
    before = pool_nodes(cluster)
    primary = primary_of(before)
    standby = next(h for h, n in before.items() if n["role"] == "standby")
    assert all(n["status"] in ("up", "waiting") for n in before.values()), before
    created = api(cluster, "POST", "/orders", writer, new_order("DT-RW-1"))
    assert created["status"] == 201, created
    order_id = created["json"]["id"]
    for _ in range(40):      # a client that never wrote: its reads are balanced (public pool -> standby)
        assert api(cluster, "GET", "/orders?limit=5", reader)["status"] == 200
    after = pool_nodes(cluster)
    reads_on_standby = int(after[standby]["select_cnt"]) - int(before[standby]["select_cnt"])
    assert reads_on_standby >= 40, (before, after)
    assert psql(cluster, primary, f"SELECT reference FROM orders WHERE id = {order_id}") == "DT-RW-1"
    assert psql(cluster, primary, "SELECT pg_is_in_recovery()") == "f"
    wait_until(lambda: psql(cluster, standby, f"SELECT reference FROM orders WHERE id = {order_id}") == "DT-RW-1",
               30, what="the order on the replica")
    assert psql(cluster, standby, "SELECT pg_is_in_recovery()") == "t"


def test_prometheus_has_every_target_up(cluster):
    need("site.yml")
    targets_url = url(cluster, "prometheus", "/api/v1/targets", group="monitoring")

    def all_up():
        r = ns_client(cluster, "request", "GET", targets_url)
        targets = r["json"]["data"]["activeTargets"] if r["status"] == 200 else []
        down = [(t["labels"]["job"], t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets
                if t["health"] != "up"]
        all_up.last = (targets, down)
        return targets and not down

    all_up.last = ([], [])
    try:
        wait_until(all_up, 150, interval=3, what="every Prometheus target up")
    except TimeoutError:
        pytest.fail(f"targets not up: {all_up.last[1]}")
    targets = all_up.last[0]
    jobs = {t["labels"]["job"] for t in targets}
    assert {"prometheus", "haproxy", "mes_operator", "mes_public", "postgres", "redis", "node"} <= jobs, jobs
    nodes = [t for t in targets if t["labels"]["job"] == "node"]
    assert len(nodes) == len(cluster.site_hosts), [t["scrapeUrl"] for t in nodes]


# --- operations ----------------------------------------------------------------------------------------------

def test_rolling_deploy_loses_no_request(cluster, extra_vars):
    need("api")
    with steady_traffic(cluster, "deploy.yml") as summary:
        release = {"mes_app_release": f"deploytest-{int(time.time())}"}
        result = cluster.playbook("deploy.yml", extra_vars={**extra_vars, **release}, timeout=900)
    check_run(cluster, result, "deploy.yml")
    assert summary["total"] >= 100, summary
    assert summary["lost"] == 0, summary


def test_primary_failure_is_failed_over_and_the_old_primary_rejoins(cluster):
    need("api")
    key = new_client(cluster)
    old_primary, standby, _ = kill_the_primary(cluster)
    order_id = write_through_haproxy(cluster, key, "DT-FO-1")
    assert psql(cluster, standby, f"SELECT reference FROM orders WHERE id = {order_id}") == "DT-FO-1"

    result = cluster.playbook("switchover.yml", extra_vars={"switchover_rejoin_only": True}, timeout=600)
    check_run(cluster, result, "switchover.yml (rejoin)")
    rejoined_by_rewind(result, old_primary)
    rejoined = wait_until(lambda: all_nodes_up(cluster), 60, interval=2, what="both nodes up in pgpool")
    assert rejoined[standby]["role"] == "primary" and rejoined[old_primary]["role"] == "standby", rejoined
    assert psql(cluster, old_primary, "SELECT pg_is_in_recovery()") == "t"
    wait_until(lambda: psql(cluster, old_primary, f"SELECT reference FROM orders WHERE id = {order_id}") == "DT-FO-1",
               60, what="the order written after the failover on the rejoined node")
    PASSED.add("failover")


def test_planned_switchover_back_to_the_first_primary(cluster):
    need("failover")
    target = first(cluster, "db_primary")
    old_primary = primary_of(pool_nodes(cluster))
    result = cluster.playbook("switchover.yml", extra_vars={"switchover_target": target}, timeout=600)
    check_run(cluster, result, "switchover.yml")
    rejoined_by_rewind(result, old_primary)
    nodes = wait_until(lambda: all_nodes_up(cluster), 90, interval=2, what="both nodes up in pgpool")
    assert primary_of(nodes) == target, nodes
    key = new_client(cluster)
    created = api(cluster, "POST", "/orders", key, new_order("DT-SW-1"))
    assert created["status"] == 201, created
    assert psql(cluster, target, f"SELECT reference FROM orders WHERE id = {created['json']['id']}") == "DT-SW-1"
    PASSED.add("switchover")


def test_backup_and_a_restore_that_finds_the_data(cluster):
    need("api")
    key = new_client(cluster)
    created = api(cluster, "POST", "/orders", key, new_order("DT-BK-1"))
    assert created["status"] == 201, created
    result = cluster.playbook("backup.yml", timeout=900)
    check_run(cluster, result, "backup.yml")
    # the Report task's message (Ansible's output may wrap it over lines)
    report = re.findall(r"restore of (\S+) and the WAL archive: both markers found, (\d+) orders",
                        " ".join(result.output.split()))
    assert report, result.tail(40)
    primary = primary_of(pool_nodes(cluster))
    assert int(report[-1][1]) == int(psql(cluster, primary, "SELECT count(*) FROM orders")), report
    assert psql(cluster, primary, "SELECT count(*) FROM backup_marker") != "0"


def test_a_new_replica_joins_under_traffic_and_gets_reads(cluster):
    need("switchover")
    new = next(h for h in cluster.hosts if h not in cluster.site_hosts)     # db3, of the spare inventory
    pgpool_host = first(cluster, "pgpool")
    pgpool_pid = lambda: cluster.ssh(pgpool_host, "systemctl show -p MainPID --value pgpool2", quiet=True).stdout.strip()
    pid_before = pgpool_pid()
    with steady_traffic(cluster, "add_replica.yml") as summary:
        result = cluster.playbook("add_replica.yml", extra_vars={"new_replica": new}, with_spares=True,
                                  timeout=900)
    check_run(cluster, result, "add_replica.yml")
    assert summary["total"] >= 50 and summary["lost"] == 0, summary
    assert pgpool_pid() == pid_before != "0", "pgpool was restarted, not reloaded"
    nodes = wait_until(lambda: all_nodes_up(cluster), 90, interval=2, what=f"{new} up in pgpool")
    assert nodes[new]["role"] == "standby", nodes
    assert psql(cluster, new, "SELECT pg_is_in_recovery()") == "t"
    primary = primary_of(nodes)
    assert psql(cluster, primary, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "2"
    reader = new_client(cluster)
    before = int(nodes[new]["select_cnt"])
    for _ in range(60):      # balanced reads of a client that never wrote: some must reach the new node
        assert api(cluster, "GET", "/orders?limit=5", reader)["status"] == 200
    after = int(pool_nodes(cluster)[new]["select_cnt"])
    assert after - before >= 5, (before, after)
    PASSED.add("add_replica")


def test_with_three_nodes_the_other_standby_follows_the_new_primary(cluster):
    need("add_replica")
    key = new_client(cluster)
    old_primary, new_primary, after = kill_the_primary(cluster)
    other = next(h for h in after if h not in (old_primary, new_primary))
    # follow_primary.sh re-points the other standby and attaches it again
    wait_until(lambda: psql(cluster, other, "SELECT sender_host FROM pg_stat_wal_receiver WHERE status = 'streaming'")
               == cluster.hosts[new_primary], 120, interval=2, what=f"{other} to stream from {new_primary}")
    followed = wait_until(lambda: (lambda n: n if n[other]["status"] in ("up", "waiting") else None)(pool_nodes(cluster)),
                          90, interval=2, what=f"{other} attached again in pgpool")
    assert followed[other]["role"] == "standby", followed
    order_id = write_through_haproxy(cluster, key, "DT-FO3-1")
    wait_until(lambda: psql(cluster, other, f"SELECT reference FROM orders WHERE id = {order_id}") == "DT-FO3-1",
               60, what=f"the new order on {other}")

    result = cluster.playbook("switchover.yml", extra_vars={"switchover_rejoin_only": True}, with_spares=True,
                              timeout=600)
    check_run(cluster, result, "switchover.yml (rejoin, three nodes)")
    rejoined_by_rewind(result, old_primary)
    assert result.recap[other]["rescued"] == 0 and result.recap[other]["changed"] <= 1, result.recap  # at most attached
    nodes = wait_until(lambda: all_nodes_up(cluster), 90, interval=2, what="all three nodes up in pgpool")
    assert primary_of(nodes) == new_primary and nodes[old_primary]["role"] == "standby", nodes
    assert psql(cluster, new_primary, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "2"
