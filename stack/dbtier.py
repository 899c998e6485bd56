"""The database tier of the one-machine stack: a PostgreSQL primary and streaming replica, Pgpool-II in
streaming-replication mode in front of them, and one postgres_exporter per node, all as plain
processes on loopback, run as the `postgres` system user, configured from the same templates
(postgresql/, pgpool/) that the Ansible roles render for VMs.

Components (each has `name`, `up(ctx)`, `down(ctx)`, `status(ctx) -> (answers, detail)`):

- `PostgresNode(node)`: one entry of `mes_topology.pg_nodes`. The first `up` of the first node makes
  the primary (initdb with data checksums, roles, database); the first `up` of a later node clones
  the current primary (pg_basebackup) into a streaming replica. Later `up`s just start what exists.
  Roles are found with pg_is_in_recovery(), never by list order: after a failover the promoted node
  stays primary, and a stale old primary is rejoined as a standby (pg_rewind, or a new base backup
  when rewinding fails) instead of being started as a second primary.
- `Pgpool()`: renders pgpool.conf, pool_hba.conf, failover.sh, pool_passwd (AES), pcp.conf into
  `mes_topology.pgpool.dir` and runs pgpool in the foreground.
- `PostgresExporter(node)`: Debian's prometheus-postgres-exporter for one node.

`components(ctx)` lists them in start order. Helpers for tests and benchmarks: `psql`, `pool_nodes`,
`primary_node`, `standby_nodes`, `pause_replay`, `resume_replay`, `attach_node`, `pcp`,
`database_urls`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import signal
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

from .base import ROOT, Ctx, StackError, alive, chown, wait_until

PG_USER = "postgres"        # OS user of postgres, pgpool and the exporters
SUPERUSER = "postgres"      # database superuser, reachable only over the node's unix socket
EXPORTER_BIN = "prometheus-postgres-exporter"
EXPORTER_QUERIES = ROOT / "monitoring" / "postgres_exporter_queries.yml"
CONF_INCLUDE_DIR = "conf.d"
CONF_INCLUDE_FILE = "mes.conf"


# --- small helpers ----------------------------------------------------------------------------------

def _topology(ctx: Ctx) -> dict:
    return ctx.vars["mes_topology"]


def _secrets(ctx: Ctx) -> dict:
    return ctx.vars["mes_secrets"]


def _bin(ctx: Ctx, program: str) -> str:
    return str(Path(_topology(ctx)["pg_bindir"]) / program)


def _is_root() -> bool:
    return os.geteuid() == 0


def _exec_as_pg(argv: list[str]) -> list[str]:
    """Run `argv` as the postgres user by exec (no runuser parent), so that the pid ctx.spawn records is
    the program's own and a signal reaches it directly (runuser would SIGKILL it 2 s after a SIGTERM)."""
    if _is_root():
        return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--", *argv]
    return list(argv)


def _pg_home() -> str:
    try:
        import pwd
        return pwd.getpwnam(PG_USER).pw_dir if _is_root() else os.environ.get("HOME", "/")
    except KeyError:
        return "/"


def _q_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _q_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _conninfo_value(value) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


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


def _render(ctx: Ctx, template: str, dest: Path, *, mode: int, extra: dict | None = None) -> bool:
    """ctx.render, owned by postgres; True if the content changed."""
    before = dest.read_text() if dest.exists() else None
    ctx.render(template, dest, mode=mode, owner=PG_USER, extra=extra)
    return dest.read_text() != before


def _pid_in(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError, PermissionError):
        return None


def nodes(ctx: Ctx) -> list[dict]:
    return list(_topology(ctx)["pg_nodes"])


def node_by_name(ctx: Ctx, name: str) -> dict:
    for node in nodes(ctx):
        if node["name"] == name:
            return node
    raise StackError(f"no PostgreSQL node named {name!r} in mes_topology.pg_nodes")


def socket_dir(node: dict) -> Path:
    """Local stack: the node's unix socket folder, next to its data dir (VMs: /var/run/postgresql)."""
    return Path(node["data_dir"]).parent / "run"


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
    except (StackError, OSError, Exception):  # noqa: BLE001 - a node that does not answer
        return None


def in_recovery(ctx: Ctx, node: dict) -> bool | None:
    """True for a standby, False for a primary, None when the node does not answer."""
    out = _try_psql(ctx, node, "SELECT pg_is_in_recovery()")
    return None if out is None else out == "t"


def primary_node(ctx: Ctx) -> dict:
    """The node entry of the running primary (asked with pg_is_in_recovery() on each node)."""
    for node in nodes(ctx):
        if PostgresNode(node).running(ctx) and in_recovery(ctx, node) is False:
            return node
    raise StackError("no running PostgreSQL primary")


