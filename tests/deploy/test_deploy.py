"""The playbooks against real Debian 12 hosts (systemd-nspawn containers built by the harness in this
folder): site.yml from bare hosts, idempotency, the app through HAProxy, read/write split,
TLS at HAProxy and inside the database tier, the firewall, monitoring, a rolling deploy under traffic,
the loss of the active load balancer under traffic (the virtual address moves, the rate limits hold),
the loss of the primary's whole host under counted writes (Patroni fails over, no acknowledged order is
lost, the old primary rejoins by itself when its host comes back), the CRM's own database kept exactly
equal to the MES's published rows across both (logical replication and mes crm-guard), a planned switchover, pgBackRest's
backups (scheduled and on demand), a point-in-time restore onto a host that never ran PostgreSQL, and a
third database node, restored from the backup repository, added under traffic.

The tests run in order and build on each other (one set of hosts for the module); a test whose
prerequisite failed is skipped with the reason. Every client runs in the controller namespace and
reaches HAProxy through the load balancers' virtual address (keepalived), as partners would.

Contract assumed with the playbooks and roles (see README.md in this folder):
- `site.yml --skip-tags loki,tempo,alloy,grafana` builds everything else from bare hosts; a second run
  changes nothing; the mes_app role takes `mes_app_wheelhouse` (the hosts reach no package index).
- app hosts: the pool's environment in /etc/mes/<pool>.env (DATABASE_URL: the host's own Pgpool-II),
  the code in /opt/mes/current/venv (`mes` CLI, python with SQLAlchemy); Pgpool-II as pgpool2.service
  and the database endpoints as haproxy-db.service on every app host.
- database hosts: Patroni (patroni.service) with its REST API on mes_ports.patroni; `psql` as the OS
  user postgres reaches the local node.
- load balancers: group lb with mes_vip on it; haproxy.service and keepalived.service on each lb host
  (keepalived logs "Entering <STATE> STATE"), HAProxy's runtime API at /var/lib/haproxy/admin.sock.
- `deploy.yml` rolls the app servers one at a time (takes `mes_app_release` to force a new release);
  `switchover.yml -e switchover_target=<node>` is a planned switchover; `backup.yml -e backup_type=diff`
  backs up on the repository's host (group backup); `restore.yml -e restore_host=rest1 -e restore_target=..`
  and `add_replica.yml -e new_replica=db3` with the spare inventories.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
from collections import Counter
from contextlib import contextmanager
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from . import containers, network
from .cluster import ANSIBLE_DIR, CLIENT2_IP, CTL_IP, REPO, SUBNET, VAULT_ARGS, Cluster, Settings, group_hosts, group_var
from .network import CTL_NS
from .util import log, run, wait_until
from .wheelhouse import ensure_patroni_wheelhouse, ensure_wheelhouse

pytestmark = pytest.mark.deploy

SKIP_TAGS = "loki,tempo,alloy,grafana"   # Grafana, Loki, Tempo and Alloy are not in Debian: not installable here
APP_ENV = "/etc/mes/{pool}.env"        # mes_app_config_dir/<pool>.env
APP_VENV = "/opt/mes/current/venv"     # mes_app_root/current/venv
PORTS = yaml.safe_load((ANSIBLE_DIR / "group_vars" / "all" / "topology.yml").read_text())["mes_ports"]
GROUP_VARS = yaml.safe_load((ANSIBLE_DIR / "group_vars" / "all" / "main.yml").read_text())
LB_HOSTS = group_hosts("lb")           # HAProxy on each; keepalived keeps the virtual address on one
VIP = group_var("lb", "mes_vip")       # what every client of the test uses
HAPROXY_SOCKET = "/var/lib/haproxy/admin.sock"   # mes_topology.haproxy.dir on VMs, admin.sock
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
def alert_receiver(cluster):
    """The receiver that the test inventory's Alertmanager notifies (alertmanager_*_webhook_url: the
    controller's address, port 9095): the local stack's alertsink, run in the controller namespace.
    Yields a function that returns the notifications received so far (one JSON line each)."""
    path = cluster.logs / "alert_receiver.log"
    with path.open("ab") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", CTL_NS, sys.executable, "-m", "stack.alertsink", CTL_IP,
                                 "9095"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield lambda: [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def extra_vars(cluster) -> dict:
    return {"mes_app_wheelhouse": str(ensure_wheelhouse(REPO, cluster.settings.cache_dir)),
            "patroni_wheelhouse": str(ensure_patroni_wheelhouse(REPO, cluster.settings.cache_dir)),
            "mes_pki_dir": str(cluster.work / "pki"),      # the internal CA of this run
            "mes_otlp_endpoint": ""}                       # no Tempo (SKIP_TAGS): the app exports no spans


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
    """A URL of the group's first host; of the load balancers' virtual address for group lb. HAProxy's
    public and operator frontends speak TLS."""
    host = VIP if group == "lb" else address(cluster, group)
    scheme = "https" if port_name in ("public", "operator") else "http"
    return f"{scheme}://{host}:{PORTS[port_name]}{path}"


def ca_bundle(cluster: Cluster) -> str:
    """The internal CA of this run (mes_pki_dir): the clients verify HAProxy's certificates with it."""
    return str(cluster.work / "pki" / "ca.crt")


def ns_client(cluster: Cluster, *args: str, timeout: float = 60) -> dict:
    """One nsclient command inside the controller namespace; its JSON answer."""
    r = cluster.in_ctl(["env", f"REQUESTS_CA_BUNDLE={ca_bundle(cluster)}", sys.executable, "-m",
                        "tests.deploy.nsclient", *args], cwd=REPO, timeout=timeout,
                       quiet=True)
    return json.loads(r.stdout)


def mes_cli(cluster: Cluster, host: str, pool: str, arguments: str) -> str:
    """The mes CLI on an app host, with its pool's settings, through an ad-hoc ansible run; its stdout."""
    command = f"set -a && . {APP_ENV.format(pool=pool)} && set +a && {APP_VENV}/bin/mes {arguments}"
    result = cluster.adhoc(host, "ansible.builtin.shell", command)[host]
    assert result.get("rc") == 0, result
    return result["stdout"]


