"""What every component of the local stack uses: the variables, template rendering, and processes
that are started detached, tracked by pid file, and stopped by pid."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import yaml

ROOT = Path(__file__).resolve().parent.parent
GROUP_VARS = ROOT / "ansible" / "group_vars" / "all" / "main.yml"
LOCAL_LAYOUT = Path(__file__).resolve().parent / "local.yml"
SECRET_NAMES = ("db_owner_password", "db_app_password", "replication_password", "pgpool_password",
                "exporter_password", "pgpool_key", "pcp_password", "secret_key", "backup_cipher_pass",
                "monitoring_password", "redis_app_password", "redis_exporter_password", "redis_patroni_password",
                "redis_admin_password", "crm_owner_password", "crm_reader_password", "crm_replication_password",
                "crm_guard_password")
LOG_MODE = 0o640


def shared_plugin(name: str):
    """ansible/filter_plugins/<name>.py, loaded as a file: the code the Ansible roles run, which the stack runs
    too (plain Python, no Ansible needed)."""
    spec = importlib.util.spec_from_file_location(f"mes_shared_{name}", ROOT / "ansible" / "filter_plugins" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class StackError(RuntimeError):
    """A component failed to start or answer; the message says which and shows its log tail."""


def _to_nice_yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=False)


def _hash(value, kind: str = "sha1") -> str:
    """Ansible's `hash` filter: the hex digest of the text (e.g. a password stored as its SHA-256)."""
    return hashlib.new(kind, str(value).encode()).hexdigest()


def _to_bool(value) -> bool:
    """Ansible's `bool` filter: yes/on/true/1 (any case) are true."""
    return value if isinstance(value, bool) else str(value).strip().lower() in ("yes", "on", "true", "1")


@dataclass
class Ctx:
    """The state folder, the variables, and helpers to render files and run processes."""

    state: Path
    vars: dict = field(default_factory=dict)

    # --- folders ----------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.state.joinpath(*parts)

    def ensure_dir(self, path: Path, owner: str | None = None, mode: int = 0o755) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        if owner:
            chown(path, owner)
        return path

    # --- templates --------------------------------------------------------------------------
    def render(self, template: str, dest: Path, *, mode: int = 0o644, owner: str | None = None,
               extra: dict | None = None) -> Path:
        """Render a template of the repository (e.g. 'haproxy/haproxy.cfg.j2') to `dest`; `extra` adds
        variables or overrides settings (as Ansible's task vars do)."""
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROOT)), undefined=jinja2.StrictUndefined,
                                 keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
        env.filters["to_json"] = lambda v: __import__("json").dumps(v)
        env.filters["to_nice_yaml"] = _to_nice_yaml
        env.filters["bool"] = _to_bool
        env.filters["hash"] = _hash
        text = env.get_template(template).render({**self.vars, **(extra or {})})
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists() or dest.read_text() != text:
            dest.write_text(text)
        dest.chmod(mode)
        if owner:
            chown(dest, owner)
        return dest

    # --- processes --------------------------------------------------------------------------
    def pidfile(self, name: str) -> Path:
        return self.path("pids", f"{name}.pid")

    def logfile(self, name: str) -> Path:
        return self.path("logs", f"{name}.log")

    def open_log(self, name: str, owner: str | None = None):
        """logs/NAME.log for appending, private to its service: mode 0640, owned by `owner`, in a
        folder other local users cannot enter (a log may hold addresses, ids and error details)."""
        self.ensure_dir(self.path("logs"), mode=0o750)
        path = self.logfile(name)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
        os.fchmod(fd, LOG_MODE)  # also a file made before this rule or under a looser umask
        if owner:
            chown(path, owner)
        return os.fdopen(fd, "ab")

    def run(self, argv: list[str], *, user: str | None = None, env: dict | None = None,
            check: bool = True, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(as_user(argv, user), env=_env(env), cwd=cwd or "/", capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise StackError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr or result.stdout}")
        return result

    def spawn(self, name: str, argv: list[str], *, user: str | None = None, env: dict | None = None,
              cwd: Path | None = None) -> int:
        """Start a foreground program detached from us (its own session), log to logs/NAME.log."""
        self.ensure_dir(self.path("pids"))
        log = self.open_log(name, user)
        proc = subprocess.Popen(as_user(argv, user), env=_env(env), cwd=cwd or "/", stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.pidfile(name).write_text(f"{proc.pid}\n")
        return proc.pid

    def pid(self, name: str, pidfile: Path | None = None) -> int | None:
        """The live pid recorded for `name` (or in `pidfile`), else None."""
        path = pidfile or self.pidfile(name)
        try:
            pid = int(path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if alive(pid) else None

    def stop(self, name: str, *, pidfile: Path | None = None, sig: int = signal.SIGTERM, timeout: float = 20) -> bool:
        """Stop the process recorded for `name` by its pid; True if it was running."""
        pid = self.pid(name, pidfile)
        if pid is None:
            (pidfile or self.pidfile(name)).unlink(missing_ok=True)
            return False
        os.kill(pid, sig)
        if not wait_until(lambda: not alive(pid), timeout):
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not alive(pid), 5)
        if pidfile is None:
            self.pidfile(name).unlink(missing_ok=True)
        return True

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile(name).read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _env(extra: dict | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def as_user(argv: list[str], user: str | None) -> list[str]:
    """Run as another system user when we are root (PostgreSQL refuses to run as root). setpriv
    execs the program, so the pid we record is the program's own and our signals reach it."""
    if user and os.geteuid() == 0 and user != "root":
        return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]
    return list(argv)


def chown(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def alive(pid: int) -> bool:
    """True for a running process (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] not in "ZX"
    except (FileNotFoundError, IndexError):
        return False


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def load_secrets(state: Path) -> dict:
    """Throwaway secrets for this machine's stack, made once and kept with its data (mode 0600)."""
    path = state / "secrets.yml"
    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    missing = [n for n in SECRET_NAMES if n not in data]
    if missing:
        data.update({n: secrets.token_urlsafe(24) for n in missing})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data))
        path.chmod(0o600)
    return data
