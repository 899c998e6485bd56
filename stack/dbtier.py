"""The database tier of the one-machine stack, as plain processes on loopback, configured from the same
templates (etcd/, patroni/, postgresql/, haproxy/db.cfg.j2, pgpool/) that the Ansible roles render:

- `Etcd(member)`: one member of mes_topology.etcd, the consensus store of Patroni's leader key.
- `PatroniNode(node)`: Patroni for one entry of mes_topology.pg_nodes. Patroni initialises the first
  node, clones the others, restarts a crashed PostgreSQL, promotes a synchronous standby when the
  leader's key expires and rejoins an old primary (pg_rewind, or a new clone). The stack only starts,
  stops and waits for it.
- `PatroniCluster()`: waits until the cluster has a leader and every node runs (a replica: streams, and
  one of them is the synchronous standby), then applies roles and database (postgresql/roles.sql.j2).
- `DbEndpoints()`: HAProxy's primary and replica endpoints, checked against Patroni's REST API.
- `Pgpool()`: Pgpool-II with those two endpoints as its backends; it splits reads from writes and pools
  connections, and decides no failover.
- `PostgresExporter(node)`: Debian's prometheus-postgres-exporter for one node.
- `PgpoolExporter()`: the same program through Pgpool-II, with Pgpool-II's SHOW commands as its only
  queries (monitoring/pgpool_exporter_queries.yml): backends, select counts, client slots in use.

Every TCP connection to a node or to Pgpool-II is TLS, with certificates of the stack's CA
(stack/pki.py); every client verifies the server's (sslmode=verify-full, `tls_params`).

Each component has `name`, `up(ctx)`, `down(ctx)`, `status(ctx) -> (answers, detail)`. Helpers for
tests and benchmarks: `psql`, `cluster`, `primary_node`, `standby_nodes`, `maintenance`,
`pause_replay`, `resume_replay`, `pool_nodes`, `kill_node`, `database_urls`, `tls_params`.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import signal
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlencode

import yaml

from . import monauth, pki
from .base import ROOT, Ctx, StackError, alive, chown, shared_plugin, wait_until
from .services import Daemon, http_ok

PG_USER = "postgres"        # OS user of postgres, Patroni, pgpool and the exporters
SUPERUSER = "postgres"      # database superuser, reachable only over the node's unix socket
EXPORTER_BIN = "prometheus-postgres-exporter"
# Patroni in its own virtualenv on Debian's python3 (requirements-patroni.txt, patroni/README.md).
PATRONI = ROOT / ".venv-patroni" / "bin" / "patroni"
PATRONICTL = PATRONI.with_name("patronictl")
EXPORTER_QUERIES = ROOT / "monitoring" / "postgres_exporter_queries.yml"
PGPOOL_EXPORTER_QUERIES = ROOT / "monitoring" / "pgpool_exporter_queries.yml"
# The Pgpool-II exporter sends no query of its own but `SELECT version()` (the default metrics and the
# collectors are off): only Pgpool-II's SHOW commands, answered by Pgpool-II itself.
PGPOOL_EXPORTER_ARGS = ["--disable-default-metrics", "--disable-settings-metrics", "--no-collector.database",
                        "--no-collector.bgwriter", "--log.level=warn"]


# --- small helpers ----------------------------------------------------------------------------------

def _topology(ctx: Ctx) -> dict:
    return ctx.vars["mes_topology"]


def _secrets(ctx: Ctx) -> dict:
    return ctx.vars["mes_secrets"]


def _bin(ctx: Ctx, program: str) -> str:
    return str(Path(_topology(ctx)["pg_bindir"]) / program)


def _is_root() -> bool:
    return os.geteuid() == 0


def _pg_home() -> str:
    try:
        import pwd
        return pwd.getpwnam(PG_USER).pw_dir if _is_root() else os.environ.get("HOME", "/")
    except KeyError:
        return "/"


def _write_private(path: Path, text: str, mode: int = 0o600, owner: str | None = PG_USER) -> bool:
    """Write a file only readable by its owner; True if its content changed."""
    changed = not path.exists() or path.read_text() != text
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
    path.chmod(mode)
    if owner:
        chown(path, owner)
    return changed


def _render(ctx: Ctx, template: str, dest: Path, *, mode: int, owner: str = PG_USER,
            extra: dict | None = None) -> bool:
    """ctx.render, owned by `owner`; True if the content changed."""
    before = dest.read_text() if dest.exists() else None
    ctx.render(template, dest, mode=mode, owner=owner, extra=extra)
    return dest.read_text() != before


def _pid_in(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError, PermissionError):
        return None


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def nodes(ctx: Ctx) -> list[dict]:
    return list(_topology(ctx)["pg_nodes"])


def node_by_name(ctx: Ctx, name: str) -> dict:
    for node in nodes(ctx):
        if node["name"] == name:
            return node
    raise StackError(f"no PostgreSQL node named {name!r} in mes_topology.pg_nodes")


def socket_dir(node: dict) -> Path:
    """The node's unix socket folder (local stack: beside its data dir; VMs: /var/run/postgresql)."""
    return Path(node.get("socket_dir", "/var/run/postgresql"))


def _san(host: str) -> str:
    """A subject alternative name for a host: an IP address or a DNS name."""
    return f"IP:{host}" if host.replace(".", "").isdigit() or ":" in host else f"DNS:{host}"


