"""`mes_topology` for one machine: every component on loopback, ports from stack/local.yml or
MES_PORT_<NAME>, folders under the state folder."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import yaml

from .base import GROUP_VARS, LOCAL_LAYOUT, Ctx, load_secrets, shared_plugin

TOPOLOGIES = ("split", "single")
# The local stack is a copy for trying receivers on: plain http to loopback is allowed here, over
# group_vars' mes_webhooks (as an inventory's mes_webhooks_site would).
LOCAL_WEBHOOKS = {"allow_http": True, "allowed_networks": ["127.0.0.0/8", "::1/128"]}


def pg_bindir() -> str:
    try:
        return subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "/usr/lib/postgresql/15/bin"


def ports(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """local.yml's ports, each overridable by MES_PORT_<NAME> in `environ`."""
    layout = yaml.safe_load(LOCAL_LAYOUT.read_text())
    return {name: int(environ.get(f"MES_PORT_{name.upper()}", port)) for name, port in layout["ports"].items()}


def _shared_builder():
    """ansible/filter_plugins/mes_topology.py: the one builder of mes_topology, also the VMs' (plain Python)."""
    return shared_plugin("mes_topology")


def build(state: Path, topology: str = "split", environ: Mapping[str, str] = os.environ) -> dict:
    if topology not in TOPOLOGIES:
        raise SystemExit(f"TOPOLOGY must be one of {TOPOLOGIES}, not {topology!r}")
    shape = _shared_builder()
    host = yaml.safe_load(LOCAL_LAYOUT.read_text())["host"]
    p = ports(environ)
    single = topology == "single"
    app = lambda name: shape.app(name, host, p[name])  # noqa: E731
    node = lambda i: shape.pg_node(i, f"pg{i}", host, p[f"pg{i}"], str(state / f"pg{i}" / "data"),  # noqa: E731
                                   str(state / f"pg{i}" / "conf"), p[f"pg{i}_exporter"], p[f"pg{i}_patroni"],
                                   socket_dir=str(state / f"pg{i}" / "run"))
    return shape.assemble(
        single=single, pg_bindir=pg_bindir(), pg_nodes=[node(0)] if single else [node(0), node(1)],
        # Three etcd members, as on VMs: losing one of them changes nothing.
        etcd=[shape.etcd_member(f"etcd{i}", host, p[f"etcd{i}"], p[f"etcd{i}_peer"], str(state / f"etcd{i}"))
              for i in range(3)],
        ports=p,
        dirs={**{name: str(state / name) for name in ("pgpool", "redis", "haproxy", "prometheus", "db_endpoints")},
              "haproxy_tls": str(state / "haproxy" / "tls")},
        app_operator=[] if single else [app("operator1"), app("operator2")],
        app_public=[] if single else [app("public1"), app("public2")],
        app_single=[app("single1")] if single else [],
        node_exporters=[{"name": "local", "host": host, "port": p["node_exporter"]}],
        hosts={"pgpool": host, "redis": host, "haproxy": host, "prometheus": host, "alertmanager": host,
               "db_endpoints": host},
        db_endpoint_instances=[shape.instance("local", host)],
        # One HAProxy, its own only peer (a reload hands its stick tables to the new process); no VIP.
        lb_instances=[shape.instance("local", host)],
        # pgBackRest's repository: on VMs another host; here a folder of its own.
        backup={**shape.backup_repository(str(state / "backup" / "repo"), str(state / "backup" / "log"),
                                          str(state / "backup" / "lock")),
                "dir": str(state / "backup")},
        # One webhook delivery worker (stack/services.py: WebhookWorker), with the public pool's settings.
        webhooks=[shape.app("webhooks", host, p["webhooks"])],
        # The CRM's own database (stack/crm.py); the "before" topology has none.
        crm=None if single else shape.crm_db("crmdb", host, p["crm_db"], str(state / "crmdb" / "data"),
                                             str(state / "crmdb" / "conf"), p["crm_db_exporter"],
                                             socket_dir=str(state / "crmdb" / "run")))


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
    # Tracing to a collector of one's own (group_vars: mes_trace_sample_ratio). No Tempo runs here, so
    # group_vars' mes_otlp_endpoint (Tempo on the VMs' monitoring host, a Jinja expression) does not
    # apply: nothing is exported unless MES_OTLP_ENDPOINT names a receiver.
    settings["mes_otlp_endpoint"] = environ.get("MES_OTLP_ENDPOINT", "")
    settings["mes_trace_sample_ratio"] = float(environ.get("MES_TRACE_SAMPLE_RATIO", settings["mes_trace_sample_ratio"]))
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)
    if not remembered.exists():  # so that down/status later act on the topology that was started
        remembered.write_text(topology + "\n")
    variables = {**settings, "mes_topology": build(state, topology, environ), "mes_secrets": load_secrets(state),
                 # Local only: the stack's webhook receiver of Alertmanager's notifications (stack/alertsink.py).
                 "stack_alert_receiver": {"host": yaml.safe_load(LOCAL_LAYOUT.read_text())["host"],
                                          "port": ports(environ)["alert_receiver"]},
                 # Local only: webhooks may go to receivers on this machine over plain http (group_vars'
                 # mes_webhooks stay production's: https only, no private address).
                 "mes_webhooks_site": LOCAL_WEBHOOKS}
    return Ctx(state=state, vars=variables)


def wipe(ctx: Ctx) -> None:
    shutil.rmtree(ctx.state)