def expected_primary_node(ctx: Ctx) -> dict:
    """The running primary; when none runs (the stack is down), the node that the next `up` makes the
    primary: the stopped non-standby data dir on the newest timeline, else the first node."""
    try:
        return primary_node(ctx)
    except StackError:
        pass
    candidates = [PostgresNode(n) for n in nodes(ctx)]
    candidates = [c for c in candidates if c.initialized() and not c.is_standby_dir()]
    if not candidates:
        return nodes(ctx)[0]
    try:
        return max(candidates, key=lambda c: c.timeline(ctx)).node
    except StackError:
        return candidates[0].node


def standby_nodes(ctx: Ctx) -> list[dict]:
    """The running standbys."""
    return [n for n in nodes(ctx) if PostgresNode(n).running(ctx) and in_recovery(ctx, n) is True]


def pause_replay(ctx: Ctx) -> list[str]:
    """Pause WAL replay on every running standby (reads there go stale); returns their names."""
    names = []
    for node in standby_nodes(ctx):
        psql(ctx, node, "SELECT pg_wal_replay_pause()")
        wait_until(lambda n=node: psql(ctx, n, "SELECT pg_get_wal_replay_pause_state()") == "paused", 10)
        names.append(node["name"])
    return names


def resume_replay(ctx: Ctx) -> list[str]:
    """Resume WAL replay on every running standby; returns their names."""
    names = []
    for node in standby_nodes(ctx):
        psql(ctx, node, "SELECT pg_wal_replay_resume()")
        names.append(node["name"])
    return names


# --- PostgreSQL -------------------------------------------------------------------------------------