def tls_params(ctx: Ctx) -> dict[str, str]:
    """What every client of a node or of Pgpool-II adds to its connection: TLS, the server's
    certificate checked against the stack's CA and the host name it was reached by."""
    return {"sslmode": "verify-full", "sslrootcert": str(pki.ca_file(ctx))}


def _node_certificate(ctx: Ctx, node: dict) -> dict:
    """The node's certificate (its address, and the cluster's name for clients that come through the
    database endpoints), made on first use; the template variables that name the files."""
    names = [_san(node["host"]), f"DNS:{ctx.vars['pg_tls_cluster_name']}"]
    if node["host"] in ("127.0.0.1", "::1"):
        # Patroni reaches its own node listening on loopback as "localhost" (its replication
        # connection that checks the timeline before a rewind), and verifies it like any other.
        names.append("DNS:localhost")
    crt, key = pki.certificate(ctx, f"{node['name']}-postgresql", names, owner=PG_USER)
    return {"pg_tls_cert": str(crt), "pg_tls_key": str(key), "pg_tls_ca": str(pki.ca_file(ctx))}


def _node_extra(ctx: Ctx, node: dict) -> dict:
    """What the node templates (patroni/, postgresql/) need besides the variables."""
    return {"pg_node_name": node["name"], "pg_socket_dir": str(socket_dir(node)),
            "pg_local_auth": "peer" if _is_root() else "trust", **_node_certificate(ctx, node)}


# --- SQL as the superuser over the node's socket ----------------------------------------------------

