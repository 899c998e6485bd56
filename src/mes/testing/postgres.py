"""Throwaway PostgreSQL servers for the test suite and the benchmarks.

Tests must run against real PostgreSQL (locking, constraints and privileges
behave differently in SQLite), but must never touch a developer's or the
machine's cluster.  So each run initialises its own cluster in a temporary
folder, listens only on 127.0.0.1 and a unix socket inside that folder, and
is stopped and deleted afterwards.

PostgreSQL refuses to run as root, so when the current process is root every
server command runs as the ``postgres`` system user through ``runuser``;
otherwise the commands run as the current user.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = [
    "UNSAFE_FAST_SETTINGS",
    "PostgresCommandError",
    "PostgresServer",
    "create_mes_database",
    "free_port",
    "port_slice",
    "start_postgres",
    "temporary_postgres",
]

#: Opt-in settings that trade crash safety for speed.  Only for runs whose
#: results do not depend on durability; benchmarks that measure commit cost
#: must leave them out (the default keeps durability on).
UNSAFE_FAST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}

_FALLBACK_BINDIR = Path("/usr/lib/postgresql/15/bin")
_SERVICE_USER = "postgres"
_SUPERUSER = "postgres"
# Settings that tie the server to this module's assumptions; callers may not override them.
_RESERVED_SETTINGS = frozenset({"listen_addresses", "port", "unix_socket_directories"})
_DEFAULT_SETTINGS = {"max_connections": "200", "shared_buffers": "256MB"}
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
_START_ATTEMPTS = 3


class PostgresCommandError(subprocess.CalledProcessError):
    """A failed server command whose message carries the diagnostics.

    ``CalledProcessError`` alone only says "returned non-zero exit status",
    which is useless in a CI log; this keeps it catchable as one.
    """

    def __init__(self, returncode: int, cmd: Sequence[str], output: str = "",
                 stderr: str = "", detail: str = "") -> None:
        super().__init__(returncode, list(cmd), output, stderr)
        self.detail = detail

    def __str__(self) -> str:
        parts = [super().__str__()]
        if self.stderr and self.stderr.strip():
            parts.append("stderr:\n" + self.stderr.strip())
        if self.detail:
            parts.append(self.detail)
        return "\n".join(parts)


def _bindir() -> Path:
    """Directory of the server binaries; ``pg_config`` knows it, Debian's default otherwise."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], check=True, capture_output=True,
                                 text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    return _FALLBACK_BINDIR


def _is_root() -> bool:
    return os.geteuid() == 0


def _as_service_user(argv: Sequence[str]) -> list[str]:
    """Prefix ``argv`` so it runs as ``postgres`` when we are root (PostgreSQL refuses root)."""
    if _is_root():
        return ["runuser", "-u", _SERVICE_USER, "--", *argv]
    return list(argv)


def _give_to_service_user(path: Path) -> None:
    """Hand ``path`` to the ``postgres`` user so the server can write there; no-op when not root."""
    if _is_root():
        shutil.chown(path, user=_SERVICE_USER, group=_SERVICE_USER)


def _clean_env() -> dict[str, str]:
    """Environment without PG* variables, so a developer's PGHOST/PGDATA etc. cannot redirect us."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _run(argv: Sequence[str], *, cwd: Path, timeout: float | None = None,
         detail: str = "") -> subprocess.CompletedProcess[str]:
    """Run a server command as the service user; raise with its stderr on failure.

    ``cwd`` must be readable by ``postgres`` (root's home is not, and the
    tools complain about it).
    """
    cmd = _as_service_user(argv)
    proc = subprocess.run(cmd, cwd=cwd, env=_clean_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise PostgresCommandError(proc.returncode, cmd, proc.stdout, proc.stderr, detail)
    return proc


def _quote_setting(value: str) -> str:
    """Quote a postgresql.conf value; PostgreSQL accepts quoted values for every setting type."""
    return "'" + str(value).replace("'", "''") + "'"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _log_tail(log: Path, lines: int = 40) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError as exc:
        return f"(no server log at {log}: {exc})"
    return f"last lines of {log}:\n" + "\n".join(text.splitlines()[-lines:])


_handed_out: set[int] = set()


def _ephemeral_low(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _all_ports() -> tuple[int, int]:
    """[low, high): from 10000 up to the kernel's ephemeral range."""
    return 10000, max(_ephemeral_low(), 10001)


def _port_range() -> tuple[int, int]:
    """[low, high) to pick from: all of them, or the slice MES_FREE_PORTS="LOW-HIGH" names (parallel
    test workers each get their own, so that two never pick the same port)."""
    spec = os.environ.get("MES_FREE_PORTS", "")
    if spec:
        low, high = (int(part) for part in spec.split("-"))
        return low, high
    return _all_ports()