def monitoring_credentials(cluster: Cluster) -> tuple[str, str]:
    """The monitoring user (group_vars) and its password, from the vault this test deploys with."""
    vault = run([str(cluster.settings.ansible_bin / "ansible-vault"), "view", *VAULT_ARGS, "group_vars/all/vault.yml"],
                cwd=ANSIBLE_DIR, env=cluster.ansible_env(), quiet=True).stdout
    return GROUP_VARS["monitoring_user"], yaml.safe_load(vault)["vault_monitoring_password"]


def basic_auth(user: str, password: str) -> str:
    """An nsclient --header argument."""
    return "Authorization:Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


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


APP_PYTHON = """set -a && . {env} && set +a && {venv}/bin/python - <<'EOF'
{code}
EOF"""

POOL_NODES = """
import json, os, sqlalchemy
engine = sqlalchemy.create_engine(os.environ["DATABASE_URL"])
with engine.connect() as conn:
    rows = conn.exec_driver_sql("SHOW POOL_NODES").mappings().all()
print(json.dumps([dict(r) for r in rows]))
"""

# Which server the replica endpoint leads a new connection to (round robin over the replicas). The
# app's URL (TLS, verify-full) at the endpoint's port: it connects to the endpoint's address (hostaddr)
# and verifies the name every node's certificate carries (pg_tls_cluster_name).
REPLICA_ENDPOINT_SERVERS = """
import json, os, sqlalchemy
app_url = sqlalchemy.engine.make_url(os.environ["DATABASE_URL"])
url = app_url.set(host={cluster_name!r}, port={port}).update_query_dict({{"hostaddr": app_url.host}})
engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
seen = []
for _ in range({tries}):
    with engine.connect() as conn:
        seen.append(conn.exec_driver_sql("SELECT host(inet_server_addr())").scalar())
print(json.dumps(seen))
"""

# From an app host, as the app role: its own Pgpool-II and a database node's address, each with the
# app's TLS settings (verify-full, the internal CA) and without TLS. Per attempt: whether the client's
# connection is TLS and whether the backend's is (through Pgpool-II: Pgpool-II's own to the node), or
# the error.
TLS_CHECKS = """
import json, os, psycopg2, sqlalchemy
u = sqlalchemy.engine.make_url(os.environ["DATABASE_URL"])
def attempt(host, port, **params):
    try:
        conn = psycopg2.connect(host=host, port=port, user=u.username, password=u.password, dbname=u.database,
                                connect_timeout=10, **params)
    except psycopg2.OperationalError as err:
        return str(err)
    try:
        with conn.cursor() as cur:
            cur.execute("/*NO LOAD BALANCE*/ SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return dict(client=conn.info.ssl_in_use, backend=cur.fetchone()[0])
    finally:
        conn.close()
print(json.dumps(dict(
    pgpool_verified=attempt(u.host, u.port, **u.query),
    pgpool_plain=attempt(u.host, u.port, sslmode="disable"),
    node_verified=attempt({node!r}, {port}, **u.query),
    node_plain=attempt({node!r}, {port}, sslmode="disable"))))
"""


