"""Check the monitoring configuration: `python monitoring/check.py` (jinja2 and pyyaml, promtool on PATH).

1. renders prometheus.yml.j2 for the split and the single topology the way the local stack does
   (plain Jinja2, StrictUndefined, trim_blocks/lstrip_blocks, `to_json`), with group_vars and the
   topology of stack/topology.py (the contract's example when that cannot be imported), copies
   rules/ next to it, renders rules/*.yml.j2 there (settings from group_vars) and runs
   `promtool check config`; renders web.yml.j2 (the basic auth of Prometheus and Alertmanager) and
   runs `promtool check web-config`; renders alertmanager.yml.j2 with webhooks and with e-mail and runs
   `amtool check-config` (and checks that it refuses to render when the pages have no receiver);
2. `promtool check rules` on rules/*.yml and the rendered rules/*.yml.j2;
3. `promtool test rules tests/*.yml`;
4. lints the rules: every alert has `severity` (warning|critical) and `component` labels, `summary`,
   `description` and a `runbook_url` whose anchor is a heading of runbooks.md; every alert name has a
   warning rule (the Watchdog alone has severity none); and lists the alerts no test mentions.
Exits non-zero on the first failing step.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jinja2
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The dead man's switch: neither a page nor a ticket (alertmanager.yml.j2 routes it by name).
WATCHDOG = ("Watchdog", "none")
# Stand-ins for the secrets: the monitoring password and its bcrypt hash (cost 4).
SECRETS = {"monitoring_password": "check-password"}
PASSWORD_HASH = "$2b$04$0a5m1Pg/ax7ERCrokEdxDOnxlLk8FC.T1UBrvDoS8ykKNH2/ky21G"

CONTRACT_EXAMPLE = {  # stack/CONTRACT.md
    "single": False,
    "pg_bindir": "/usr/lib/postgresql/15/bin",
    "pg_nodes": [
        {"id": 0, "name": "pg0", "host": "127.0.0.1", "port": 5433, "data_dir": "/x/pg0/data", "conf_dir": "/x/pg0/conf",
         "exporter_port": 9187, "patroni_port": 8008},
        {"id": 1, "name": "pg1", "host": "127.0.0.1", "port": 5434, "data_dir": "/x/pg1/data", "conf_dir": "/x/pg1/conf",
         "exporter_port": 9188, "patroni_port": 8009},
    ],
    "etcd": [{"name": "etcd0", "host": "127.0.0.1", "client_port": 2479, "peer_port": 2480, "dir": "/x/etcd0"}],
    "db_endpoints": {"host": "127.0.0.1", "primary_port": 5440, "replica_port": 5441, "stats_port": 8405,
                     "dir": "/x/db_endpoints"},
    "pgpool": {"host": "127.0.0.1", "port": 9999, "pcp_port": 9898, "exporter_port": 9719, "dir": "/x/pgpool"},
    "redis": {"host": "127.0.0.1", "port": 6380, "dir": "/x/redis", "exporter_port": 9121},
    "app_operator": [{"name": "operator1", "host": "127.0.0.1", "port": 8101},
                     {"name": "operator2", "host": "127.0.0.1", "port": 8102}],
    "app_public": [{"name": "public1", "host": "127.0.0.1", "port": 8201},
                   {"name": "public2", "host": "127.0.0.1", "port": 8202}],
    "app_single": [],
    "haproxy": {"bind": "127.0.0.1", "public_port": 8443, "operator_port": 8444, "http_port": 8080, "stats_port": 8404,
                "dir": "/x/haproxy", "crt": "/x/haproxy/tls/mes.pem"},
    "prometheus": {"host": "127.0.0.1", "port": 9090, "dir": "/x/prometheus"},
    "node_exporters": [{"name": "local", "host": "127.0.0.1", "port": 9100}],
}


def topology(kind: str, state: Path) -> dict:
    try:
        sys.dont_write_bytecode = True  # no __pycache__ left in stack/
        sys.path.insert(0, str(ROOT))
        from stack.topology import build  # the local stack's own topology
        return build(state, kind)
    except Exception as exc:  # noqa: BLE001 - fall back to the contract's example
        print(f"  (stack.topology not usable: {exc}; using the contract's example)")
        topo = json.loads(json.dumps(CONTRACT_EXAMPLE))
        if kind == "single":
            topo.pop("db_endpoints")
            topo.update(single=True, pg_nodes=topo["pg_nodes"][:1], app_operator=[], app_public=[],
                        app_single=[{"name": "single1", "host": "127.0.0.1", "port": 8301}])
        return topo


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROOT)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["to_json"] = json.dumps
    env.filters["to_nice_yaml"] = lambda v: yaml.safe_dump(v, default_flow_style=False, sort_keys=False)
    return env


def group_vars() -> dict:
    return yaml.safe_load((ROOT / "ansible/group_vars/all/main.yml").read_text())


def render_web_config(out: Path) -> Path:
    path = out / "web.yml"
    path.write_text(environment().get_template("monitoring/web.yml.j2").render(
        **group_vars(), monitoring_password_hash=PASSWORD_HASH))
    return path


def render_alertmanager(out: Path) -> list[Path]:
    """alertmanager.yml.j2 as the local stack renders it (webhooks only) and with e-mail for both receivers
    and an SMTP login; without any receiver for the pages it must refuse to render."""
    env, settings = environment(), group_vars()
    template = env.get_template("monitoring/alertmanager.yml.j2")
    hooks = {f"alertmanager_{name}_webhook_url": f"http://127.0.0.1:9095/{name}" for name in ("pages", "tickets", "watchdog")}
    mail = {"alertmanager_pages_email_to": "oncall@example.org", "alertmanager_tickets_email_to": "ops@example.org",
            "alertmanager_smtp_smarthost": "smtp.example.org:587", "alertmanager_smtp_from": "mes@example.org",
            "alertmanager_smtp_auth_username": "mes", "alertmanager_smtp_auth_password": "check-password"}
    paths = []
    for name, extra in (("webhooks", hooks), ("email", mail)):
        path = out / f"alertmanager-{name}.yml"
        path.write_text(template.render({**settings, **extra}))
        paths.append(path)
    try:
        template.render({**settings, "alertmanager_tickets_webhook_url": "http://127.0.0.1:9095/tickets"})
    except jinja2.UndefinedError as exc:
        print(f"  no receiver for the pages: refused ({exc})")
    else:
        sys.exit("FAILED: alertmanager.yml.j2 rendered with nowhere to send the pages")
    return paths


def render(kind: str, out: Path) -> Path:
    env, settings = environment(), group_vars()
    folder = out / kind
    folder.mkdir(parents=True)
    text = env.get_template("monitoring/prometheus.yml.j2").render(
        **settings, mes_topology=topology(kind, out / "state"), mes_secrets=SECRETS)
    (folder / "prometheus.yml").write_text(text)
    shutil.copytree(HERE / "rules", folder / "rules", ignore=shutil.ignore_patterns("*.j2"))
    for template in sorted((HERE / "rules").glob("*.yml.j2")):  # settings from group_vars, as the stack does
        (folder / "rules" / template.name.removesuffix(".j2")).write_text(
            env.get_template(str(template.relative_to(ROOT))).render(**settings))
    jobs = [job["job_name"] for job in yaml.safe_load(text)["scrape_configs"]]
    print(f"  {kind}: jobs {', '.join(jobs)}")
    return folder / "prometheus.yml"


def run(*argv: str) -> None:
    print("$", " ".join(argv))
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        print(output)
        sys.exit(f"FAILED: {' '.join(argv)}")
    print("  ok")


def github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def lint() -> None:
    anchors = {github_anchor(line[3:]) for line in (HERE / "runbooks.md").read_text().splitlines()
               if line.startswith("## ")}
    tests_text = "\n".join(p.read_text() for p in sorted((HERE / "tests").glob("*.yml")))
    problems, alerts = [], {}
    for path in sorted((HERE / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                name, labels, ann = rule["alert"], rule.get("labels", {}), rule.get("annotations", {})
                alerts.setdefault(name, set()).add(labels.get("severity"))
                where = f"{path.name}: {name}"
                if labels.get("severity") not in ("warning", "critical") and \
                        (name, labels.get("severity")) != WATCHDOG:
                    problems.append(f"{where}: severity must be warning or critical")
                if not labels.get("component"):
                    problems.append(f"{where}: no component label")
                for key in ("summary", "description", "runbook_url"):
                    if not ann.get(key):
                        problems.append(f"{where}: no {key} annotation")
                url = ann.get("runbook_url", "")
                if not url.startswith("monitoring/runbooks.md#") or url.split("#", 1)[1] not in anchors:
                    problems.append(f"{where}: runbook_url {url!r} has no heading in runbooks.md")
    for name, severities in alerts.items():
        if "warning" not in severities and (name, *severities) != WATCHDOG:
            problems.append(f"{name}: no warning rule")
    untested = sorted(n for n in alerts if not re.search(rf"alertname: {re.escape(n)}\b", tests_text))
    print(f"  {len(alerts)} alerts, {len(alerts) - len(untested)} covered by tests"
          + (f"; untested: {', '.join(untested)}" if untested else ""))
    if problems:
        print("\n".join("  " + p for p in problems))
        sys.exit("FAILED: lint")
    print("  ok")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mes-monitoring-") as tmp:
        print("render and check the Prometheus configuration")
        for kind in ("split", "single"):
            config = render(kind, Path(tmp))
            run("promtool", "check", "config", str(config))
        run("promtool", "check", "web-config", str(render_web_config(Path(tmp))))
        print("render and check the Alertmanager configuration")
        for path in render_alertmanager(Path(tmp)):
            run("amtool", "check-config", str(path))
        rendered = sorted(str(p) for p in (config.parent / "rules").glob("*.yml")
                          if (HERE / "rules" / f"{p.name}.j2").exists())
        rules = sorted(str(p.relative_to(ROOT)) for p in (HERE / "rules").glob("*.yml"))
        tests = sorted(str(p.relative_to(ROOT)) for p in (HERE / "tests").glob("*.yml"))
        run("promtool", "check", "rules", *rules, *rendered)
        run("promtool", "test", "rules", *tests)
    print("lint the alerts")
    lint()


if __name__ == "__main__":
    main()
