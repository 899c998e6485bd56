"""`mes_topology` for one machine: every component on loopback, ports from stack/local.yml or
MES_PORT_<NAME>, folders under the state folder."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import yaml

from .base import GROUP_VARS, LOCAL_LAYOUT, Ctx, load_secrets

TOPOLOGIES = ("split", "single")


def pg_bindir() -> str:
    try:
        return subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "/usr/lib/postgresql/15/bin"


def ports(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """local.yml's ports, each overridable by MES_PORT_<NAME> in `environ`."""
    layout = yaml.safe_load(LOCAL_LAYOUT.read_text())
    return {name: int(environ.get(f"MES_PORT_{name.upper()}", port)) for name, port in layout["ports"].items()}


def build(state: Path, topology: str = "split", environ: Mapping[str, str] = os.environ) -> dict:
    if topology not in TOPOLOGIES:
        raise SystemExit(f"TOPOLOGY must be one of {TOPOLOGIES}, not {topology!r}")
    host = yaml.safe_load(LOCAL_LAYOUT.read_text())["host"]
    p = ports(environ)
    single = topology == "single"
    app = lambda name: {"name": name, "host": host, "port": p[name]}  # noqa: E731
    node = lambda i: {"id": i, "name": f"pg{i}", "host": host, "port": p[f"pg{i}"],  # noqa: E731
                      "data_dir": str(state / f"pg{i}" / "data"), "conf_dir": str(state / f"pg{i}" / "conf"),
                      "socket_dir": str(state / f"pg{i}" / "run"),
                      "exporter_port": p[f"pg{i}_exporter"], "patroni_port": p[f"pg{i}_patroni"]}
    nodes = [node(0)] if single else [node(0), node(1)]
    topology = {
        "single": single,
        "pg_bindir": pg_bindir(),
        "pg_nodes": nodes,
        "pgpool": {"host": host, "port": p["pgpool"], "pcp_port": p["pgpool_pcp"], "dir": str(state / "pgpool")},
        "redis": {"host": host, "port": p["redis"], "dir": str(state / "redis"), "exporter_port": p["redis_exporter"]},
        "app_operator": [] if single else [app("operator1"), app("operator2")],
        "app_public": [] if single else [app("public1"), app("public2")],
        "app_single": [app("single1")] if single else [],
        "haproxy": {"bind": host, "public_port": p["public"], "operator_port": p["operator"],
                    "stats_port": p["haproxy_stats"], "dir": str(state / "haproxy")},
        "prometheus": {"host": host, "port": p["prometheus"], "dir": str(state / "prometheus")},
        "node_exporters": [{"name": "local", "host": host, "port": p["node_exporter"]}],
        # pgBackRest's repository: on VMs another host; here a folder of its own.
        "backup": {"repo_path": str(state / "backup" / "repo"), "dir": str(state / "backup")},
        # Three members, as on VMs: losing one of them changes nothing.
        "etcd": [{"name": f"etcd{i}", "host": host, "client_port": p[f"etcd{i}"], "peer_port": p[f"etcd{i}_peer"],
                  "dir": str(state / f"etcd{i}")} for i in range(3)],
    }
    if not single:
        topology["db_endpoints"] = {"host": host, "primary_port": p["db_primary"], "replica_port": p["db_replicas"],
                                    "stats_port": p["db_stats"], "dir": str(state / "db_endpoints")}
    return topology


def state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("MES_STACK_DIR") or Path.cwd() / "var" / "stack").resolve()


def make_ctx(topology: str | None = None, environ: Mapping[str, str] = os.environ) -> Ctx:
    """The context of this machine's stack; the topology is remembered from the first `up`.
    `environ` is where MES_STACK_DIR and MES_PORT_<NAME> are read (tests and benchmarks pass the
    environment of the stack they started)."""
    state = state_dir(environ)
    remembered = state / "topology"
    if topology is None:
        topology = remembered.read_text().strip() if remembered.exists() else "split"
    elif remembered.exists() and remembered.read_text().strip() != topology:
        raise SystemExit(f"The stack in {state} is the {remembered.read_text().strip()!r} topology; "
                         f"run `make down` and `make reset` before switching to {topology!r}.")
    settings = yaml.safe_load(GROUP_VARS.read_text())
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)
    if not remembered.exists():  # so that down/status later act on the topology that was started
        remembered.write_text(topology + "\n")
    variables = {**settings, "mes_topology": build(state, topology, environ), "mes_secrets": load_secrets(state)}
    return Ctx(state=state, vars=variables)


def wipe(ctx: Ctx) -> None:
    shutil.rmtree(ctx.state)