def app_python(cluster: Cluster, host: str, code: str):
    """A Python snippet with the app's environment on an app host; its last line of output, as JSON."""
    pool = "operator" if host in app_hosts("app_operator") else "public"
    out = cluster.ssh(host, APP_PYTHON.format(env=APP_ENV.format(pool=pool), venv=APP_VENV, code=code),
                      quiet=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def app_hosts(group: str) -> list[str]:
    data = yaml.safe_load((ANSIBLE_DIR / "inventories" / "test" / "hosts.yml").read_text())
    return list(data["all"]["children"][group]["hosts"])


def pool_nodes(cluster: Cluster, host: str) -> list[dict]:
    """SHOW POOL_NODES through the Pgpool-II of one app host (its clients are local): backend 0 is the
    primary endpoint, backend 1 the replica endpoint."""
    return app_python(cluster, host, POOL_NODES)


def reads_on_replicas(cluster: Cluster) -> int:
    """Reads that the public pool's Pgpool-IIs sent to their replica endpoint (select_cnt of backend 1)."""
    return sum(int(pool_nodes(cluster, h)[1]["select_cnt"]) for h in app_hosts("app_public"))


def psql(cluster: Cluster, host: str, sql: str, db: str = GROUP_VARS["pg_database"]) -> str:
    r = cluster.ssh(host, f"cd / && runuser -u postgres -- psql -d {db} -qAtXc \"{sql}\"",
                    check=False, quiet=True)
    return r.stdout.strip() if r.returncode == 0 else f"ERROR {r.returncode}: {r.stderr.strip()}"


def crm_psql(cluster: Cluster, sql: str) -> str:
    """psql as the CRM server's superuser, in the CRM's database."""
    return psql(cluster, first(cluster, "crm_db"), sql, db=GROUP_VARS["crm_database"])


TIMELINE = "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
# orders and events, as count:sum of ids: the same on both sides when the copy is exact
PUBLISHED_ROWS = ("SELECT (SELECT count(*) || ':' || coalesce(sum(id), 0) FROM orders) || '/' || "
                  "(SELECT count(*) || ':' || coalesce(sum(id), 0) FROM order_events)")


def crm_in_step(cluster: Cluster) -> str:
    """Once mes crm-guard has verified the primary's timeline, the CRM's copy of orders and events is the MES's:
    no row missing, none extra. Returns the primary's timeline."""
    primary = leader(patroni(cluster))
    timeline = psql(cluster, primary, TIMELINE)
    wait_until(lambda: crm_psql(cluster, "SELECT timeline FROM crm_sync.state") == timeline, 90, interval=1,
               what=f"mes crm-guard to verify the MES's timeline {timeline}")
    wait_until(lambda: crm_psql(cluster, PUBLISHED_ROWS) == psql(cluster, primary, PUBLISHED_ROWS), 60, interval=1,
               what="the CRM's copy of orders and events to equal the MES's")
    return timeline


def db_hosts(cluster: Cluster) -> list[str]:
    return [h for h in cluster.hosts if h.startswith("db")]


def patroni(cluster: Cluster, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """Patroni's view of the cluster (GET /cluster on the first node that answers): member name -> its
    role (leader, sync_standby, replica), state, timeline, lag; {} when none answers."""
    for host in db_hosts(cluster):
        if host in skip:
            continue
        try:
            r = ns_client(cluster, "request", "GET", f"http://{cluster.hosts[host]}:{PORTS['patroni']}/cluster",
                          "--timeout", "3", timeout=20)
        except Exception:       # noqa: BLE001 - a host that is down
            continue
        if r["status"] == 200 and r["json"].get("members"):
            return {m["name"]: m for m in r["json"]["members"]}
    return {}


def leader(members: dict[str, dict]) -> str | None:
    return next((n for n, m in members.items() if m["role"] == "leader"), None)


def replicating(members: dict[str, dict], names: list[str]) -> bool:
    """Every named member follows the leader: runs, same timeline, a known lag."""
    lead = leader(members)
    if lead is None or any(n not in members for n in names):
        return False
    return all(members[n]["role"] in ("sync_standby", "replica") and members[n]["state"] in ("running", "streaming")
               and members[n].get("timeline") == members[lead].get("timeline")
               and isinstance(members[n].get("lag"), int) for n in names)


def service_pid(cluster: Cluster, host: str, unit: str) -> str:
    return cluster.ssh(host, f"systemctl show -p MainPID --value {unit}", quiet=True).stdout.strip()


def lose_host(cluster: Cluster, host: str) -> None:
    """The host is gone at once: SIGKILL to every process of its container (no clean shutdown, Patroni
    cannot give up its leader key)."""
    pids = containers.cgroup_pids(host)
    log(f"losing host {host}: SIGKILL to the {len(pids)} processes of its container")
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: not containers.cgroup_pids(host), 30, interval=0.5, what=f"{host}'s processes to end")


def boot_host(cluster: Cluster, host: str) -> None:
    """Start a lost host's container again (same root, same network namespace) and wait for its sshd."""
    pid = cluster.start_container(host, f"console-{host}-again.log")
    cluster._save(nspawn={**cluster.state["nspawn"], host: pid})
    wait_until(lambda: cluster.ssh(host, "true", check=False, timeout=10, quiet=True).returncode == 0, 90,
               interval=0.5, what=f"sshd on {host} again")


def write_through_haproxy(cluster: Cluster, key: str, reference: str) -> int:
    """Create an order through HAProxy, retrying while the data tier settles; its id."""
    def write_ok():
        r = api(cluster, "POST", "/orders", key, new_order(reference))
        return r if r["status"] == 201 else None
    return wait_until(write_ok, 60, interval=1, what=f"a write of {reference} through HAProxy")["json"]["id"]


@contextmanager
def steady_traffic(cluster: Cluster, what: str, writes_per_second: float = 2, reads: bool = True,
                   open_loop: bool = False):
    """Requests on both pools through HAProxy from the controller namespace while the block runs; yields
    a dict that holds the generator's summary (total, lost, by_target, acked: every acknowledged create)
    once the block has ended. reads=False: only the creates. open_loop: every request leaves on time on
    a fresh connection, whatever the ones before do, and the summary has each one's timeline."""
    key, writer_key = new_client(cluster), new_client(cluster)
    summary: dict = {}
    with tempfile.TemporaryDirectory(prefix="mes-deploy-traffic-") as tmp:
        out, stop = Path(tmp) / "traffic.json", Path(tmp) / "stop"
        targets = [f"create,POST,{url(cluster, 'public', '/api/v1/orders')},{writes_per_second},"
                   f"Authorization:Bearer {writer_key}"]
        if reads:
            targets += [f"list,GET,{url(cluster, 'public', '/api/v1/orders?limit=5')},8,Authorization:Bearer {key}",
                        f"operator,GET,{url(cluster, 'operator', '/operator/login')},5"]
        argv = ["ip", "netns", "exec", CTL_NS, sys.executable, "-m", "tests.deploy.nsclient", "traffic",
                "--out", str(out), "--stop-file", str(stop), "--max-seconds", "1500"]
        if open_loop:
            argv.append("--open-loop")
        for t in targets:
            argv += ["--target", t]
        log(f"traffic starts (in the controller namespace) for {what}")
        traffic = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "REQUESTS_CA_BUNDLE": ca_bundle(cluster)})
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


# --- site.yml ------------------------------------------------------------------------------------------------

def test_site_from_bare_hosts(cluster, extra_vars):
    result = cluster.playbook("site.yml", "--skip-tags", SKIP_TAGS, extra_vars=extra_vars, timeout=1200)
    check_run(cluster, result, "site.yml")
    assert set(result.recap) == set(cluster.site_hosts), result.recap
    PASSED.add("site.yml")


def test_second_run_changes_nothing(cluster, extra_vars):
    need("site.yml")
    result = cluster.playbook("site.yml", "--skip-tags", SKIP_TAGS, extra_vars=extra_vars, timeout=900)
    check_run(cluster, result, "the second site.yml run")
    assert result.changed == 0, "changed on the second run:\n  " + "\n  ".join(result.changed_tasks)


def test_each_pool_runs_in_its_slice_with_its_cpu_weight(cluster):
    """Operators first (role mes_app): every app host's pool runs in the top-level mes_<pool>.slice, whose
    CPUWeight is the pool's cpu_weight from group_vars, and its gunicorn master is in that cgroup."""
    need("site.yml")
    for group, pool in (("app_operator", "operator"), ("app_public", "public")):
        for host in app_hosts(group):
            shown = cluster.ssh(host, f"systemctl show -p Slice --value mes-{pool}.service && "
                                      f"systemctl show -p CPUWeight --value mes_{pool}.slice", quiet=True).stdout
            assert shown.split() == [f"mes_{pool}.slice", str(GROUP_VARS["mes_pools"][pool]["cpu_weight"])], shown
            pid = service_pid(cluster, host, f"mes-{pool}.service")
            cgroup = cluster.ssh(host, f"cat /proc/{pid}/cgroup", quiet=True).stdout
            assert f"/mes_{pool}.slice/mes-{pool}.service" in cgroup, (host, cgroup)


# --- the app through HAProxy -----------------------------------------------------------------------------------

def test_operator_ui_login_through_haproxy(cluster):
    need("site.yml")
    login, password = "deploytest", "deploy-test-pass-1"
    mes_cli(cluster, first(cluster, "app_operator"), "operator",
            f"create-operator {login} --password {password} --role operator")
    r = ns_client(cluster, "operator-login", url(cluster, "operator", ""), login, password)
    assert r["form_status"] == 200 and r["login_status"] == 302, r
    assert r["queue_status"] == 200 and r["queue_has_title"], r
    assert r["session_cookie_secure"], r
    # Plain HTTP: the operator UI moves to HTTPS (HSTS keeps browsers there), the API serves nothing.
    moved = ns_client(cluster, "request", "GET", url(cluster, "http", "/operator/login"))
    # (HAProxy sends header names in lower case, and nsclient returns them as sent)
    assert moved["status"] == 301 and moved["headers"]["location"] == url(cluster, "operator", "/operator/login"), moved
    plain = ns_client(cluster, "request", "GET", url(cluster, "http", "/api/v1/orders"))
    assert plain["status"] == 403 and plain["json"]["type"] == "/problems/https-required", plain