def psql(ctx: Ctx, node: dict, sql: str, db: str = "postgres", *, timeout: float = 60) -> str:
    """Run `sql` (one or more statements) as the superuser over the node's unix socket; psql -At output.
    Statements run one by one (psql -f), so e.g. CREATE DATABASE works; the first error raises."""
    tmp = ctx.ensure_dir(ctx.path("tmp"), mode=0o755)
    fd, name = tempfile.mkstemp(prefix="psql-", suffix=".sql", dir=tmp)
    path = Path(name)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(sql)
        chown(path, PG_USER)  # stays 0600: it may carry passwords
        argv = [_bin(ctx, "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(socket_dir(node)),
                "-p", str(node["port"]), "-U", SUPERUSER, "-d", db, "-f", str(path)]
        return ctx.run(argv, user=PG_USER, timeout=timeout).stdout.strip()
    finally:
        path.unlink(missing_ok=True)


def _try_psql(ctx: Ctx, node: dict, sql: str, db: str = "postgres", timeout: float = 10) -> str | None:
    try:
        return psql(ctx, node, sql, db, timeout=timeout)
    except Exception:  # noqa: BLE001 - a node that does not answer
        return None


# --- Patroni's REST API -----------------------------------------------------------------------------

def rest_send(node: dict, method: str, path: str, body: dict, timeout: float = 60) -> int:
    """PATCH or POST `body` (JSON) to one of Patroni's REST endpoints on `node`: the HTTP status."""
    request = urllib.request.Request(f"http://{node['host']}:{node['patroni_port']}{path}", method=method,
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def rest(node: dict, path: str, timeout: float = 2) -> tuple[int, dict]:
    """GET one of Patroni's REST endpoints on `node`: (HTTP status, JSON body); (0, {}) if it does not
    answer. /primary, /replica and /health answer 503 with a body when the node is not that."""
    url = f"http://{node['host']}:{node['patroni_port']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read() or b"{}")
        except ValueError:
            return err.code, {}
    except (OSError, ValueError):
        return 0, {}


def cluster(ctx: Ctx) -> dict:
    """Patroni's view of the cluster (GET /cluster on the first node that answers): members with
    name, role (leader, sync_standby, replica), state, timeline and lag; {} when no node answers."""
    for node in nodes(ctx):
        status, body = rest(node, "/cluster")
        if status == 200 and "members" in body:
            return body
    return {}


def leader_name(ctx: Ctx) -> str | None:
    return next((m["name"] for m in cluster(ctx).get("members", []) if m.get("role") == "leader"), None)


def primary_node(ctx: Ctx) -> dict:
    """The node that holds the leader key and runs as the primary (its /primary answers 200)."""
    for node in nodes(ctx):
        if rest(node, "/primary")[0] == 200:
            return node
    raise StackError("no running PostgreSQL primary (no Patroni answers 200 on /primary)")


def standby_nodes(ctx: Ctx) -> list[dict]:
    """The running streaming replicas (their /replica answers 200)."""
    return [n for n in nodes(ctx) if rest(n, "/replica")[0] == 200]


def maintenance(ctx: Ctx, on: bool, timeout: float = 30) -> None:
    """Patroni's maintenance mode (the cluster's `pause`) on or off; returns once every running node
    has it (each one reads the setting at its next HA loop)."""
    if rest_send(primary_node(ctx), "PATCH", "/config", {"pause": on}, timeout=10) != 200:
        raise StackError(f"Patroni refused pause={on}")

    def taken() -> bool:  # by every node whose Patroni answers
        answers = [rest(n, "/patroni") for n in nodes(ctx)]
        return all(body.get("pause", False) == on for code, body in answers if code == 200)

    if not wait_until(taken, timeout, interval=0.3):
        raise StackError(f"Patroni's nodes did not take pause={on} within {timeout:.0f} s")
    if on:  # a node's REST API may know it before its HA loop, which read the cluster at the cycle's start
        time.sleep(ctx.vars["patroni_loop_wait"] + 0.5)


def pause_replay(ctx: Ctx, timeout: float = 30) -> list[str]:
    """Pause WAL replay on every running standby (reads there go stale); returns their names. Raises
    when there is no standby to pause, or one does not pause: a caller relies on stale reads.

    Patroni goes into maintenance mode first: otherwise its next HA loop resumes the replay (PostgreSQL
    14+ pauses replay itself when the primary's settings outgrow the standby's, and Patroni undoes any
    pause it finds). `resume_replay` ends both."""
    deadline = time.monotonic() + timeout
    while not (standbys := standby_nodes(ctx)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no running standby to pause within {timeout:.0f} s")
        time.sleep(0.5)
    maintenance(ctx, True)
    for node in standbys:
        psql(ctx, node, "SELECT pg_wal_replay_pause()")
        # "pause requested" holds too: the startup process checks before each record it applies, and an
        # idle standby (no WAL coming) says "paused" only once the next record arrives.
        if not wait_until(lambda n=node: psql(ctx, n, "SELECT pg_get_wal_replay_pause_state()")
                          in ("paused", "pause requested"), 10):
            raise RuntimeError(f"{node['name']}: replay did not pause")
    return [n["name"] for n in standbys]


def resume_replay(ctx: Ctx) -> list[str]:
    """Resume WAL replay on every running standby, and end Patroni's maintenance mode; returns their
    names."""
    names = []
    for node in standby_nodes(ctx):
        psql(ctx, node, "SELECT pg_wal_replay_resume()")
        names.append(node["name"])
    maintenance(ctx, False)
    return names


# --- etcd -------------------------------------------------------------------------------------------

class Etcd(Daemon):
    """One etcd member, as the etcd user, configured by etcd/etcd.conf.yml.j2."""

    user = "etcd"

    def __init__(self, member: dict):
        self.member = member
        self.name = member["name"]

    def _conf(self) -> Path:
        return Path(self.member["dir"]) / "etcd.conf.yml"

    def prepare(self, ctx):
        ctx.ensure_dir(Path(self.member["dir"]), owner=self.user, mode=0o700)
        _render(ctx, "etcd/etcd.conf.yml.j2", self._conf(), mode=0o600, owner=self.user,
                extra={"etcd_member_name": self.name})

    def argv(self, ctx):
        return ["etcd", "--config-file", str(self._conf())]

    def ready(self, ctx):
        """Listening: a new member is healthy only once a quorum runs, so the members are started
        one after another without waiting for that (Patroni waits for etcd itself)."""
        try:
            socket.create_connection((self.member["host"], self.member["client_port"]), timeout=1).close()
            return True
        except OSError:
            return False

    def status(self, ctx):
        if not ctx.pid(self.name):
            return False, "not running"
        healthy = http_ok(f"http://{self.member['host']}:{self.member['client_port']}/health")
        return healthy, f"client {self.member['host']}:{self.member['client_port']}, " + (
            "healthy" if healthy else "NOT healthy (no quorum?)")


# --- Patroni and PostgreSQL -------------------------------------------------------------------------

class PatroniNode(Daemon):
    """Patroni (and under it PostgreSQL) for one node of mes_topology.pg_nodes, as the postgres user.
    `up` returns once Patroni answers on its REST API; whether PostgreSQL runs is PatroniCluster's
    wait, after every node was started: a node may need another one first (a diverged old primary
    can only be rewound once the newer primary runs, whatever the start order)."""

    user = PG_USER
    start_timeout = 180

    def __init__(self, node: dict):
        self.node = node
        self.name = node["name"]
        self.data_dir = Path(node["data_dir"])
        self.conf_dir = Path(node["conf_dir"])

    def __repr__(self) -> str:
        return f"PatroniNode({self.name})"

    def _patroni_yml(self) -> Path:
        return self.conf_dir / "patroni.yml"

    def prepare(self, ctx):
        base = self.data_dir.parent
        if (self.data_dir / "PG_VERSION").exists() and not self._patroni_yml().exists():
            raise StackError(f"{self.data_dir} was made by an earlier version of the stack, without Patroni: "
                             "run `make reset` (it wipes the stack's data) and `make up` again")
        ctx.ensure_dir(base, owner=PG_USER, mode=0o700)
        ctx.ensure_dir(self.conf_dir, owner=PG_USER, mode=0o700)
        ctx.ensure_dir(socket_dir(self.node), owner=PG_USER, mode=0o755)
        extra = _node_extra(ctx, self.node)
        changed = _render(ctx, "postgresql/postgresql.conf.j2", self.conf_dir / "mes.conf", mode=0o600, extra=extra)
        changed |= _render(ctx, "postgresql/pg_hba.conf.j2", self.conf_dir / "pg_hba.conf", mode=0o600, extra=extra)
        changed |= _render(ctx, "patroni/patroni.yml.j2", self._patroni_yml(), mode=0o600, extra=extra)
        if not _topology(ctx)["single"]:
            changed |= _render(ctx, "patroni/on_role_change.sh.j2", self.conf_dir / "on_role_change.sh",
                               mode=0o700, extra=extra)
        if "backup" in _topology(ctx):  # archive_command and replica creation use it from the start
            changed |= _render(ctx, "pgbackrest/pgbackrest.conf.j2", self.conf_dir / "pgbackrest.conf",
                               mode=0o600, extra=extra)
        return changed

    def env(self, ctx):
        return {"HOME": _pg_home()}

    def argv(self, ctx):
        if not PATRONI.exists():
            raise StackError(f"{PATRONI} is missing: `make venv` builds it (requirements-patroni.txt)")
        return [str(PATRONI), str(self._patroni_yml())]

    def ready(self, ctx):
        return rest(self.node, "/patroni")[0] != 0

    def up(self, ctx) -> None:
        if ctx.pid(self.name):
            # Patroni runs and owns PostgreSQL (it may be restarting it right now): never restart
            # Patroni for that. A changed template: Patroni reloads its file and PostgreSQL's.
            if self.prepare(ctx):
                os.kill(ctx.pid(self.name), signal.SIGHUP)
            return
        if self.postmaster_pid():
            self._stop_postmaster(ctx)  # left running by a Patroni that was killed: Patroni starts it again
        super().up(ctx)

    def down(self, ctx) -> None:
        # SIGTERM: Patroni stops PostgreSQL (fast) and gives up the leader key, then exits.
        ctx.stop(self.name, timeout=90)
        if self.postmaster_pid():
            self._stop_postmaster(ctx)

    def status(self, ctx) -> tuple[bool, str]:
        if not ctx.pid(self.name):
            return False, "not running"
        code, body = rest(self.node, "/patroni")
        if code == 0:
            return False, "Patroni runs but its REST API does not answer"
        member = next((m for m in cluster(ctx).get("members", []) if m.get("name") == self.name), {})
        role, state = member.get("role", body.get("role", "?")), body.get("state", "?")
        detail = f"{role}, {state}, timeline {body.get('timeline', '?')}"
        if "lag" in member and role != "leader":
            detail += f", lag {member['lag']} B"
        if body.get("pending_restart"):
            detail += ", pending restart"
        return state in ("running", "streaming"), detail

    def postmaster_pid(self) -> int | None:
        """The live postmaster of this node's data dir (checked: a postgres process with this data dir)."""
        pid = _pid_in(self.data_dir / "postmaster.pid")
        if pid is None or not alive(pid):
            return None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if comm not in ("postgres", "postmaster") or str(self.data_dir).encode() not in cmdline:
            return None
        return pid

    def _stop_postmaster(self, ctx: Ctx) -> None:
        ctx.run([_bin(ctx, "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60"],
                user=PG_USER, check=False, timeout=90)


def kill_node(ctx: Ctx, name: str, *, postgres_only: bool = False, sig: int = signal.SIGKILL) -> list[int]:
    """Simulate a failure of node `name`: `sig` to its PostgreSQL (the postmaster and every backend) and,
    unless postgres_only, to its Patroni as well (host loss). Returns the pids signalled."""
    node = PatroniNode(node_by_name(ctx, name))
    postmaster = node.postmaster_pid()
    pids = ([] if postgres_only else [p for p in [ctx.pid(name)] if p])
    if postmaster:
        pids += [postmaster, *_children(postmaster)]
    if not pids:
        raise StackError(f"{name}: neither Patroni nor PostgreSQL runs; nothing to {signal.Signals(sig).name}")
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def dynamic_settings(patroni_yml: Path) -> dict:
    """The cluster-wide settings of a rendered patroni.yml: its bootstrap.dcs without the PostgreSQL
    parameters (those are the nodes' own; a change to them rolls through restarts)."""
    dcs = yaml.safe_load(patroni_yml.read_text())["bootstrap"]["dcs"]
    return {k: v for k, v in dcs.items() if k != "postgresql"}


class PatroniCluster:
    """Not a process: the cluster as a whole. `up` waits until Patroni shows a leader and every node
    running (a standby: streaming; one standby synchronous), then applies roles and database on the
    leader (idempotent)."""

    name = "patroni"

    def up(self, ctx: Ctx, timeout: float = 180) -> None:
        want = {n["name"] for n in nodes(ctx)}

        def settled() -> bool:
            members = {m["name"]: m for m in cluster(ctx).get("members", [])}
            if set(members) != want or not any(m.get("role") == "leader" for m in members.values()):
                return False
            if not all(m.get("state") in ("running", "streaming") for m in members.values()):
                return False
            replicas = [m for m in members.values() if m.get("role") != "leader"]
            if not replicas:
                return True
            # (Patroni 3.0 says "running" for a replica; /replica answers 200 once it streams.)
            streaming = {n["name"] for n in standby_nodes(ctx)}
            return all(m["name"] in streaming for m in replicas) and \
                (not ctx.vars["patroni_synchronous_mode"] or any(m.get("role") == "sync_standby" for m in replicas))

        def settled_or_nudged() -> bool:
            if settled():
                return True
            # A standby rewound from an idle primary waits for WAL past the point it was rewound to
            # ("consistent recovery state has not been yet reached"): a CHECKPOINT gives it that.
            members = cluster(ctx).get("members", [])
            if any(m.get("state") == "starting" and m.get("role") != "leader" for m in members):
                nudge = ctx.path("tmp", "checkpoint-nudge")
                if not nudge.exists() or time.time() - nudge.stat().st_mtime > 10:
                    ctx.ensure_dir(nudge.parent)
                    nudge.touch()
                    with contextlib.suppress(StackError):
                        _try_psql(ctx, primary_node(ctx), "CHECKPOINT")
            return False

        if not wait_until(settled_or_nudged, timeout, 0.5):
            raise StackError(f"the Patroni cluster did not settle: {json.dumps(cluster(ctx))}\n"
                             + "\n".join(ctx.log_tail(n["name"], 15) for n in nodes(ctx)))
        self._apply_dynamic_settings(ctx)
        out = psql(ctx, primary_node(ctx), render_text(ctx, "postgresql/roles.sql.j2"))
        for line in out.splitlines():
            if line.startswith("changed:"):
                with ctx.open_log("patroni") as log:
                    log.write(f"{line}\n".encode())

    def _apply_dynamic_settings(self, ctx: Ctx) -> None:
        """The cluster-wide settings live in etcd (patroni.yml's bootstrap.dcs is read only when the
        cluster is first made): bring them in line with bootstrap.dcs, as rendered, on every `up`."""
        want = dynamic_settings(PatroniNode(nodes(ctx)[0])._patroni_yml())
        leader = primary_node(ctx)
        code, current = rest(leader, "/config")
        if code == 200 and any(current.get(k) != val for k, val in want.items()):
            status = rest_send(leader, "PATCH", "/config", want, timeout=10)
            if status != 200:
                raise StackError(f"Patroni refused the settings {want}: {status}")

    def down(self, ctx: Ctx) -> None:
        pass

    def status(self, ctx: Ctx) -> tuple[bool, str]:
        members = cluster(ctx).get("members", [])
        if not members:
            return False, "no Patroni answers"
        leader = next((m["name"] for m in members if m.get("role") == "leader"), None)
        sync = [m["name"] for m in members if m.get("role") == "sync_standby"]
        detail = f"leader {leader or 'NONE'}, synchronous standby {', '.join(sync) or 'NONE'}"
        wants_sync = ctx.vars["patroni_synchronous_mode"] and len(nodes(ctx)) > 1
        return leader is not None and (bool(sync) or not wants_sync), detail


def render_text(ctx: Ctx, template: str, extra: dict | None = None) -> str:
    """A template rendered to a string (for SQL that carries passwords: never written to disk)."""
    tmp = ctx.ensure_dir(ctx.path("tmp"), mode=0o755)
    fd, name = tempfile.mkstemp(prefix="render-", dir=tmp)
    os.close(fd)
    try:
        ctx.render(template, Path(name), mode=0o600, extra=extra)
        return Path(name).read_text()
    finally:
        Path(name).unlink(missing_ok=True)


# --- HAProxy's database endpoints -----------------------------------------------------------------

class DbEndpoints(Daemon):
    """HAProxy with a primary and a replica endpoint in front of the Patroni nodes (haproxy/db.cfg.j2)."""

    name = "db_endpoints"

    def _ep(self, ctx) -> dict:
        return _topology(ctx)["db_endpoints"]

    def _config(self, ctx) -> Path:
        return Path(self._ep(ctx)["dir"]) / "db.cfg"

    def prepare(self, ctx):
        ctx.ensure_dir(Path(self._ep(ctx)["dir"]), mode=0o700)
        ctx.render("haproxy/db.cfg.j2", self._config(ctx),
                   extra=monauth.password_hash(ctx, "haproxy_stats_bcrypt_cost", self._config(ctx)))
        ctx.run(["haproxy", "-c", "-q", "-f", str(self._config(ctx))])

    def argv(self, ctx):
        return ["haproxy", "-db", "-f", str(self._config(ctx))]

    def ready(self, ctx):
        return "primary" in self._servers_up(ctx)

    def _servers_up(self, ctx) -> dict[str, list[str]]:
        """Backend -> servers that pass their check, from the stats CSV."""
        ep = self._ep(ctx)
        try:
            request = urllib.request.Request(f"http://{ep['host']}:{ep['stats_port']}/stats;csv",
                                             headers=monauth.headers(ctx))
            with urllib.request.urlopen(request, timeout=2) as resp:
                rows = list(csv.reader(io.StringIO(resp.read().decode().lstrip("# "))))
        except OSError:
            return {}
        up: dict[str, list[str]] = {}
        for row in rows[1:]:
            if len(row) > 17 and row[1] not in ("FRONTEND", "BACKEND") and row[17] == "UP":
                up.setdefault(row[0], []).append(row[1])
        return up

    def detail(self, ctx):
        up, ep = self._servers_up(ctx), self._ep(ctx)
        return (f"primary :{ep['primary_port']} -> {', '.join(up.get('primary', [])) or 'NONE'}; "
                f"replicas :{ep['replica_port']} -> {', '.join(up.get('replicas', [])) or 'primary (no replica up)'}")


# --- Pgpool-II ----------------------------------------------------------------------------------------

def pgpool_dir(ctx: Ctx) -> Path:
    return Path(_topology(ctx)["pgpool"]["dir"])


def pool_nodes(ctx: Ctx, user: str = "app") -> list[dict]:
    """SHOW POOL_NODES through pgpool, as the app (or 'owner') role: one dict per backend with node_id,
    hostname, port, status, pg_status, role, select_cnt, ... (all strings)."""
    return pgpool_query(ctx, "SHOW POOL_NODES", user)


def pgpool_query(ctx: Ctx, sql: str, user: str = "app") -> list[dict]:
    """One statement through pgpool (e.g. its own SHOW commands), as the app (or 'owner') role: the rows
    as dicts of strings."""
    v, s, pg = ctx.vars, _secrets(ctx), _topology(ctx)["pgpool"]
    role, password = ((v["pg_app_role"], s["db_app_password"]) if user == "app"
                      else (v["pg_owner_role"], s["db_owner_password"]))
    tls = tls_params(ctx)
    result = ctx.run([_bin(ctx, "psql"), "-X", "--csv", "-h", pg["host"], "-p", str(pg["port"]), "-U", role,
                      "-d", v["pg_database"], "-c", sql],
                     env={"PGPASSWORD": password, "PGAPPNAME": "mes-stack", "PGCONNECT_TIMEOUT": "5",
                          "PGSSLMODE": tls["sslmode"], "PGSSLROOTCERT": tls["sslrootcert"]},
                     timeout=30)
    return list(csv.DictReader(io.StringIO(result.stdout)))


def _pool_nodes_or_empty(ctx: Ctx) -> list[dict]:
    try:
        return pool_nodes(ctx)
    except (StackError, OSError):
        return []


def check_client_slots(ctx: Ctx) -> None:
    """Refuse settings that would let the public pool fill Pgpool-II's client slots: the operator pool
    keeps pgpool_operator_reserve of them (the role pgpool asserts the same, by the same code)."""
    budget = shared_plugin("mes_pools")
    v = ctx.vars
    errors = budget.pgpool_budget_errors(v["mes_topology"], v["mes_pools"], v["pgpool_num_init_children"],
                                         v["pgpool_reserved_connections"], v["pgpool_operator_reserve"])
    if errors:
        raise StackError("the app pools' database connections do not fit Pgpool-II's client slots:\n  "
                         + "\n  ".join(errors))


class Pgpool(Daemon):
    """Pgpool-II in the foreground as the postgres user; its backends are the two endpoints."""

    name = "pgpool"
    user = PG_USER
    start_timeout = 60

    def _files(self, ctx: Ctx) -> dict[str, Path]:
        d = pgpool_dir(ctx)
        return {"conf": d / "pgpool.conf", "hba": d / "pool_hba.conf", "pcp": d / "pcp.conf",
                "key": d / ".pgpoolkey", "passwd": d / "pool_passwd", "pcppass": d / ".pcppass",
                "pid": d / "pgpool.pid"}

    def prepare(self, ctx) -> bool:
        """Render every file pgpool reads; True if any changed."""
        check_client_slots(ctx)
        f = self._files(ctx)
        ctx.ensure_dir(pgpool_dir(ctx), owner=PG_USER, mode=0o700)
        ctx.ensure_dir(pgpool_dir(ctx) / "oiddir", owner=PG_USER, mode=0o700)
        crt, key = pki.certificate(ctx, "pgpool", [_san(_topology(ctx)["pgpool"]["host"])], owner=PG_USER)
        tls = {"pgpool_tls_cert": str(crt), "pgpool_tls_key": str(key), "pgpool_tls_ca": str(pki.ca_file(ctx))}
        changed = _render(ctx, "pgpool/pgpool.conf.j2", f["conf"], mode=0o600, extra=tls)
        changed |= _render(ctx, "pgpool/pool_hba.conf.j2", f["hba"], mode=0o600)
        s, v, pg = _secrets(ctx), ctx.vars, _topology(ctx)["pgpool"]
        changed |= _write_private(f["key"], s["pgpool_key"])
        # pcp.conf: user:md5(password), what `pg_md5 PASSWORD` prints (hashed here: no password in ps).
        changed |= _write_private(f["pcp"], f"pcp:{hashlib.md5(s['pcp_password'].encode()).hexdigest()}\n")
        changed |= _write_private(f["pcppass"], f"{pg['host']}:{pg['pcp_port']}:pcp:{s['pcp_password']}\n")
        # pool_passwd: AES entries made by pg_enc; only redone when a password or the key changed
        # (pg_enc's output differs on every run).
        users = {v["pg_app_role"]: s["db_app_password"], v["pg_owner_role"]: s["db_owner_password"],
                 v["pg_pgpool_role"]: s["pgpool_password"]}
        fingerprint = hashlib.sha256(repr((sorted(users.items()), s["pgpool_key"])).encode()).hexdigest()
        stamp = pgpool_dir(ctx) / ".pool_passwd.sha256"
        if not f["passwd"].exists() or not stamp.exists() or stamp.read_text().strip() != fingerprint:
            _write_private(f["passwd"], "")
            pairs = pgpool_dir(ctx) / ".pool_passwd.input"
            _write_private(pairs, "".join(f"{u}:{p}\n" for u, p in users.items()))
            try:
                ctx.run(["pg_enc", "-k", str(f["key"]), "-m", "-f", str(f["conf"]), "-i", str(pairs)],
                        user=PG_USER)
            finally:
                pairs.unlink(missing_ok=True)
            entries = f["passwd"].read_text().split()
            if sorted(e.split(":", 1)[0] for e in entries) != sorted(users) or \
                    not all(e.split(":", 1)[1].startswith("AES") for e in entries):
                raise StackError(f"pg_enc wrote an unexpected pool_passwd: {[e.split(':')[0] for e in entries]}")
            _write_private(stamp, fingerprint + "\n")
            changed = True
        return changed

    def env(self, ctx):
        return {"HOME": _pg_home()}

    def argv(self, ctx):
        f = self._files(ctx)
        f["pid"].unlink(missing_ok=True)
        # -n: foreground (logs to stderr, captured by spawn); -D: forget node states remembered from
        # the last run.
        return ["pgpool", "-n", "-D", "-f", str(f["conf"]), "-F", str(f["pcp"]), "-a", str(f["hba"]),
                "-k", str(f["key"])]

    def pid(self, ctx: Ctx) -> int | None:
        return ctx.pid(self.name)

    def running(self, ctx: Ctx) -> bool:
        return self.pid(ctx) is not None

    def ready(self, ctx):
        rows = _pool_nodes_or_empty(ctx)
        return bool(rows) and any(r["role"] == "primary" and r["status"] in ("up", "waiting") for r in rows)

    def up(self, ctx) -> None:
        if ctx.pid(self.name) and self.ready(ctx):
            if self.prepare(ctx):  # settings that need a restart stay as they were until the next down/up
                os.kill(ctx.pid(self.name), signal.SIGHUP)
            return
        super().up(ctx)

    def down(self, ctx) -> None:
        # SIGINT = pgpool's fast shutdown (SIGTERM would wait for every client to disconnect).
        ctx.stop(self.name, sig=signal.SIGINT, timeout=30)
        self._files(ctx)["pid"].unlink(missing_ok=True)

    def status(self, ctx) -> tuple[bool, str]:
        if not self.running(ctx):
            return False, "not running"
        rows = _pool_nodes_or_empty(ctx)
        if not rows:
            return False, "running but SHOW POOL_NODES does not answer"
        shown = ", ".join(f"{r['hostname']}:{r['port']} {r['role']} {r['status']}" for r in rows)
        return self.ready(ctx), shown


# --- postgres_exporter ------------------------------------------------------------------------------

class PostgresExporter:
    """prometheus-postgres-exporter for one node, as the exporter role over TCP, connected to the MES
    database (the promise's queries read it; the server-wide ones answer from any database)."""

    queries_file, queries_dir = EXPORTER_QUERIES, "postgres_exporter"

    def __init__(self, node: dict):
        self.node = node
        self.name = f"{node['name']}_exporter"
        self.address = f"{node['host']}:{node['exporter_port']}"

    def _dsn(self, ctx: Ctx) -> str:
        v, s = ctx.vars, _secrets(ctx)
        return (f"postgresql://{quote(v['pg_exporter_role'], safe='')}:{quote(s['exporter_password'], safe='')}"
                f"@{self.node['host']}:{self.node['port']}/{quote(v['pg_database'], safe='')}"
                f"?{urlencode({**tls_params(ctx), 'application_name': self.name}, safe='/')}")

    def _metrics(self, timeout: float = 5) -> str | None:
        try:
            with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=timeout) as resp:
                return resp.read().decode(errors="replace") if resp.status == 200 else None
        except OSError:
            return None

    def up(self, ctx: Ctx) -> None:
        if ctx.pid(self.name) is None:
            argv = [EXPORTER_BIN, f"--web.listen-address={self.address}", "--disable-settings-metrics",
                    "--log.level=warn"]
            if self.queries_file.exists():
                queries = ctx.ensure_dir(ctx.path(self.queries_dir), mode=0o755) / "queries.yml"
                if not queries.exists() or queries.read_text() != self.queries_file.read_text():
                    queries.write_text(self.queries_file.read_text())
                queries.chmod(0o644)
                argv.append(f"--extend.query-path={queries}")
            ctx.spawn(self.name, argv, user=PG_USER, env={"DATA_SOURCE_NAME": self._dsn(ctx), "HOME": _pg_home()})
        if not wait_until(lambda: ctx.pid(self.name) is None or self._metrics(2) is not None, 30, 0.3) \
                or ctx.pid(self.name) is None:
            raise StackError(f"{self.name} does not answer on {self.address}:\n{ctx.log_tail(self.name)}")

    def down(self, ctx: Ctx) -> None:
        ctx.stop(self.name)

    def status(self, ctx: Ctx) -> tuple[bool, str]:
        if ctx.pid(self.name) is None:
            return False, "not running"
        text = self._metrics()
        if text is not None and re.search(r"^pg_up 0", text, re.M):
            text = self._metrics()  # the first scrape after its node restarted reuses a dead connection
        if text is None:
            return False, f"running but {self.address}/metrics does not answer"
        pg_up = re.search(r"^pg_up (\S+)", text, re.M)
        up = pg_up is not None and float(pg_up.group(1)) == 1
        lag = re.search(r"^pg_replication_lag_seconds(?:\{[^}]*\})? (\S+)", text, re.M)
        detail = f"{self.address}: pg_up {pg_up.group(1) if pg_up else '?'}"
        if lag:
            detail += f", lag {float(lag.group(1)):.1f} s"
        return up, detail


class PgpoolExporter(PostgresExporter):
    """prometheus-postgres-exporter through Pgpool-II as the pgpool role (database postgres, TLS verified
    like the app's), whose only queries are Pgpool-II's SHOW POOL_NODES and SHOW POOL_PROCESSES
    (monitoring/pgpool_exporter_queries.yml). Its application name routes its one `SELECT version()` per
    scrape to the primary (pgpool.conf.j2), so a standby's select count is the app's reads alone."""

    def __init__(self, ctx: Ctx):
        pg = _topology(ctx)["pgpool"]
        self.node = {"host": pg["host"], "port": pg["port"]}
        self.name = "pgpool_exporter"
        self.address = f"{pg['host']}:{pg['exporter_port']}"

    def _dsn(self, ctx: Ctx) -> str:
        v, s = ctx.vars, _secrets(ctx)
        params = {**tls_params(ctx), "application_name": v["pgpool_exporter_application_name"]}
        return (f"postgresql://{quote(v['pg_pgpool_role'], safe='')}:{quote(s['pgpool_password'], safe='')}"
                f"@{self.node['host']}:{self.node['port']}/postgres?{urlencode(params, safe='/')}")

    def up(self, ctx: Ctx) -> None:
        if ctx.pid(self.name) is None:
            queries = ctx.ensure_dir(ctx.path("pgpool_exporter"), mode=0o755) / "queries.yml"
            if not queries.exists() or queries.read_text() != PGPOOL_EXPORTER_QUERIES.read_text():
                queries.write_text(PGPOOL_EXPORTER_QUERIES.read_text())
            queries.chmod(0o644)
            argv = [EXPORTER_BIN, f"--web.listen-address={self.address}", f"--extend.query-path={queries}",
                    *PGPOOL_EXPORTER_ARGS]
            ctx.spawn(self.name, argv, user=PG_USER, env={"DATA_SOURCE_NAME": self._dsn(ctx), "HOME": _pg_home()})
        if not wait_until(lambda: ctx.pid(self.name) is None or self._metrics(2) is not None, 30, 0.3) \
                or ctx.pid(self.name) is None:
            raise StackError(f"{self.name} does not answer on {self.address}:\n{ctx.log_tail(self.name)}")

    def status(self, ctx: Ctx) -> tuple[bool, str]:
        if ctx.pid(self.name) is None:
            return False, "not running"
        text = self._metrics()
        if text is None:
            return False, f"running but {self.address}/metrics does not answer"
        backends = re.findall(r'^pgpool_backend_port\{([^}]*)\}', text, re.M)
        if not backends:
            return False, f"{self.address}: no pgpool_backend_* series (does Pgpool-II answer SHOW POOL_NODES?)"
        labels = [dict(re.findall(r'(\w+)="([^"]*)"', b)) for b in backends]
        return True, f"{self.address}: backends " + ", ".join(f"{b['node_id']} {b['role']} {b['status']}"
                                                               for b in labels)


# --- the tier as a whole ----------------------------------------------------------------------------

def components(ctx: Ctx) -> list:
    """Every database-tier component in start order (stop in reverse order)."""
    t = _topology(ctx)
    out: list = [Etcd(m) for m in t["etcd"]]
    out += [PatroniNode(n) for n in nodes(ctx)]
    out.append(PatroniCluster())
    if "backup" in t:
        from .backup import PgBackRest
        out.append(PgBackRest())
    if not t["single"]:
        out += [DbEndpoints(), Pgpool(), PgpoolExporter(ctx)]
    out += [PostgresExporter(n) for n in nodes(ctx)]
    return out


def _url(ctx: Ctx, user: str, password: str, host: str, port, db: str, **params: str) -> str:
    """A SQLAlchemy URL over TLS that verifies the server (tls_params), plus libpq `params`."""
    return (f"postgresql+psycopg2://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@{host}:{port}/{quote(db, safe='')}?{urlencode({**params, **tls_params(ctx)}, safe='/')}")


def database_urls(ctx: Ctx) -> dict[str, str]:
    """SQLAlchemy URLs of the database:
    - app: the service's DATABASE_URL: through pgpool as the app role (in the single topology, the app
      role on the primary endpoint... which there is the one node);
    - owner: the owner role on the primary (MIGRATION_DATABASE_URL): through the primary endpoint, so
      it follows a failover; migrations do not go through pgpool, whose read balancing could send
      Alembic's version lookup to a lagging standby. The endpoint leads to whichever node is the
      primary: the client connects to its address (hostaddr) and verifies the name every node's
      certificate carries (pg_tls_cluster_name);
    - owner_direct / app_direct: the same roles on the node that is the primary now (or, while the
      stack is down, the first node)."""
    v, s, t = ctx.vars, _secrets(ctx), _topology(ctx)
    try:
        primary = primary_node(ctx)
    except StackError:
        primary = nodes(ctx)[0]
    db = v["pg_database"]
    app_direct = _url(ctx, v["pg_app_role"], s["db_app_password"], primary["host"], primary["port"], db)
    owner_direct = _url(ctx, v["pg_owner_role"], s["db_owner_password"], primary["host"], primary["port"], db)
    if t["single"]:
        return {"app": app_direct, "owner": owner_direct, "owner_direct": owner_direct, "app_direct": app_direct}
    ep, pg = t["db_endpoints"], t["pgpool"]
    return {"app": _url(ctx, v["pg_app_role"], s["db_app_password"], pg["host"], pg["port"], db),
            "owner": _url(ctx, v["pg_owner_role"], s["db_owner_password"], v["pg_tls_cluster_name"],
                          ep["primary_port"], db, hostaddr=ep["host"]),
            "owner_direct": owner_direct, "app_direct": app_direct}