def port_slice(index: int, count: int) -> str:
    """MES_FREE_PORTS for the index-th of `count` processes that pick ports at the same time."""
    low, high = _all_ports()
    size = (high - low) // count
    return f"{low + index * size}-{low + (index + 1) * size}"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    It lies below the kernel's ephemeral range, so that no outgoing connection (a stack's own clients,
    dozens per second while it starts) takes it as its source port before the server binds it; and it
    is never handed out twice by this process. Another process may still grab it, which is why
    :func:`start_postgres` retries with a fresh port when it picked the port.
    """
    low, high = _port_range()
    for _ in range(500):
        port = random.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """A running throwaway server; the unix socket lives in ``datadir``."""

    datadir: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def _socket_dir(self) -> Path:
        return self.datadir

    def url(self, user: str, password: str, dbname: str = "mes") -> str:
        """SQLAlchemy URL over TCP, so password authentication is really exercised."""
        return (f"postgresql+psycopg2://{quote(user, safe='')}:{quote(password, safe='')}"
                f"@{self.host}:{self.port}/{quote(dbname, safe='')}")

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` as the superuser over the unix socket and return psql's stdout.

        The SQL goes through a file rather than ``-c`` because ``-c`` runs
        several statements as one transaction, which e.g. CREATE DATABASE
        refuses.  ``ON_ERROR_STOP`` makes the first error fail the call.
        """
        fd, name = tempfile.mkstemp(prefix="psql-", suffix=".sql", dir=self.datadir.parent)
        sql_file = Path(name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(sql)
            _give_to_service_user(sql_file)  # mode stays 0600: it may contain passwords
            argv = [str(_bindir() / "psql"), "-X", "-v", "ON_ERROR_STOP=1",
                    "-h", str(self._socket_dir), "-p", str(self.port),
                    "-U", _SUPERUSER, "-d", dbname, "-f", str(sql_file)]
            return _run(argv, cwd=self.datadir.parent).stdout
        finally:
            sql_file.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the server (fast: roll back open sessions); safe to call repeatedly."""
        if not (self.datadir / "postmaster.pid").exists():
            return
        argv = [str(_bindir() / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "-t", "60", "stop"]
        try:
            _run(argv, cwd=self.datadir.parent, timeout=120)
        except PostgresCommandError:
            if (self.datadir / "postmaster.pid").exists():
                raise  # still running: do not hide it


def _check_writable_by_service_user(base_dir: Path) -> None:
    """Fail early with a clear message if ``postgres`` cannot reach ``base_dir``.

    Otherwise initdb fails with a less obvious permission error, typically
    because a parent folder is not traversable by other users.
    """
    if not _is_root():
        return
    proc = subprocess.run(_as_service_user(["test", "-w", str(base_dir), "-a", "-x", str(base_dir)]),
                          cwd="/", env=_clean_env(), capture_output=True)
    if proc.returncode != 0:
        raise PermissionError(
            f"user {_SERVICE_USER!r} cannot write into {base_dir}; it must own the folder "
            "and every parent folder must be traversable (o+x)")


def start_postgres(base_dir: Path, *, port: int | None = None,
                   settings: dict[str, str] | None = None) -> PostgresServer:
    """Initialise a new cluster in ``base_dir/data`` and start it.

    ``settings`` are appended to postgresql.conf after the defaults
    (``max_connections=200``, ``shared_buffers=256MB``) and may override
    them; pass :data:`UNSAFE_FAST_SETTINGS` to trade durability for speed.
    Local (socket) connections are trusted, TCP connections need a SCRAM
    password, so the application's real login path is tested.
    """
    extra = dict(settings or {})
    reserved = _RESERVED_SETTINGS.intersection(extra)
    if reserved:
        raise ValueError(f"settings {sorted(reserved)} are managed by start_postgres")

    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    _give_to_service_user(base_dir)
    _check_writable_by_service_user(base_dir)

    datadir = base_dir / "data"
    socket_path = datadir / ".s.PGSQL.65535"
    if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
        raise ValueError(f"{base_dir} is too long a path for a unix socket; use a shorter folder")

    bindir = _bindir()
    _run([str(bindir / "initdb"), "-D", str(datadir), "--data-checksums", "-U", _SUPERUSER,
          "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C"],
         cwd=base_dir, timeout=300)

    conf = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(datadir),
            **_DEFAULT_SETTINGS, **extra}
    pick_port = port is None
    log = base_dir / "postgres.log"
    for attempt in range(1, _START_ATTEMPTS + 1):
        server = PostgresServer(datadir=datadir, port=free_port() if pick_port else port)
        lines = [f"{key} = {_quote_setting(value)}" for key, value in {**conf, "port": str(server.port)}.items()]
        # Appended, so on a retry the newer port line wins.
        with open(datadir / "postgresql.conf", "a", encoding="utf-8") as fh:
            fh.write("\n# added by mes.testing.postgres\n" + "\n".join(lines) + "\n")
        try:
            _run([str(bindir / "pg_ctl"), "-D", str(datadir), "-w", "-t", "60",
                  "-l", str(log), "start"], cwd=base_dir, timeout=120)
            return server
        except (PostgresCommandError, subprocess.TimeoutExpired) as exc:
            with contextlib.suppress(Exception):
                server.stop()  # a slow start may still be running: leave nothing behind
            tail = _log_tail(log)
            port_taken = "could not bind" in tail or "Address already in use" in tail
            if pick_port and port_taken and attempt < _START_ATTEMPTS:
                continue
            if isinstance(exc, PostgresCommandError):
                exc.detail = tail
                raise
            raise PostgresCommandError(-1, exc.cmd, detail=f"timed out\n{tail}") from exc
    raise AssertionError("unreachable")


def create_mes_database(server: PostgresServer, *, dbname: str = "mes",
                        owner: tuple[str, str] = ("mes_owner", "owner-pw"),
                        app: tuple[str, str] = ("mes_app", "app-pw")) -> tuple[str, str]:
    """Create the application database with the production privilege split.

    The owner role runs migrations and owns the schema; the app role can
    only read and write rows, so a test fails if the application ever
    relies on DDL at runtime.  Returns ``(owner_url, app_url)``.
    """
    owner_name, owner_pw = owner
    app_name, app_pw = app
    o, a, d = _quote_ident(owner_name), _quote_ident(app_name), _quote_ident(dbname)

    server.psql(
        f"CREATE ROLE {o} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {_quote_literal(owner_pw)};\n"
        f"CREATE ROLE {a} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {_quote_literal(app_pw)};\n"
    )
    # Own call: CREATE DATABASE cannot run inside a transaction block.
    server.psql(f"CREATE DATABASE {d} OWNER {o};\n")
    server.psql(
        f"GRANT CONNECT ON DATABASE {d} TO {a};\n"
        f"ALTER SCHEMA public OWNER TO {o};\n"
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n"
        f"GRANT USAGE ON SCHEMA public TO {a};\n"
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {a};\n"
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public "
        f"GRANT USAGE, SELECT ON SEQUENCES TO {a};\n",
        dbname=dbname,
    )
    # Read-your-writes asks this instead of reading pg_stat_replication (as postgresql/roles.sql.j2).
    server.psql(
        "CREATE FUNCTION public.mes_replicas_replayed(target pg_lsn) RETURNS boolean\n"
        "  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $b$ SELECT count(*) > 0"
        " AND coalesce(bool_and(r.replay_lsn >= target), false) FROM pg_catalog.pg_stat_replication r WHERE NOT EXISTS"
        " (SELECT 1 FROM pg_catalog.pg_replication_slots s WHERE s.active_pid = r.pid AND s.slot_type = 'logical') $b$;\n"
        "REVOKE ALL ON FUNCTION public.mes_replicas_replayed(pg_lsn) FROM PUBLIC;\n"
        f"GRANT EXECUTE ON FUNCTION public.mes_replicas_replayed(pg_lsn) TO {a};\n",
        dbname=dbname,
    )
    return server.url(owner_name, owner_pw, dbname), server.url(app_name, app_pw, dbname)


@contextlib.contextmanager
def temporary_postgres(settings: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    """Yield a started server in a fresh temporary folder; always stop it and delete the folder."""
    base_dir = Path(tempfile.mkdtemp(prefix="mes-pg-"))
    server: PostgresServer | None = None
    try:
        os.chmod(base_dir, 0o700)
        _give_to_service_user(base_dir)
        server = start_postgres(base_dir, settings=settings)
        yield server
    finally:
        try:
            if server is not None:
                server.stop()
            elif (base_dir / "data" / "postmaster.pid").exists():
                # Interrupted while starting: stop what may already run before deleting its folder.
                subprocess.run(_as_service_user([str(_bindir() / "pg_ctl"), "stop", "-m", "immediate", "-D",
                                                 str(base_dir / "data")]), cwd="/", env=_clean_env(),
                               capture_output=True, check=False)
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)