def test_partner_api_creates_and_reads_an_order(cluster):
    need("site.yml")
    key = new_client(cluster)
    created = api(cluster, "POST", "/orders", key, new_order("DT-API-1"))
    assert created["status"] == 201, created
    order = created["json"]
    read = api(cluster, "GET", f"/orders/{order['id']}", key)
    assert read["status"] == 200 and read["json"]["reference"] == "DT-API-1", read
    assert read["headers"]["strict-transport-security"].startswith("max-age="), read["headers"]
    assert api(cluster, "GET", "/orders?limit=5", "not-a-key")["status"] == 401
    PASSED.add("api")


def test_the_crm_database_follows_the_orders_and_its_reader_sees_only_the_views(cluster):
    """The CRM's own server (crm_db) subscribes to the MES's publication: an order made through the API is
    in its views within seconds; its reader sees the views of crm_api and not the copies behind them; its
    copy holds the MES's orders and events exactly (mes crm-guard made the first copy)."""
    need("api")
    key = new_client(cluster)
    created = api(cluster, "POST", "/orders", key, new_order("DT-CRM-1"))
    assert created["status"] == 201, created
    started, order_id = time.monotonic(), created["json"]["id"]
    status = wait_until(lambda: crm_psql(cluster, f"SELECT status FROM crm_api.orders WHERE id = {order_id}") or None,
                        30, interval=0.2, what="the order in the CRM's database")
    log(f"the order reached the CRM's database within {time.monotonic() - started:.1f} s")
    assert status == "received", status
    reader = GROUP_VARS["crm_reader_role"]
    assert crm_psql(cluster, f"SET ROLE {reader}; SELECT reference FROM crm_api.orders WHERE id = {order_id}") == \
        "DT-CRM-1"
    assert "permission denied" in crm_psql(cluster, f"SET ROLE {reader}; SELECT count(*) FROM public.orders")
    assert 0 <= float(crm_psql(cluster, "SELECT lag_seconds FROM crm_api.replication_lag")) < 30
    crm_in_step(cluster)
    PASSED.add("crm")


def test_writes_go_to_the_primary_and_reads_to_the_replica(cluster):
    need("api")
    writer, reader = new_client(cluster), new_client(cluster)
    members = patroni(cluster)
    primary = leader(members)
    standby = next(n for n in members if n != primary)
    assert replicating(members, [standby]), members
    before = reads_on_replicas(cluster)
    created = api(cluster, "POST", "/orders", writer, new_order("DT-RW-1"))
    assert created["status"] == 201, created
    order_id = created["json"]["id"]
    for _ in range(40):      # a client that never wrote: its reads are balanced (public pool -> replicas)
        assert api(cluster, "GET", "/orders?limit=5", reader)["status"] == 200
    assert reads_on_replicas(cluster) - before >= 40
    assert psql(cluster, primary, f"SELECT reference FROM orders WHERE id = {order_id}") == "DT-RW-1"
    assert psql(cluster, primary, "SELECT pg_is_in_recovery()") == "f"
    wait_until(lambda: psql(cluster, standby, f"SELECT reference FROM orders WHERE id = {order_id}") == "DT-RW-1",
               30, what="the order on the replica")
    assert psql(cluster, standby, "SELECT pg_is_in_recovery()") == "t"
    # synchronous replication: the standby is the synchronous one
    assert members[standby]["role"] == "sync_standby", members


# On an app host, with the app's own REDIS_URL: Redis lets the app's user in, refuses a client that does not
# log in or has a wrong password, and the app's user may not run what the app never runs.
REDIS_LOGINS = """
import json, os, redis
from redis.connection import parse_url
url = parse_url(os.environ["REDIS_URL"])
app = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
def refused(call):
    try:
        call()
    except redis.RedisError as exc:
        return type(exc).__name__
    return None
anonymous = redis.Redis(host=url["host"], port=url["port"], protocol=2, socket_timeout=5)
wrong = redis.Redis(host=url["host"], port=url["port"], username=url["username"], password="wrong", socket_timeout=5)
print(json.dumps({"app": app.ping(), "anonymous": refused(anonymous.ping), "wrong_password": refused(wrong.ping),
                  "flushall": refused(app.flushall), "config": refused(lambda: app.config_get("maxmemory"))}))
"""


def test_redis_lets_in_the_apps_user_and_only_to_its_commands(cluster):
    need("api")
    seen = app_python(cluster, first(cluster, "app_public"), REDIS_LOGINS)
    assert seen == {"app": True, "anonymous": "AuthenticationError", "wrong_password": "AuthenticationError",
                    "flushall": "NoPermissionError", "config": "NoPermissionError"}, seen


