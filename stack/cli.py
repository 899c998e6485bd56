"""`python -m stack up|down|status|reset`: the topology as processes on this machine."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from . import backup, crm, dbtier, monauth, pki, priority, services
from .base import Ctx, StackError
from .services import (AlertReceiver, Alertmanager, AppInstance, HAProxy, NodeExporter, Prometheus, Redis, RedisExporter,
                       Scheduler, WebhookWorker)
from .topology import make_ctx, wipe

DEMO_ORDERS = 2000


def components(ctx: Ctx) -> list:
    """In start order; `down` goes in reverse."""
    t = ctx.vars["mes_topology"]
    database = dbtier.components(ctx)
    urls = dbtier.database_urls(ctx)
    if t["single"]:
        apps = [AppInstance("single", i, urls["app"], None) for i in t["app_single"]]
        return [*database, NodeExporter(), *apps, Scheduler(apps[0]), WebhookWorker(apps[0]), HAProxy(),
                *alerting(), Prometheus()]
    redis_url = services.redis_url(ctx)
    operator = [AppInstance("operator", i, urls["app"], redis_url) for i in t["app_operator"]]
    public = [AppInstance("public", i, urls["app"], redis_url) for i in t["app_public"]]
    return [*database, Redis(), RedisExporter(), NodeExporter(), *operator, *public, Scheduler(operator[0]),
            WebhookWorker(public[0]), *crm.components(ctx), HAProxy(), *alerting(), Prometheus()]


def alerting() -> list:
    """Alertmanager and the receiver it sends to, before Prometheus, which sends to Alertmanager."""
    return [AlertReceiver(), Alertmanager()]


def mes(ctx: Ctx, *args: str) -> str:
    """Run the `mes` CLI against the primary as the migration role."""
    urls = dbtier.database_urls(ctx)
    env = {**os.environ, "DATABASE_URL": urls["owner"], "MIGRATION_DATABASE_URL": urls["owner"],
           "MES_APP_DB_ROLE": ctx.vars["pg_app_role"], "MES_MONITOR_DB_ROLE": ctx.vars["pg_exporter_role"],
           "SECRET_KEY": ctx.vars["mes_secrets"]["secret_key"],
           "LOG_LEVEL": "WARNING",
           **({"MES_CRM_REPLICATION_ROLE": ctx.vars["crm_replication_role"]} if "crm_db" in ctx.vars["mes_topology"]
              else {}),
           **{f"MES_RATE_LIMIT_{tier.upper()}": limit for tier, limit in ctx.vars["mes_rate_limits"].items()}}
    result = subprocess.run([sys.executable, "-m", "mes", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"mes {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def prepare_database(ctx: Ctx) -> None:
    """Migrations on every `up` (a no-op when current); demo accounts and data only the first time."""
    mes(ctx, "migrate")
    credentials = ctx.path("credentials.txt")
    if not credentials.exists():
        text = mes(ctx, "seed-demo", "--orders", str(DEMO_ORDERS))
        credentials.write_text(text)
        credentials.chmod(0o600)


def up(ctx: Ctx) -> None:
    started = time.monotonic()
    migrated = False
    for component in components(ctx):
        if isinstance(component, AppInstance) and not migrated:
            prepare_database(ctx)  # the database answers by now; the apps need its schema
            migrated = True
        print(f"  {component.name:<16} ...", end="", flush=True)
        component.up(ctx)
        print(" up")
    print(f"== the stack is up ({time.monotonic() - started:.1f} s), state in {ctx.state}")
    print_urls(ctx)


def down(ctx: Ctx) -> None:
    for component in reversed(components(ctx)):
        component.down(ctx)
        print(f"  {component.name:<16} stopped")
    priority.remove(ctx)  # the app pools' cgroups, once empty


def status(ctx: Ctx) -> int:
    failures = 0
    for component in components(ctx):
        answers, detail = component.status(ctx)
        failures += not answers
        print(f"  {component.name:<16} {'UP  ' if answers else 'DOWN'}  {detail}")
    return 1 if failures else 0


def print_urls(ctx: Ctx) -> None:
    t = ctx.vars["mes_topology"]
    h = t["haproxy"]
    ca = pki.ca_file(ctx)
    print(f"  operator UI:   https://{h['bind']}:{h['operator_port']}/operator/  "
          f"(http://{h['bind']}:{h['http_port']}/ redirects there)")
    print(f"  public API:    https://{h['bind']}:{h['public_port']}/api/v1/  "
          f"(OpenAPI: /api/v1/openapi.yaml)")
    print(f"  TLS:           certificates signed by the stack's own CA, {ca}; trust it with")
    print(f"                 curl --cacert {ca} https://{h['bind']}:{h['public_port']}/healthz/ready")
    print(f"  HAProxy stats: http://{h['bind']}:{h['stats_port']}/stats")
    print(f"  Prometheus:    http://{t['prometheus']['host']}:{t['prometheus']['port']}/")
    print(f"  Alertmanager:  http://{t['alertmanager']['host']}:{t['alertmanager']['port']}/  (notifications: "
          f"{ctx.path('logs', 'alert_receiver.log')})")
    print("  monitoring login (HAProxy stats, Prometheus, Alertmanager): {} / {}".format(*monauth.credentials(ctx)))
    if not t["single"]:
        ep = t["db_endpoints"]
        print(f"  Pgpool-II:     {t['pgpool']['host']}:{t['pgpool']['port']}  "
              f"Redis: {t['redis']['host']}:{t['redis']['port']}")
        print(f"  PostgreSQL:    primary {ep['host']}:{ep['primary_port']}, replicas {ep['host']}:{ep['replica_port']} "
              f"(HAProxy, following Patroni; stats http://{ep['host']}:{ep['stats_port']}/stats)")
    if t.get("crm_db"):
        c = t["crm_db"]
        print(f"  CRM database:  psql 'host={c['host']} port={c['port']} dbname={ctx.vars['crm_database']} "
              f"user={ctx.vars['crm_reader_role']} sslmode=verify-full sslrootcert={ca}'  (views crm_api.*; "
              f"password: crm_reader_password in {ctx.path('secrets.yml')})")
    credentials = ctx.path("credentials.txt")
    if credentials.exists():
        for line in credentials.read_text().splitlines():
            print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "reset", "urls", "backup", "backups"])
    parser.add_argument("kind", nargs="?", default="full", choices=["full", "diff", "incr"],
                        help="backup: full (default), diff or incr")
    parser.add_argument("--topology", choices=["split", "single"], default=None,
                        help="split (default): the production topology; single: the 'before' topology")
    args = parser.parse_args(argv)
    if args.command == "reset":
        ctx = make_ctx(None)
        down(ctx)
        wipe(ctx)
        print(f"== {ctx.state} wiped")
        return 0
    ctx = make_ctx(args.topology if args.command == "up" else None)
    try:
        if args.command == "up":
            up(ctx)
        elif args.command == "down":
            down(ctx)
        elif args.command == "urls":
            print_urls(ctx)
        elif args.command == "backup":
            done = backup.backup(ctx, args.kind)
            print(f"== {done['type']} backup {done['label']} of the primary "
                  f"({done['info']['repository']['delta'] / 1e6:.1f} MB stored)")
        elif args.command == "backups":
            print(backup.info_text(ctx))
        else:
            return status(ctx)
    except StackError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 1
    return 0