class PostgresNode:
    """One PostgreSQL server of mes_topology.pg_nodes, run with pg_ctl as the postgres user."""

    def __init__(self, node: dict):
        self.node = node
        self.name = node["name"]
        self.data_dir = Path(node["data_dir"])
        self.base = self.data_dir.parent
        self.socket_dir = socket_dir(node)

    def __repr__(self) -> str:
        return f"PostgresNode({self.name})"

    # state of the data dir and the process
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def is_standby_dir(self) -> bool:
        return (self.data_dir / "standby.signal").exists()

    def postmaster_pid(self) -> int | None:
        """The live postmaster of this data dir (checked: a postgres process with this data dir)."""
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

    def running(self, ctx: Ctx | None = None) -> bool:
        return self.postmaster_pid() is not None

    def _wait_dead_postmaster_gone(self, timeout: float = 10) -> None:
        """After a kill -9 the old postmaster stays a zombie until its parent (here PID 1) reaps it, and
        postgres (also pg_rewind's single-user run) refuses a data dir whose postmaster.pid names a pid
        that still exists. Wait for the zombie and the children to go. Then the pid file names no
        postmaster of this data dir (the pid is gone, a never-reaped zombie, or reused by another
        program): remove it. (PostgreSQL's shared-memory interlock still guards against a live old server.)"""
        pidfile = self.data_dir / "postmaster.pid"
        pid = _pid_in(pidfile)
        if pid is None or self.postmaster_pid() is not None:
            return
        wait_until(lambda: alive(pid) or not Path(f"/proc/{pid}").exists(), timeout, 0.1)  # zombie reaped
        wait_until(lambda: not self.leftover_pids(), timeout, 0.1)
        if self.postmaster_pid() is None and not self.leftover_pids():
            pidfile.unlink(missing_ok=True)

    def leftover_pids(self) -> list[int]:
        """Server processes of this node still alive without their postmaster (after a kill -9 they exit
        on their own within moments; until then the data dir's shared memory is in use)."""
        title = f"postgres: {self.name}: ".encode()  # process titles carry cluster_name
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if Path(f"/proc/{entry}/cmdline").read_bytes().startswith(title) and alive(int(entry)):
                        pids.append(int(entry))
                except OSError:
                    continue
        return pids

    def timeline(self, ctx: Ctx) -> int:
        """Timeline of a stopped data dir: the newest of the checkpoint's and of pg_wal's history files."""
        out = ctx.run([_bin(ctx, "pg_controldata"), str(self.data_dir)], user=PG_USER, env={"LC_ALL": "C"}).stdout
        match = re.search(r"Latest checkpoint's TimeLineID:\s*(\d+)", out)
        tli = int(match.group(1)) if match else 1
        wal = self.data_dir / "pg_wal"
        try:
            for entry in os.listdir(wal):
                if entry.endswith(".history"):
                    tli = max(tli, int(entry.split(".")[0], 16))
        except OSError:
            pass
        return tli

    # rendering
    def _prepare_dirs(self, ctx: Ctx) -> None:
        ctx.ensure_dir(self.base, owner=PG_USER, mode=0o700)
        ctx.ensure_dir(self.socket_dir, owner=PG_USER, mode=0o755)
        ctx.ensure_dir(ctx.path("logs"))
        log = ctx.logfile(self.name)
        log.touch(exist_ok=True)
        chown(log, PG_USER)

    def render_config(self, ctx: Ctx) -> bool:
        """The node's include file and pg_hba.conf (again after every copy from another node)."""
        ctx.ensure_dir(self.data_dir / CONF_INCLUDE_DIR, owner=PG_USER, mode=0o700)
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text()
        include = f"include_dir = '{CONF_INCLUDE_DIR}'"
        if include not in text:
            with conf.open("a") as fh:
                fh.write(f"\n# MES stack settings (postgresql/postgresql.conf.j2)\n{include}\n")
        extra = {"pg_node_name": self.name, "pg_socket_dir": str(self.socket_dir),
                 "pg_local_auth": "peer" if _is_root() else "trust"}
        changed = _render(ctx, "postgresql/postgresql.conf.j2", self.data_dir / CONF_INCLUDE_DIR / CONF_INCLUDE_FILE,
                          mode=0o600, extra=extra)
        changed |= _render(ctx, "postgresql/pg_hba.conf.j2", self.data_dir / "pg_hba.conf", mode=0o600, extra=extra)
        return changed

    # lifecycle
    def up(self, ctx: Ctx) -> None:
        """Initialize (primary or replica) if there is no data yet, start if not running, wait until it
        answers (a standby that was started: until it streams), attach it in pgpool if pgpool has it
        detached. A running node is left running (a changed config is reloaded)."""
        self._prepare_dirs(ctx)
        started = not self.running()
        if not started:
            if self.render_config(ctx):
                ctx.run([_bin(ctx, "pg_ctl"), "reload", "-D", str(self.data_dir)], user=PG_USER)
        elif not self.initialized():
            others = [n for n in nodes(ctx) if n["name"] != self.name]
            if any(PostgresNode(n).running() and in_recovery(ctx, n) is False for n in others):
                self._clone_from(ctx, primary_node(ctx))
            elif self.node["name"] == nodes(ctx)[0]["name"]:
                self._init_primary(ctx)
            else:
                raise StackError(f"{self.name}: no running primary to clone from; start {nodes(ctx)[0]['name']} first")
        elif self.is_standby_dir():
            self._start_primary_first(ctx)
            self.render_config(ctx)
            self._start(ctx)
        else:
            self._start_primary_or_rejoin(ctx)
        self._wait_answers(ctx)
        role = in_recovery(ctx, self.node)
        if role is False:
            self._ensure_roles(ctx)
            Path(_topology(ctx)["pgpool"]["dir"], "failover.disabled").unlink(missing_ok=True)
        elif role is True and started and self._primary_running(ctx):
            self._wait_streaming(ctx)
        self._attach_to_pgpool(ctx)

    def down(self, ctx: Ctx) -> None:
        if not self.running():
            return
        if Pgpool().running(ctx) and in_recovery(ctx, self.node) is False:
            # A planned stop of the primary is not a failure: the failover script must not promote.
            flag = Path(_topology(ctx)["pgpool"]["dir"]) / "failover.disabled"
            flag.write_text(f"{self.name} stopped by the stack at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            chown(flag, PG_USER)
        ctx.run([_bin(ctx, "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60"],
                user=PG_USER, check=False, timeout=90)
        if self.running():
            raise StackError(f"{self.name} did not stop:\n{ctx.log_tail(self.name)}")

    def status(self, ctx: Ctx) -> tuple[bool, str]:
        if not self.running():
            return False, "not running" + (" (no data yet)" if not self.initialized() else "")
        row = _try_psql(ctx, self.node, (
            "SELECT pg_is_in_recovery(), "
            "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), "
            "(SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'), "
            "(SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'), "
            "CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END, "
            "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE '' END"))
        if row is None:
            return False, "running but does not answer"
        recovery, conns, senders, receiving, paused, replay_lsn = row.split("|")
        if recovery == "f":
            return True, f"primary, {conns} connections, {senders} standby streaming"
        lag = "?"
        try:
            primary = primary_node(ctx)
            lag = psql(ctx, primary, f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{replay_lsn}')::bigint")
        except StackError:
            pass
        detail = f"standby, replay lag {lag} B, {'streaming' if receiving == '1' else 'NOT streaming'}"
        if paused != "not paused":
            detail += f", replay {paused}"
        return True, detail

    # internals
    def _start(self, ctx: Ctx) -> None:
        self._wait_dead_postmaster_gone()
        argv = [_bin(ctx, "pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(ctx.logfile(self.name)),
                "-w", "-t", "90"]
        # After a kill -9 of a postmaster its children may hold the old shared memory for a moment.
        for attempt in range(10):
            result = ctx.run(argv, user=PG_USER, check=False, timeout=120)
            if result.returncode == 0 and self.running():
                return
            if self.running():
                return
            tail = ctx.log_tail(self.name, 15)
            if "pre-existing shared memory block" not in tail and "lock file" not in tail or attempt == 9:
                raise StackError(f"{self.name} failed to start:\n{result.stderr or result.stdout}\n{tail}")
            time.sleep(1)

    def _wait_answers(self, ctx: Ctx, timeout: float = 60) -> None:
        if not wait_until(lambda: _try_psql(ctx, self.node, "SELECT 1") == "1", timeout, 0.2):
            raise StackError(f"{self.name} does not answer:\n{ctx.log_tail(self.name)}")

    def _wait_streaming(self, ctx: Ctx, timeout: float = 60) -> None:
        ok = wait_until(lambda: _try_psql(
            ctx, self.node, "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'") == "1",
            timeout, 0.2)
        if not ok:
            raise StackError(f"{self.name} is a standby but does not stream from a primary:\n{ctx.log_tail(self.name)}")

    def _init_primary(self, ctx: Ctx) -> None:
        local_auth = "peer" if _is_root() else "trust"
        ctx.run([_bin(ctx, "initdb"), "-D", str(self.data_dir), "--data-checksums", "-U", SUPERUSER,
                 f"--auth-local={local_auth}", "--auth-host=scram-sha-256", "--encoding=UTF8",
                 "--locale=C.UTF-8"], user=PG_USER, timeout=300)
        self.render_config(ctx)
        self._start(ctx)
        self._wait_answers(ctx)
        self._ensure_roles(ctx)

    def _ensure_roles(self, ctx: Ctx) -> None:
        """Roles and database on the primary, created when missing (passwords from mes_secrets)."""
        v, s = ctx.vars, _secrets(ctx)
        roles = {
            v["pg_owner_role"]: ("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE", s["db_owner_password"]),
            v["pg_app_role"]: ("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE", s["db_app_password"]),
            v["pg_replication_role"]: ("LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE",
                                       s["replication_password"]),
            v["pg_pgpool_role"]: ("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE", s["pgpool_password"]),
            v["pg_exporter_role"]: ("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE", s["exporter_password"]),
        }
        existing = set(psql(ctx, self.node, "SELECT rolname FROM pg_roles").split())
        sql = [f"CREATE ROLE {_q_ident(r)} {attrs} PASSWORD {_q_literal(pw)};"
               for r, (attrs, pw) in roles.items() if r not in existing]
        created = bool(sql)
        for r in (v["pg_pgpool_role"], v["pg_exporter_role"]):
            sql.append(f"GRANT pg_monitor TO {_q_ident(r)};")
        psql(ctx, self.node, "\n".join(sql))
        db, owner, app = v["pg_database"], _q_ident(v["pg_owner_role"]), _q_ident(v["pg_app_role"])
        if psql(ctx, self.node, f"SELECT count(*) FROM pg_database WHERE datname = {_q_literal(db)}") == "0":
            psql(ctx, self.node, f"CREATE DATABASE {_q_ident(db)} OWNER {owner};")
            created = True
        if created:
            psql(ctx, self.node, (
                f"REVOKE ALL ON DATABASE {_q_ident(db)} FROM PUBLIC;\n"
                f"GRANT CONNECT ON DATABASE {_q_ident(db)} TO {app};\n"
                f"ALTER SCHEMA public OWNER TO {owner};\n"
                "REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n"
                f"GRANT USAGE ON SCHEMA public TO {app};\n"
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app};\n"
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
                f"GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {app};\n"), db=db)

    def _replication_env(self, ctx: Ctx) -> dict:
        return {"PGAPPNAME": self.name, "PGPASSWORD": _secrets(ctx)["replication_password"],
                "PGCONNECT_TIMEOUT": "10"}

    def _ensure_slot_on(self, ctx: Ctx, primary: dict, *, fresh: bool) -> None:
        """This node's physical slot on the primary. fresh: drop an inactive leftover first (a new clone
        makes its own with pg_basebackup -C); otherwise create it when missing, reserving WAL now."""
        slot = _q_literal(self.name)
        if fresh:
            psql(ctx, primary, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                               f"WHERE slot_name = {slot} AND NOT active")
        else:
            psql(ctx, primary, f"SELECT pg_create_physical_replication_slot({slot}, true) "
                               f"WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {slot})")

    def _clone_from(self, ctx: Ctx, primary: dict) -> None:
        """A new streaming replica of `primary`: pg_basebackup -R -X stream -C -S <name>."""
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self._ensure_slot_on(ctx, primary, fresh=True)
        ctx.run([_bin(ctx, "pg_basebackup"), "-D", str(self.data_dir), "-h", primary["host"],
                 "-p", str(primary["port"]), "-U", ctx.vars["pg_replication_role"], "-w",
                 "-R", "-X", "stream", "-C", "-S", self.name, "-c", "fast"],
                user=PG_USER, env=self._replication_env(ctx), timeout=1800)
        self.data_dir.chmod(0o700)
        self._write_standby_settings(ctx, primary)  # same content as -R, in our own format
        self.render_config(ctx)
        self._start(ctx)

    def _write_standby_settings(self, ctx: Ctx, primary: dict) -> None:
        conninfo = " ".join(f"{k}={_conninfo_value(val)}" for k, val in (
            ("user", ctx.vars["pg_replication_role"]), ("password", _secrets(ctx)["replication_password"]),
            ("host", primary["host"]), ("port", primary["port"]), ("application_name", self.name),
            ("connect_timeout", 5)))
        auto = (
            "# Written by the MES stack: this node streams from the current primary.\n"
            f"primary_conninfo = {_q_literal(conninfo)}\n"
            f"primary_slot_name = {_q_literal(self.name)}\n")
        _write_private(self.data_dir / "postgresql.auto.conf", auto)
        (self.data_dir / "standby.signal").touch()
        chown(self.data_dir / "standby.signal", PG_USER)

    def _primary_running(self, ctx: Ctx) -> bool:
        return any(PostgresNode(n).running() and in_recovery(ctx, n) is False
                   for n in nodes(ctx) if n["name"] != self.name)

    def _start_primary_first(self, ctx: Ctx) -> None:
        """Before a standby starts: if no primary runs, start the node whose data is the primary's
        (after a failover that is not the first node of the list)."""
        if self._primary_running(ctx):
            return
        candidates = [PostgresNode(n) for n in nodes(ctx) if n["name"] != self.name]
        candidates = [c for c in candidates if c.initialized() and not c.is_standby_dir() and not c.running()]
        if candidates:
            max(candidates, key=lambda c: c.timeline(ctx)).up(ctx)

    def _start_primary_or_rejoin(self, ctx: Ctx) -> None:
        """This stopped data dir was a primary. Start it as the primary only if no other node is the
        primary: a running one, or a stopped one on a newer timeline (it was promoted after this one
        failed). Otherwise rejoin it as that primary's standby."""
        others = [PostgresNode(n) for n in nodes(ctx) if n["name"] != self.name]
        current = next((o for o in others if o.running() and in_recovery(ctx, o.node) is False), None)
        if current is None:
            mine = self.timeline(ctx)
            newer = [o for o in others if o.initialized() and not o.running() and not o.is_standby_dir()
                     and o.timeline(ctx) >= mine]
            if newer:
                if newer[0].timeline(ctx) == mine:
                    raise StackError(f"{self.name} and {newer[0].name} both claim to be primary on timeline "
                                     f"{mine}: refusing to start either; rebuild one of them")
                newer[0].up(ctx)  # the promoted node keeps its role
                current = newer[0]
        if current is None:
            self.render_config(ctx)
            self._start(ctx)
            return
        self.rejoin(ctx, current.node)

    def rejoin(self, ctx: Ctx, primary: dict) -> None:
        """Make this stopped, diverged old primary a standby of `primary`: pg_rewind from it (data
        checksums are on), or a new base backup when rewinding fails (the old data is kept aside)."""
        if self.running():
            raise StackError(f"{self.name} is running: stop it before it rejoins")
        self._ensure_slot_on(ctx, primary, fresh=False)
        # A just-promoted primary has its new timeline in its control file only after a checkpoint;
        # without one pg_rewind sees "the same timeline" and wrongly finds no rewind required.
        psql(ctx, primary, "CHECKPOINT")
        self._wait_dead_postmaster_gone()
        if self.leftover_pids():
            raise StackError(f"{self.name}: processes of the old server are still running: {self.leftover_pids()}")
        source = (f"host={socket_dir(primary)} port={primary['port']} user={SUPERUSER} dbname=postgres "
                  f"application_name={self.name}-rewind")
        result = ctx.run([_bin(ctx, "pg_rewind"), "-D", str(self.data_dir), f"--source-server={source}"],
                         user=PG_USER, check=False, timeout=1800)
        with ctx.logfile(self.name).open("a") as log:
            log.write(f"--- stack: pg_rewind {self.name} from {primary['name']} (exit {result.returncode}):\n"
                      f"{result.stdout}{result.stderr}")
        if result.returncode == 0:
            # pg_rewind copied the source's configuration files: make them this node's again.
            for leftover in ("postmaster.pid", "recovery.signal"):
                (self.data_dir / leftover).unlink(missing_ok=True)
            self._write_standby_settings(ctx, primary)
            self.render_config(ctx)
            self._start(ctx)
            try:
                self._wait_answers(ctx)
                self._wait_streaming(ctx, timeout=30)
            except StackError:
                ctx.run([_bin(ctx, "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60"],
                        user=PG_USER, check=False, timeout=90)
            else:
                # Slots this node had as a primary would hold WAL here forever: drop them.
                _try_psql(ctx, self.node, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                          "WHERE NOT active")
                return
        # Rewinding failed, or the rewound node cannot follow: a new base backup, old data kept aside.
        with ctx.logfile(self.name).open("a") as log:
            log.write(f"--- stack: {self.name} cannot rejoin by pg_rewind: new base backup from {primary['name']}, "
                      f"old data kept in {self.data_dir.name}.stale\n")
        stale = self.data_dir.with_name(self.data_dir.name + ".stale")
        shutil.rmtree(stale, ignore_errors=True)
        self.data_dir.rename(stale)
        self._clone_from(ctx, primary)

    def _attach_to_pgpool(self, ctx: Ctx) -> None:
        """When pgpool runs and has this node detached (after a failure or a planned stop), attach it."""
        if _topology(ctx)["single"] or not Pgpool().running(ctx):
            return
        node_id = str(self.node["id"])
        rows: list[dict] = []
        # pgpool does not answer while it handles a failover (at most search_primary_node_timeout)
        wait_until(lambda: bool(rows.extend(_pool_nodes_or_empty(ctx)) or rows), 30, 0.5)
        entry = next((n for n in rows if n["node_id"] == node_id), None)
        if entry is not None and entry["status"] == "down":
            attach_node(ctx, int(node_id))


# --- Pgpool-II ----------------------------------------------------------------------------------------

def pgpool_dir(ctx: Ctx) -> Path:
    return Path(_topology(ctx)["pgpool"]["dir"])


def pcp(ctx: Ctx, command: str, *args: str, timeout: float = 60) -> str:
    """Run a pcp command (e.g. 'pcp_node_info') against our pgpool as user pcp; returns stdout."""
    pg = _topology(ctx)["pgpool"]
    argv = [command, "-h", pg["host"], "-p", str(pg["pcp_port"]), "-U", "pcp", "-w", *args]
    return ctx.run(argv, user=PG_USER, env={"PCPPASSFILE": str(pgpool_dir(ctx) / ".pcppass")},
                   timeout=timeout).stdout


def attach_node(ctx: Ctx, node_id: int, timeout: float = 30) -> None:
    """pcp_attach_node, then wait until SHOW POOL_NODES shows the node up."""
    pcp(ctx, "pcp_attach_node", "-n", str(node_id))
    ok = wait_until(lambda: any(n["node_id"] == str(node_id) and n["status"] in ("up", "waiting")
                                for n in _pool_nodes_or_empty(ctx)), timeout, 0.3)
    if not ok:
        raise StackError(f"pgpool did not attach node {node_id}:\n{ctx.log_tail('pgpool')}")


def pool_nodes(ctx: Ctx, user: str = "app") -> list[dict]:
    """SHOW POOL_NODES through pgpool, as the app (or 'owner') role: one dict per node with node_id,
    hostname, port, status, pg_status, lb_weight, role, pg_role, select_cnt, load_balance_node,
    replication_delay, replication_state, replication_sync_state, last_status_change (all strings)."""
    v, s, pg = ctx.vars, _secrets(ctx), _topology(ctx)["pgpool"]
    role, password = ((v["pg_app_role"], s["db_app_password"]) if user == "app"
                      else (v["pg_owner_role"], s["db_owner_password"]))
    result = ctx.run([_bin(ctx, "psql"), "-X", "--csv", "-h", pg["host"], "-p", str(pg["port"]), "-U", role,
                      "-d", v["pg_database"], "-c", "SHOW POOL_NODES"],
                     env={"PGPASSWORD": password, "PGAPPNAME": "mes-stack", "PGCONNECT_TIMEOUT": "5"},
                     timeout=30)
    return list(csv.DictReader(io.StringIO(result.stdout)))


def _pool_nodes_or_empty(ctx: Ctx) -> list[dict]:
    try:
        return pool_nodes(ctx)
    except (StackError, OSError):
        return []


class Pgpool:
    """Pgpool-II in front of the PostgreSQL nodes, in the foreground as the postgres user."""

    name = "pgpool"

    def _files(self, ctx: Ctx) -> dict[str, Path]:
        d = pgpool_dir(ctx)
        return {"conf": d / "pgpool.conf", "hba": d / "pool_hba.conf", "failover": d / "failover.sh",
                "pcp": d / "pcp.conf", "key": d / ".pgpoolkey", "passwd": d / "pool_passwd",
                "pcppass": d / ".pcppass", "pid": d / "pgpool.pid"}

    def pid(self, ctx: Ctx) -> int | None:
        pid = ctx.pid(self.name)
        if pid is None:
            return None
        try:
            # ("setpriv" for the moment between spawn and its exec of pgpool)
            return pid if Path(f"/proc/{pid}/comm").read_text().strip() in ("pgpool", "setpriv") else None
        except OSError:
            return None

    def running(self, ctx: Ctx) -> bool:
        return self.pid(ctx) is not None

    def configure(self, ctx: Ctx) -> bool:
        """Render every file pgpool reads; True if any changed."""
        f = self._files(ctx)
        ctx.ensure_dir(pgpool_dir(ctx), owner=PG_USER, mode=0o700)
        ctx.ensure_dir(pgpool_dir(ctx) / "oiddir", owner=PG_USER, mode=0o700)
        changed = _render(ctx, "pgpool/pgpool.conf.j2", f["conf"], mode=0o600)
        changed |= _render(ctx, "pgpool/pool_hba.conf.j2", f["hba"], mode=0o600)
        changed |= _render(ctx, "pgpool/failover.sh.j2", f["failover"], mode=0o700)
        s, v, pg = _secrets(ctx), ctx.vars, _topology(ctx)["pgpool"]
        changed |= _write_private(f["key"], s["pgpool_key"])
        # pcp.conf: user:md5(password), what `pg_md5 PASSWORD` prints (hashed here: no password in ps).
        changed |= _write_private(f["pcp"], f"pcp:{hashlib.md5(s['pcp_password'].encode()).hexdigest()}\n")
        changed |= _write_private(f["pcppass"], f"{pg['host']}:{pg['pcp_port']}:pcp:{s['pcp_password']}\n")
        # pool_passwd: AES entries made by pg_enc; the same inputs give the same file, so only redo it
        # when a password or the key changed (pg_enc's output differs on every run).
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

    def up(self, ctx: Ctx) -> None:
        """Render the files, start pgpool if it does not run, wait until SHOW POOL_NODES shows every node
        up and a primary. A running pgpool is left running (changed files are reloaded with SIGHUP) and
        only has to answer with a primary."""
        f = self._files(ctx)
        changed = self.configure(ctx)
        if self.running(ctx):
            if changed:  # settings that need a restart stay as they were until the next down/up
                os.kill(self.pid(ctx), signal.SIGHUP)
            self._wait_nodes_up(ctx, every_node=False)
            return
        else:
            (pgpool_dir(ctx) / "failover.disabled").unlink(missing_ok=True)
            f["pid"].unlink(missing_ok=True)
            # -n: foreground (logs to stderr, captured by spawn); -D: forget node states remembered from
            # the last run, nodes are checked again.
            ctx.spawn(self.name, _exec_as_pg(["pgpool", "-n", "-D", "-f", str(f["conf"]), "-F", str(f["pcp"]),
                                              "-a", str(f["hba"]), "-k", str(f["key"])]),
                      env={"HOME": _pg_home()}, cwd=pgpool_dir(ctx))
        self._wait_nodes_up(ctx)

    def _wait_nodes_up(self, ctx: Ctx, timeout: float = 60, every_node: bool = True) -> None:
        want = {str(n["id"]) for n in nodes(ctx)} if every_node else set()

        def ready() -> bool:
            if not self.running(ctx):
                raise StackError(f"pgpool exited:\n{ctx.log_tail(self.name)}")
            rows = _pool_nodes_or_empty(ctx)
            up = {r["node_id"] for r in rows if r["status"] in ("up", "waiting") and r["pg_status"] == "up"}
            return want <= up and any(r["role"] == "primary" for r in rows)

        if not wait_until(ready, timeout, 0.3):
            raise StackError(f"pgpool does not show every node up: {_pool_nodes_or_empty(ctx)}\n"
                             f"{ctx.log_tail(self.name)}")

    def down(self, ctx: Ctx) -> None:
        # SIGINT = pgpool's fast shutdown (SIGTERM would wait for every client to disconnect).
        ctx.stop(self.name, sig=signal.SIGINT, timeout=30)
        self._files(ctx)["pid"].unlink(missing_ok=True)
        (pgpool_dir(ctx) / "failover.disabled").unlink(missing_ok=True)

    def status(self, ctx: Ctx) -> tuple[bool, str]:
        if not self.running(ctx):
            return False, "not running"
        rows = _pool_nodes_or_empty(ctx)
        if not rows:
            return False, "running but SHOW POOL_NODES does not answer"
        up = [r for r in rows if r["status"] in ("up", "waiting")]
        primary = next((r for r in rows if r["role"] == "primary" and r in up), None)
        names = {str(n["id"]): n["name"] for n in nodes(ctx)}
        detail = f"pgpool: {len(up)}/{len(rows)} nodes up, primary " + (
            names.get(primary["node_id"], primary["node_id"]) if primary else "NONE")
        down = [names.get(r["node_id"], r["node_id"]) for r in rows if r not in up]
        if down:
            detail += f", down: {', '.join(down)}"
        return primary is not None and not down, detail


# --- postgres_exporter ------------------------------------------------------------------------------

class PostgresExporter:
    """prometheus-postgres-exporter for one node, as the exporter role over TCP."""

    def __init__(self, node: dict):
        self.node = node
        self.name = f"{node['name']}_exporter"
        self.address = f"{node['host']}:{node['exporter_port']}"

    def _dsn(self, ctx: Ctx) -> str:
        v, s = ctx.vars, _secrets(ctx)
        return (f"postgresql://{quote(v['pg_exporter_role'], safe='')}:{quote(s['exporter_password'], safe='')}"
                f"@{self.node['host']}:{self.node['port']}/postgres?sslmode=disable"
                f"&application_name={self.name}")

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
            if EXPORTER_QUERIES.exists():
                queries = ctx.ensure_dir(ctx.path("postgres_exporter"), mode=0o755) / "queries.yml"
                if not queries.exists() or queries.read_text() != EXPORTER_QUERIES.read_text():
                    queries.write_text(EXPORTER_QUERIES.read_text())
                queries.chmod(0o644)
                argv.append(f"--extend.query-path={queries}")
            ctx.spawn(self.name, _exec_as_pg(argv), env={"DATA_SOURCE_NAME": self._dsn(ctx), "HOME": _pg_home()})
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


# --- the tier as a whole ----------------------------------------------------------------------------

def components(ctx: Ctx) -> list:
    """Every database-tier component in start order (stop in reverse order)."""
    out: list = [PostgresNode(n) for n in nodes(ctx)]
    if not _topology(ctx)["single"]:
        out.append(Pgpool())
    out.extend(PostgresExporter(n) for n in nodes(ctx))
    return out


def _url(user: str, password: str, host: str, port, db: str) -> str:
    return (f"postgresql+psycopg2://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@{host}:{port}/{quote(db, safe='')}")


def database_urls(ctx: Ctx) -> dict[str, str]:
    """SQLAlchemy URLs of the database, as the roles see it now:
    - app: through pgpool as the app role (the service's DATABASE_URL; direct in the single topology);
    - owner: directly to the current primary as the owner role (MIGRATION_DATABASE_URL). Migrations do not
      go through pgpool: pgpool sends their DDL to the primary, but reads before the first write of a
      transaction (Alembic's version lookup) would be load-balanced to a standby that may lag;
    - owner_direct: the same as owner; app_direct: the app role directly on the current primary.
    The primary is looked up at call time, so after a failover these point to the new primary; while the
    stack is down they name the node that the next `up` makes the primary (expected_primary_node)."""
    v, s = ctx.vars, _secrets(ctx)
    primary = expected_primary_node(ctx)
    db = v["pg_database"]
    app_direct = _url(v["pg_app_role"], s["db_app_password"], primary["host"], primary["port"], db)
    owner_direct = _url(v["pg_owner_role"], s["db_owner_password"], primary["host"], primary["port"], db)
    pg = _topology(ctx)["pgpool"]
    app = app_direct if _topology(ctx)["single"] else _url(v["pg_app_role"], s["db_app_password"],
                                                            pg["host"], pg["port"], db)
    return {"app": app, "owner": owner_direct, "owner_direct": owner_direct, "app_direct": app_direct}