def test_database_connections_are_tls_and_verified(cluster):
    """From an app host: Pgpool-II and a node refuse a connection without TLS; with the app's settings
    (verify-full against the internal CA) both answer over TLS, and so does Pgpool-II's own connection to
    the node. On the primary no TCP session is without TLS; the standby streams with verify-full."""
    need("api")
    members = patroni(cluster)
    primary = leader(members)
    standby = next(n for n in members if n != primary)
    seen = app_python(cluster, first(cluster, "app_public"),
                      TLS_CHECKS.format(node=cluster.hosts[primary], port=PORTS["postgresql"]))
    assert seen["pgpool_verified"] == {"client": True, "backend": True}, seen
    assert seen["node_verified"] == {"client": True, "backend": True}, seen
    assert "SSL off" in seen["pgpool_plain"], seen           # pool_hba.conf: hostnossl ... reject
    assert "no encryption" in seen["node_plain"], seen       # pg_hba.conf: hostnossl ... reject
    assert psql(cluster, primary, "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                                  "WHERE a.client_addr IS NOT NULL AND NOT s.ssl") == "0"
    conninfo = psql(cluster, standby, "SELECT conninfo FROM pg_stat_wal_receiver")
    assert "sslmode=verify-full" in conninfo, conninfo


def test_prometheus_has_every_target_up(cluster):
    need("site.yml")
    targets_url = url(cluster, "prometheus", "/api/v1/targets", group="monitoring")
    credentials = basic_auth(*monitoring_credentials(cluster))

    def all_up():
        r = ns_client(cluster, "request", "GET", targets_url, "--header", credentials)
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
    assert {"prometheus", "haproxy", "mes_operator", "mes_public", "postgres", "patroni", "haproxy_db", "redis",
            "node", "crm_db"} <= jobs, jobs
    nodes = [t for t in targets if t["labels"]["job"] == "node"]
    assert len(nodes) == len(cluster.site_hosts), [t["scrapeUrl"] for t in nodes]
    balancers = [t for t in targets if t["labels"]["job"] == "haproxy"]
    assert len(balancers) == len(LB_HOSTS), [t["scrapeUrl"] for t in balancers]   # every lb host, not the VIP
    # Each lb host's keepalived reports its VRRP state (textfile collector): exactly one holds the address,
    # the one whose interface has it (alerts MesVirtualAddressNotHeld / HeldTwice read this).
    query = url(cluster, "prometheus", "/api/v1/query?query=mes_vip_held", group="monitoring")

    def vip_series():
        r = ns_client(cluster, "request", "GET", query, "--header", credentials)
        return r["json"]["data"]["result"] if r["status"] == 200 else []

    held = wait_until(lambda: len(vip_series()) == len(LB_HOSTS) and vip_series(), 60, interval=3,
                      what="mes_vip_held from every lb host")
    holders = {s["metric"]["instance"].split(":")[0] for s in held if s["value"][1] == "1"}
    assert holders == {cluster.hosts[vip_holder()]}, (held, vip_holder())


def test_the_monitoring_plane_answers_the_monitoring_user_only(cluster):
    """Prometheus (its lifecycle API too), Alertmanager and both HAProxy stats frontends answer 401 without
    credentials or with a wrong password and 200 with the monitoring user's (from the controller). From an
    app host, Prometheus without credentials is refused: 401, or no connection at all (-1) once the firewall
    lets only the monitoring host reach it. Prometheus scraping both HAProxy exporters with the credentials
    is test_prometheus_has_every_target_up."""
    need("site.yml")
    user, password = monitoring_credentials(cluster)
    app = address(cluster, "app_public")
    urls = [url(cluster, "prometheus", "/api/v1/query?query=up", group="monitoring"),
            url(cluster, "prometheus", "/-/ready", group="monitoring"),
            url(cluster, "alertmanager", "/api/v2/status", group="monitoring"),
            url(cluster, "haproxy_stats", "/stats"),
            url(cluster, "haproxy_stats", "/metrics"),
            f"http://{app}:{PORTS['db_stats']}/stats;csv",
            f"http://{app}:{PORTS['db_stats']}/metrics"]
    for target in urls:
        assert ns_client(cluster, "request", "GET", target)["status"] == 401, target
        wrong = ns_client(cluster, "request", "GET", target, "--header", basic_auth(user, password + "x"))
        assert wrong["status"] == 401, target
        right = ns_client(cluster, "request", "GET", target, "--header", basic_auth(user, password))
        assert right["status"] == 200, (target, right["status"], right["text"][:300])
    for path in ("/-/quit", "/-/reload"):
        target = url(cluster, "prometheus", path, group="monitoring")
        assert ns_client(cluster, "request", "POST", target)["status"] == 401, target
    host = first(cluster, "app_public")
    prometheus = url(cluster, "prometheus", "/api/v1/query?query=up", group="monitoring")
    answer = cluster.adhoc(host, "ansible.builtin.uri", f"url={prometheus} status_code=401 timeout=5")[host]
    assert answer.get("status") in (401, -1), answer


# The packet filter (role firewall), tried from the hosts themselves: a TCP connect that must succeed or
# be dropped (a drop times out; a refusal would mean the port was reachable).
CONNECT = ("python3 -c 'import socket, sys\n"
           "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close(); print(\"open\")\n"
           "except socket.timeout: print(\"dropped\")\n"
           "except OSError as e: print(\"refused\" if e.errno == 111 else repr(e))' {host} {port}")


def test_the_firewall_lets_in_only_the_topologys_flows(cluster):
    """The load balancer cannot reach PostgreSQL or Redis; an app host can. Every host's table drops
    what it does not let in, and sshd takes keys only."""
    need("site.yml")
    db, redis, lb = address(cluster, "db_primary"), address(cluster, "redis"), first(cluster, "lb")
    cases = {(lb, db, PORTS["postgresql"]): "dropped", (lb, redis, PORTS["redis"]): "dropped",
             (first(cluster, "app_public"), db, PORTS["postgresql"]): "open",
             (first(cluster, "app_public"), redis, PORTS["redis"]): "open"}
    for (source, host, port), expected in cases.items():
        result = cluster.adhoc(source, "ansible.builtin.shell", CONNECT.format(host=host, port=port))[source]
        assert result.get("stdout") == expected, (source, host, port, result)
    tables = cluster.adhoc("all", "ansible.builtin.command", "nft list chain inet mes_firewall input")
    assert len(tables) >= 10, sorted(tables)          # every host site.yml set up
    for host, result in tables.items():
        assert "policy drop" in result.get("stdout", ""), (host, result)
    sshd = cluster.adhoc("db1", "ansible.builtin.command", "sshd -T")["db1"]
    assert "passwordauthentication no" in sshd["stdout"], sshd


# --- operations ----------------------------------------------------------------------------------------------

def test_rolling_deploy_loses_no_request(cluster, extra_vars):
    need("api")
    workers = {host: service_pid(cluster, host, "mes-webhooks.service") for host in app_hosts("app_public")}
    with steady_traffic(cluster, "deploy.yml") as summary:
        release = {"mes_app_release": f"deploytest-{int(time.time())}"}
        result = cluster.playbook("deploy.yml", extra_vars={**extra_vars, **release}, timeout=900)
    check_run(cluster, result, "deploy.yml")
    assert summary["total"] >= 100, summary
    assert summary["lost"] == 0, summary
    # The webhook delivery worker of every public host is active and was restarted into the new release.
    for host, before in workers.items():
        active = cluster.ssh(host, "systemctl is-active mes-webhooks.service", check=False, quiet=True).stdout.strip()
        assert active == "active" and service_pid(cluster, host, "mes-webhooks.service") not in (before, "0"), host


# --- the load balancers ---------------------------------------------------------------------------------------

def holds_vip(host: str) -> bool:
    """Whether the host's interface has the virtual address (read in its network namespace, which outlives
    its container: fast, and also right for a host whose processes are gone)."""
    r = run(["ip", "-n", network.netns(host), "-4", "-o", "addr", "show", "to", VIP], check=False, quiet=True)
    return bool(r.stdout.strip())


def vip_holder() -> str | None:
    holders = [h for h in LB_HOSTS if holds_vip(h)]
    return holders[0] if len(holders) == 1 else None


def keepalived_state(cluster: Cluster, host: str) -> str:
    """The VRRP state keepalived entered last on the host (MASTER, BACKUP, FAULT), from its journal."""
    r = cluster.ssh(host, "journalctl -u keepalived -b -o cat --no-pager | grep -oE 'Entering [A-Z]+ STATE' | tail -1",
                    check=False, quiet=True)
    return r.stdout.split()[1] if r.stdout.strip() else ""


def key_rate(cluster: Cluster, host: str, key: str) -> int:
    """The API key's http_req_rate in the host's HAProxy (st_public_key holds the SHA-256 of keys); 0: none."""
    table = cluster.ssh(host, f"echo 'show table st_public_key' | socat stdio unix-connect:{HAPROXY_SOCKET}",
                        check=False, quiet=True).stdout
    found = re.search(rf"key={hashlib.sha256(key.encode()).hexdigest().upper()} .*http_req_rate\(\d+\)=(\d+)", table)
    return int(found.group(1)) if found else 0


def peer_connected(cluster: Cluster, host: str, other: str) -> bool:
    """The host's HAProxy shares its stick tables with the other's (show peers: the session is established)."""
    peers = cluster.ssh(host, f"echo 'show peers' | socat stdio unix-connect:{HAPROXY_SOCKET}", check=False,
                        quiet=True).stdout
    return bool(re.search(rf"id={other}\(remote,[a-z]+\) addr=\S+ last_status=ESTA", peers))


def lose_lb_host(cluster: Cluster, host: str) -> float:
    """The host is gone at once, as on a power cut: its cable pulled (it sends nothing more), then every
    process of its container SIGKILLed. Returns when the cable was pulled (epoch seconds)."""
    network.cable(host, connected=False)
    at = time.time()
    lose_host(cluster, host)
    return at


def bring_back_lb_host(cluster: Cluster, host: str) -> None:
    """Boot the host again as a reboot would: the virtual address that its killed keepalived left on the
    interface is gone, the cable is back."""
    prefix = SUBNET.split("/")[1]
    run(["ip", "-n", network.netns(host), "addr", "del", f"{VIP}/{prefix}", "dev", "eth0"], check=False, quiet=True)
    network.cable(host, connected=True)
    boot_host(cluster, host)


def answered(row: list) -> bool:
    return row[3].isdigit() and int(row[3]) < 400


def outage(summary: dict, event: float, until: float = float("inf")) -> dict:
    """What an event (epoch seconds) cost the open-loop traffic, among the requests that ended after it
    (and before `until`): those that failed, those in flight at the event, those that failed although
    sent more than 0.5 s after it, and the longest time without any answer (traffic stood still)."""
    at, end = event - summary["started_at"], until - summary["started_at"]
    rows = [r for r in summary["timeline"] if at <= r[2] < end]
    failed = [r for r in rows if not answered(r)]
    answers = sorted(r[2] for r in summary["timeline"] if answered(r) and at - 1 <= r[2] < end)
    return {"failed": len(failed), "in_flight": sum(1 for r in rows if r[1] < at),
            "failed_sent_later": [r for r in failed if r[1] > at + 0.5],
            "no_answer_for_s": round(max((y - x for x, y in zip(answers, answers[1:])), default=0), 2),
            "failures": dict(Counter(r[3] for r in failed))}


def test_loss_of_the_active_load_balancer_moves_the_virtual_address(cluster):
    """Under open-loop traffic through the virtual address: (1) HAProxy stops on the lb host that holds
    it (the host lives on): keepalived's check fails there and the address moves; HAProxy starts again
    there, which makes that host a backup. (2) An API key is flooded over its limit on the new holder,
    which is then lost outright (cable pulled, every process killed): the address moves back, only the
    requests in flight on the lost host fail, and the key is still refused by the other host (the stick
    tables are shared as peers). The lost host boots again and rejoins as a backup, with the tables."""
    need("api")
    assert VIP and len(LB_HOSTS) >= 2, (VIP, LB_HOSTS)
    first = wait_until(vip_holder, 30, what="one lb host to hold the virtual address")
    second = next(h for h in LB_HOSTS if h != first)
    flood_key, calm_key = new_client(cluster), new_client(cluster)
    # Far over the key's limit (its rate decays once the flood ends), below the source-address limit of the
    # flood's own address (CLIENT2_IP: the traffic's address keeps its own counters).
    flood_count = GROUP_VARS["haproxy_src_rate_limit"] - 100
    assert flood_count > 2 * GROUP_VARS["haproxy_key_rate_limit"]
    with steady_traffic(cluster, "the loss of a load balancer", open_loop=True) as summary:
        stopped = time.time()
        cluster.ssh(first, "systemctl stop haproxy")
        wait_until(lambda: holds_vip(second) and not holds_vip(first), 30, interval=0.05,
                   what=f"the virtual address to move from {first} to {second}")
        moved = time.time() - stopped
        log(f"HAProxy stopped on {first}: the virtual address is on {second} {moved:.1f} s later")
        cluster.ssh(first, "systemctl start haproxy")
        wait_until(lambda: keepalived_state(cluster, first) == "BACKUP", 60, interval=0.5,
                   what=f"{first} to be a backup again")
        wait_until(lambda: peer_connected(cluster, first, second), 30, interval=0.5,
                   what=f"{first}'s HAProxy to share the stick tables with {second}'s")

        flood = ns_client(cluster, "flood", url(cluster, "public", "/not-an-api-path"), "--count", str(flood_count),
                          "--threads", "8", "--source", CLIENT2_IP, "--header", f"Authorization:Bearer {flood_key}",
                          timeout=180)
        lost_at = lose_lb_host(cluster, second)
        wait_until(lambda: holds_vip(first), 30, interval=0.05, what=f"the virtual address to move to {first}")
        moved_back = time.time() - lost_at
        log(f"{second} lost: the virtual address is on {first} {moved_back:.1f} s later")
        refused = api(cluster, "GET", "/orders?limit=1", flood_key)
        calm = api(cluster, "GET", "/orders?limit=1", calm_key)
        rate_there = key_rate(cluster, first, flood_key)
        time.sleep(5)

    stop_cost, loss_cost = outage(summary, stopped, until=lost_at), outage(summary, lost_at)
    log(f"HAProxy stopped on {first}: {stop_cost}")
    log(f"host {second} lost: {loss_cost}; the flood ({flood}) left its key at {rate_there} requests/10 s on {first}")
    assert moved < 10 and stop_cost["no_answer_for_s"] < 10, stop_cost
    # Only requests sent to the stopped HAProxy before the address moved away from it fail. A request
    # still out when the second host is lost is that loss's cost (in flight on it), counted below.
    assert not [r for r in summary["timeline"] if not answered(r) and stopped - summary["started_at"] + moved + 1
                < r[1] and r[2] < lost_at - summary["started_at"]], \
        (stop_cost, f"moved {moved:.1f} s after the stop at {stopped - summary['started_at']:.1f} s, "
                    f"{second} lost at {lost_at - summary['started_at']:.1f} s")
    assert moved_back < 15 and loss_cost["no_answer_for_s"] < 15, loss_cost
    # The goal: the loss of a load balancer costs the requests in flight on it, nothing sent afterwards.
    assert not loss_cost["failed_sent_later"], loss_cost
    assert loss_cost["failed"] <= loss_cost["in_flight"], loss_cost
    # The key over its limit on the lost host is refused by the new holder, by HAProxy (not the app).
    assert flood["statuses"].get("429", 0) > 0, flood
    assert refused["status"] == 429 and "key-rate" in refused["json"]["detail"], (refused, rate_there)
    assert "ratelimit-limit" not in {k.lower() for k in refused["headers"]}, refused  # HAProxy, not the app
    assert calm["status"] == 200, calm

    api(cluster, "GET", "/orders?limit=1", flood_key)      # the key's entry lives 60 s from now on
    bring_back_lb_host(cluster, second)
    booted_at = time.monotonic()
    wait_until(lambda: keepalived_state(cluster, second) == "BACKUP", 90, interval=1,
               what=f"{second} to rejoin as a backup")
    assert holds_vip(first) and not holds_vip(second)        # no second move: nopreempt
    learnt = wait_until(lambda: key_rate(cluster, second, flood_key), 30, interval=1,
                        what=f"{second}'s HAProxy to learn the stick tables from {first}")
    log(f"{second} is a backup again {time.monotonic() - booted_at:.1f} s after it booted; "
        f"its HAProxy learnt the flooded key ({learnt} requests/10 s) from {first}")
    PASSED.add("lb")


def test_loss_of_the_primary_host_loses_no_acknowledged_order_and_it_rejoins(cluster, alert_receiver):
    """... and the failover reaches a person: Alertmanager on the monitoring host sends PatroniFailover
    for the new primary as a ticket to the receiver of the inventory."""
    need("api")
    notified = len(alert_receiver())
    members = patroni(cluster)
    old_primary = leader(members)
    others = [n for n in members if n != old_primary]
    with steady_traffic(cluster, "the loss of the primary's host", writes_per_second=4, reads=False) as summary:
        lose_host(cluster, old_primary)
        lost_at = time.monotonic()
        promoted = wait_until(lambda: (lambda m: m if leader(m) in others else None)(patroni(cluster, (old_primary,))),
                              90, interval=1, what="Patroni to promote a replica")
        log(f"{leader(promoted)} leads {time.monotonic() - lost_at:.1f} s after {old_primary} was lost")
        write_through_haproxy(cluster, new_client(cluster), "DT-FO-1")
        log(f"writes through HAProxy work again {time.monotonic() - lost_at:.1f} s after the loss")
        time.sleep(5)
    new_primary = leader(promoted)
    acked = [a["reference"] for a in summary["acked"]]
    assert acked and max(a["t"] for a in summary["acked"]) > summary["seconds"] - 15, \
        "no acknowledged write after the failover"
    refs = ", ".join(f"'{r}'" for r in acked)
    found = int(psql(cluster, new_primary, f"SELECT count(*) FROM orders WHERE reference IN ({refs})"))
    log(f"{len(acked)} acknowledged orders, {found} on {new_primary}; "
        f"{summary['lost']} requests failed during the failover")
    assert found == len(acked), f"{len(acked) - found} acknowledged orders are missing"
    if "crm" in PASSED:  # the CRM's copy follows the new primary: every acknowledged order, nothing extra
        timeline = crm_in_step(cluster)
        in_crm = int(crm_psql(cluster, f"SELECT count(*) FROM crm_api.orders WHERE reference IN ({refs})"))
        assert in_crm == len(acked), f"{len(acked) - in_crm} acknowledged orders are missing in the CRM's database"
        log(f"the CRM's database: all {len(acked)} acknowledged orders, equal to {new_primary}'s on timeline {timeline}")

    boot_host(cluster, old_primary)
    booted_at = time.monotonic()
    back = wait_until(lambda: (lambda m: m if replicating(m, [old_primary]) else None)(patroni(cluster)), 180,
                      interval=2, what=f"{old_primary} to rejoin as a replica")
    log(f"{old_primary} replicates from {new_primary} {time.monotonic() - booted_at:.1f} s after its host booted")
    assert leader(back) == new_primary, back
    assert psql(cluster, old_primary, "SELECT pg_is_in_recovery()") == "t"
    assert int(psql(cluster, old_primary, f"SELECT count(*) FROM orders WHERE reference IN ({refs})")) == len(acked)

    def ticket() -> dict | None:
        return next((n for n in alert_receiver()[notified:] if n["receiver"] == "tickets" and any(
            a["status"] == "firing" and a["labels"].get("alertname") == "PatroniFailover"
            and a["labels"].get("node") == new_primary for a in n["alerts"])), None)
    # within a scrape, an evaluation and group_wait (30 s) of the promotion: long since, or soon
    sent = wait_until(ticket, 120, interval=2, what=f"PatroniFailover for {new_primary} at the receiver")
    log(f"PatroniFailover for {new_primary} reached the receiver at {sent['received_at']} "
        f"({time.monotonic() - lost_at:.0f} s after the loss; receiver log {cluster.logs / 'alert_receiver.log'})")
    PASSED.add("failover")


def test_planned_switchover_back_to_the_first_primary(cluster):
    need("failover")
    target = first(cluster, "db_primary")
    old_primary = leader(patroni(cluster))
    assert old_primary != target
    result = cluster.playbook("switchover.yml", extra_vars={"switchover_target": target}, timeout=600)
    check_run(cluster, result, "switchover.yml")
    members = wait_until(lambda: (lambda m: m if replicating(m, [old_primary]) else None)(patroni(cluster)), 90,
                         interval=2, what=f"{old_primary} to follow {target}")
    assert leader(members) == target, members
    key = new_client(cluster)
    order_id = write_through_haproxy(cluster, key, "DT-SW-1")
    assert psql(cluster, target, f"SELECT reference FROM orders WHERE id = {order_id}") == "DT-SW-1"
    if "crm" in PASSED:  # the subscription follows the switchover
        crm_in_step(cluster)
        assert crm_psql(cluster, f"SELECT reference FROM crm_api.orders WHERE id = {order_id}") == "DT-SW-1"
    PASSED.add("switchover")


def pgbackrest_info(cluster: Cluster) -> dict:
    r = cluster.ssh(first(cluster, "backup"), f"cd / && runuser -u postgres -- pgbackrest "
                    f"--stanza={GROUP_VARS['pgbackrest_stanza']} --output=json info")
    return json.loads(r.stdout)[0]


def test_backups_are_scheduled_and_taken_on_demand(cluster):
    """site.yml made the stanza, took a first full backup and runs the timers on the repository's
    host; backup.yml takes a differential one there (pgBackRest finds the primary)."""
    need("api")
    repo = first(cluster, "backup")
    timers = ["pgbackrest-backup-full.timer", "pgbackrest-backup-diff.timer"]
    r = cluster.ssh(repo, f"systemctl is-enabled {' '.join(timers)}; systemctl is-active {' '.join(timers)}",
                    check=False)
    assert r.stdout.split() == ["enabled"] * 2 + ["active"] * 2, r.stdout + r.stderr
    assert [b["type"] for b in pgbackrest_info(cluster)["backup"]][:1] == ["full"]
    result = cluster.playbook("backup.yml", extra_vars={"backup_type": "diff"}, timeout=900)
    check_run(cluster, result, "backup.yml")
    stanza = pgbackrest_info(cluster)
    assert stanza["status"]["code"] == 0 and stanza["backup"][-1]["type"] == "diff", stanza
    assert stanza["cipher"] == "aes-256-cbc", stanza
    PASSED.add("backup")


def test_a_point_in_time_restore_onto_a_host_that_never_ran_postgresql(cluster, extra_vars):
    """An order, the target time, another order; restore.yml onto rest1 (the spare host; no PostgreSQL
    ever ran there) has the first order and not the second."""
    need("backup")
    host = "rest1"
    assert cluster.ssh(host, "test -e /usr/lib/postgresql", check=False).returncode != 0
    key = new_client(cluster)
    write_through_haproxy(cluster, key, "DT-PITR-BEFORE")
    primary = leader(patroni(cluster))
    target = psql(cluster, primary, "SELECT clock_timestamp()")
    time.sleep(1)
    write_through_haproxy(cluster, key, "DT-PITR-AFTER")
    # the WAL past the target reaches the repository
    psql(cluster, primary, "SELECT pg_switch_wal()")
    wait_until(lambda: psql(cluster, primary, "SELECT last_archived_wal >= pg_walfile_name(pg_current_wal_lsn() - 1) "
                                              "FROM pg_stat_archiver") == "t",
               60, interval=1, what="the WAL past the target to be archived")
    result = cluster.playbook("restore.yml", extra_vars={**extra_vars, "restore_host": host, "restore_target": target},
                              with_spares=True, timeout=900)
    check_run(cluster, result, "restore.yml")
    found = psql(cluster, host, "SELECT reference FROM orders WHERE reference LIKE 'DT-PITR-%' ORDER BY 1")
    assert found.split() == ["DT-PITR-BEFORE"], (found, target)
    assert psql(cluster, host, "SELECT pg_is_in_recovery()") == "f"
    # archiving is off there: the copy never writes into the cluster's archive
    assert psql(cluster, host, "SHOW archive_mode") == "off"
    PASSED.add("restore")


def test_a_new_replica_joins_under_traffic_and_gets_reads(cluster, extra_vars):
    need("switchover", "backup")
    new = "db3"                                                             # of the spare inventory
    apps = app_hosts("app_operator") + app_hosts("app_public")
    pids_before = {h: (service_pid(cluster, h, "pgpool2"), service_pid(cluster, h, "haproxy-db")) for h in apps}
    with steady_traffic(cluster, "add_replica.yml") as summary:
        result = cluster.playbook("add_replica.yml", extra_vars={**extra_vars, "new_replica": new}, with_spares=True,
                                  timeout=900)
    check_run(cluster, result, "add_replica.yml")
    assert summary["total"] >= 50 and summary["lost"] == 0, summary
    pids_after = {h: (service_pid(cluster, h, "pgpool2"), service_pid(cluster, h, "haproxy-db")) for h in apps}
    assert pids_after == pids_before, "Pgpool-II or the database endpoints were restarted, not left or reloaded"
    members = wait_until(lambda: (lambda m: m if replicating(m, [new]) else None)(patroni(cluster)), 120,
                         interval=2, what=f"{new} to replicate")
    primary = leader(members)
    assert psql(cluster, new, "SELECT pg_is_in_recovery()") == "t"
    # Patroni restored it from pgBackRest's repository (not a copy of the primary)
    created = cluster.ssh(new, "journalctl -u patroni --no-pager | grep -c 'replica has been created using pgbackrest'",
                          check=False)
    assert created.stdout.strip() not in ("", "0"), created.stdout + created.stderr
    # (the standbys' walsenders; the CRM's subscription has a logical one too)
    assert psql(cluster, primary, f"SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' "
                                  f"AND usename = '{GROUP_VARS['pg_replication_role']}'") == "2"
    # every app host's replica endpoint leads new connections to it too
    for host in apps:
        probe = REPLICA_ENDPOINT_SERVERS.format(port=PORTS["db_replicas"], tries=6,
                                                cluster_name=GROUP_VARS["pg_tls_cluster_name"])
        seen = app_python(cluster, host, probe)
        assert cluster.hosts[new] in seen, (host, seen)
    PASSED.add("add_replica")
