"""The production topology on this machine, started exactly as `make up` does (in a temporary folder,
on free ports), for the topology and failover tests."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import requests
import yaml

from mes.testing.postgres import free_port
from stack import monauth
from stack.topology import make_ctx
from stack.topology import ports as stack_ports

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = yaml.safe_load((ROOT / "stack" / "local.yml").read_text())
GROUP_VARS = yaml.safe_load((ROOT / "ansible" / "group_vars" / "all" / "main.yml").read_text())
NEW_ORDER = {"reference": "T-1", "product": "BRKT-200", "material": "steel S235", "quantity": 5}


def late_reason(html: str) -> dict:
    """The late reason an order page asks for before a move (the order is at risk or late: the demo's
    norms put most new orders there), as form data; nothing when the page does not ask."""
    found = re.search(r'name="late_reason" required>\s*<option value="">[^<]*</option>\s*<option value="(\d+)"', html)
    return {"late_reason": found.group(1)} if found else {}


def stack_cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


class Stack:
    """The running topology: URLs, the stack's own context (pids, dbtier helpers), and API keys."""

    def __init__(self, env: dict, state: Path):
        self.env, self.state = env, state
        ports = stack_ports(env)
        self.public = f"https://127.0.0.1:{ports['public']}"
        self.operator = f"https://127.0.0.1:{ports['operator']}"
        self.http = f"http://127.0.0.1:{ports['http']}"
        self.ca = str(state / "pki" / "ca.crt")
        self.stats = f"http://127.0.0.1:{ports['haproxy_stats']}"
        self.prometheus = f"http://127.0.0.1:{ports['prometheus']}"
        self.ctx = make_ctx(None, env)
        # (user, password) of the monitoring endpoints: Prometheus and HAProxy's stats frontends.
        self.monitoring = monauth.credentials(self.ctx)

    def mes(self, *args: str) -> str:
        from stack.cli import mes
        return mes(self.ctx, *args)

    def new_key(self, name: str, tier: str = "standard", scope: str = "partner") -> dict:
        args = ["create-client", name, "--scope", scope, "--tier", tier]
        if scope == "partner":
            args += ["--partner", f"Partner {name}"]
        key = self.mes(*args).strip().splitlines()[-1]
        return {"Authorization": f"Bearer {key}"}

    def pid(self, name: str) -> int | None:
        return self.ctx.pid(name)

    def signal_group(self, name: str, sig: int) -> None:
        os.killpg(self.pid(name), sig)

    def redis(self, role: str = "admin", **kwargs):
        """A client of the stack's Redis, logged in as one of its ACL users (app, exporter, patroni, admin)."""
        import redis
        from stack.services import redis_url
        return redis.Redis.from_url(redis_url(self.ctx, role), **{"socket_timeout": 5, **kwargs})


@contextmanager
def running_stack(extra_env: dict | None = None):
    """`python -m stack up` in a fresh folder on free ports (and `extra_env`, e.g. MES_OTLP_ENDPOINT);
    `down` and the folder removed afterwards."""
    state = Path(tempfile.mkdtemp(prefix="mes-stack-"))
    state.chmod(0o755)
    env = {**os.environ, "MES_STACK_DIR": str(state), **(extra_env or {})}
    env.update({f"MES_PORT_{name.upper()}": str(free_port()) for name in LAYOUT["ports"]})
    started = stack_cli(env, "up")
    # Every HTTPS request of the tests verifies the frontends' certificates against the stack's own CA.
    bundle = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(state / "pki" / "ca.crt")
    cgroups = app_cgroups(env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield Stack(env, state)
    finally:
        if bundle is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = bundle
        stopped = stack_cli(env, "down")
        subprocess.run(["rm", "-rf", str(state)], check=False)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not [g for g in cgroups if g.exists()], f"`down` left the app pools' cgroups: {cgroups}"


def app_cgroups(env: dict) -> list[Path]:
    """The stack's cgroups of the app pools (stack/priority.py), where the machine has a cpu hierarchy."""
    from stack import priority
    found = priority.cpu_hierarchy()
    return list(priority.groups(make_ctx(None, env), found[1]).values()) if found else []


def api(stack: Stack, method: str, path: str, headers: dict, **kwargs) -> requests.Response:
    return requests.request(method, f"{stack.public}/api/v1{path}", headers=headers, timeout=15, **kwargs)


def create(stack: Stack, headers: dict, reference: str) -> dict:
    r = api(stack, "POST", "/orders", {**headers, "Idempotency-Key": reference}, json={**NEW_ORDER,
                                                                                         "reference": reference})
    assert r.status_code == 201, r.text
    return r.json()


def gunicorn_processes(master: int, workers: int) -> list[int]:
    """A gunicorn master and its workers, once all of them are forked."""
    children = Path(f"/proc/{master}/task/{master}/children")
    deadline = time.monotonic() + 30
    while len(children.read_text().split()) < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    return [master, *map(int, children.read_text().split())]


def cpu_cgroup(pid: int, version: int) -> str:
    """The process's cgroup in the hierarchy that has the cpu controller (from /proc/<pid>/cgroup)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if (version == 2 and controllers == "") or (version == 1 and "cpu" in controllers.split(",")):
            return path
    raise AssertionError(f"no cpu cgroup for {pid}")


def nice_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def autogroup_nice(pid: int) -> int | None:
    """The nice value of the process's autogroup; None where it has none: autogroups are off, or the
    process sits in a cpu cgroup other than the root one (the kernel then prints nothing)."""
    path = Path(f"/proc/{pid}/autogroup")
    text = path.read_text().split() if path.exists() else []
    return int(text[-1]) if text else None
