"""Components of the stack other than the database tier: Redis, the app instances, HAProxy,
Prometheus and the exporters. Each has `up` (idempotent), `down` (by pid) and `status`."""
from __future__ import annotations

import os
import shutil
import signal
from abc import ABC, abstractmethod
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

from . import monauth, pki, priority
from .base import ROOT, Ctx, StackError, wait_until


def http_ok(url: str, timeout: float = 2, headers: dict | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


class Daemon(ABC):
    """A foreground program we start detached and track by pid; `ready()` says whether it answers."""

    name = "daemon"
    user: str | None = None
    start_timeout = 30

    @abstractmethod
    def argv(self, ctx: Ctx) -> list[str]:
        """The command line of the program, run in the foreground."""

    def prepare(self, ctx: Ctx) -> None:
        """Render configuration, make folders (runs before every start)."""

    def env(self, ctx: Ctx) -> dict:
        return {}

    @abstractmethod
    def ready(self, ctx: Ctx) -> bool:
        """Whether the program answers its own protocol."""

    def detail(self, ctx: Ctx) -> str:
        return ""

    def up(self, ctx: Ctx) -> None:
        if ctx.pid(self.name) and self.ready(ctx):
            return
        ctx.stop(self.name)  # a half-started leftover
        self.prepare(ctx)
        ctx.spawn(self.name, self.argv(ctx), user=self.user, env=self.env(ctx))
        if not wait_until(lambda: self.ready(ctx) or not ctx.pid(self.name), self.start_timeout) \
                or not ctx.pid(self.name):
            tail = ctx.log_tail(self.name)
            ctx.stop(self.name)
            raise StackError(f"{self.name} did not come up:\n{tail}")

    def down(self, ctx: Ctx) -> None:
        ctx.stop(self.name)

    def status(self, ctx: Ctx) -> tuple[bool, str]:
        if not ctx.pid(self.name):
            return False, "not running"
        return (True, self.detail(ctx) or "answers") if self.ready(ctx) else (False, "running, not answering")


def redis_login(ctx: Ctx, role: str) -> tuple[str, str]:
    """An ACL user of redis/redis.conf.j2 (role: app, exporter, patroni or admin) and its password."""
    return ctx.vars[f"redis_{role}_user"], ctx.vars["mes_secrets"][f"redis_{role}_password"]


def redis_url(ctx: Ctx, role: str = "app") -> str:
    """The stack's Redis as `role`, user and password in the URL (quoted: redis-py unquotes them)."""
    t = ctx.vars["mes_topology"]["redis"]
    user, password = (quote(part, safe="") for part in redis_login(ctx, role))
    return f"redis://{user}:{password}@{t['host']}:{t['port']}/0"


class Redis(Daemon):
    name, user = "redis", "redis"

    def prepare(self, ctx):
        t = ctx.vars["mes_topology"]["redis"]
        ctx.ensure_dir(Path(t["dir"]), owner="redis", mode=0o750)
        ctx.render("redis/redis.conf.j2", Path(t["dir"]) / "redis.conf", owner="redis", mode=0o640)

    def argv(self, ctx):
        return ["redis-server", str(Path(ctx.vars["mes_topology"]["redis"]["dir"]) / "redis.conf")]

    def ready(self, ctx):
        import redis

        try:  # as the app: it answers, and the app's login works
            return bool(redis.Redis.from_url(redis_url(ctx), socket_timeout=1).ping())
        except redis.RedisError:
            return False


class RedisExporter(Daemon):
    name, user = "redis_exporter", "prometheus"

    def argv(self, ctx):
        t = ctx.vars["mes_topology"]["redis"]
        return ["prometheus-redis-exporter", f"-redis.addr=redis://{t['host']}:{t['port']}",
                f"-web.listen-address={t['host']}:{t['exporter_port']}"]

    def env(self, ctx):
        user, password = redis_login(ctx, "exporter")
        return {"REDIS_USER": user, "REDIS_PASSWORD": password}  # not on its command line

    def ready(self, ctx):
        t = ctx.vars["mes_topology"]["redis"]
        return http_ok(f"http://{t['host']}:{t['exporter_port']}/metrics")


class NodeExporter(Daemon):
    name, user = "node_exporter", "prometheus"

    def argv(self, ctx):
        t = ctx.vars["mes_topology"]["node_exporters"][0]
        return ["prometheus-node-exporter", f"--web.listen-address={t['host']}:{t['port']}",
                "--no-collector.systemd"]

    def ready(self, ctx):
        t = ctx.vars["mes_topology"]["node_exporters"][0]
        return http_ok(f"http://{t['host']}:{t['port']}/metrics")


class AppInstance(Daemon):
    """One gunicorn instance of a pool, its environment rendered from src/mes/gunicorn/instance.env.j2."""

    start_timeout = 60

    def __init__(self, pool: str, instance: dict, database_url: str, redis_url: str | None):
        self.pool, self.instance = pool, instance
        self.name = instance["name"]
        self.database_url, self.redis_url = database_url, redis_url

    def folder(self, ctx) -> Path:
        return ctx.path("apps", self.name)

    def prepare(self, ctx):
        metrics = self.folder(ctx) / "metrics"
        ctx.ensure_dir(metrics)
        ctx.render("src/mes/gunicorn/instance.env.j2", self.folder(ctx) / "instance.env", mode=0o600,
                   extra={"pool": self.pool, "instance": self.instance, "database_url": self.database_url,
                          "redis_url": self.redis_url, "metrics_dir": str(metrics)})
        if self.pool in ctx.vars["mes_pools"]:
            priority.ensure(ctx)  # operators first: the pools' cgroups (stack/priority.py)

    def env(self, ctx):
        lines = (self.folder(ctx) / "instance.env").read_text().splitlines()
        pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
        env = {name: value.strip("'") for name, value in pairs}  # quoted as systemd and a shell read them
        return {**env, "PYTHONPATH": str(ROOT / "src")}  # this checkout's code, installed or not

    def argv(self, ctx):
        return [*priority.launcher(ctx, self.pool), sys.executable, "-m", "gunicorn", "-c",
                f"python:mes.gunicorn.{self.pool}"]

    def url(self) -> str:
        return f"http://{self.instance['host']}:{self.instance['port']}"

    def ready(self, ctx):
        return http_ok(f"{self.url()}/healthz/ready")

    def detail(self, ctx):
        return f"{self.pool} pool, {self.url()}"


class Scheduler(Daemon):
    """`mes run-scheduler` (mes.scheduler): the periodic jobs, with the settings of an operator instance."""

    name = "scheduler"

    def __init__(self, app: AppInstance):
        self.app = app

    def env(self, ctx):
        # Not a gunicorn worker: no multiprocess metric files, no bind address.
        env = {k: v for k, v in self.app.env(ctx).items() if not k.startswith("GUNICORN_")}
        return {**env, "PROMETHEUS_MULTIPROC_DIR": ""}

    def argv(self, ctx):
        return [sys.executable, "-m", "mes", "run-scheduler"]

    def ready(self, ctx):
        return bool(ctx.pid(self.name)) and "scheduler started" in ctx.log_tail(self.name, lines=200)

    def detail(self, ctx):
        return "periodic jobs: mes jobs lists them"


class WebhookWorker(Daemon):
    """`mes deliver-webhooks` (mes.webhook_worker): sends the outbox's due deliveries, with the settings
    of a public instance (as on the VMs, where it runs on the public hosts); its metrics on its own port."""

    name = "webhooks"

    def __init__(self, app: AppInstance):
        self.app = app

    def worker(self, ctx) -> dict:
        return ctx.vars["mes_topology"]["webhooks"][0]

    def prepare(self, ctx):
        if self.app.pool in ctx.vars["mes_pools"]:
            priority.ensure(ctx)  # in the public pool's cgroup, as on the VMs in its slice

    def env(self, ctx):
        # Not a gunicorn worker: no multiprocess metric files (the worker has a registry of its own).
        env = {k: v for k, v in self.app.env(ctx).items() if not k.startswith("GUNICORN_")}
        return {**env, "PROMETHEUS_MULTIPROC_DIR": ""}

    def argv(self, ctx):
        w = self.worker(ctx)
        return [*priority.launcher(ctx, self.app.pool), sys.executable, "-m", "mes", "deliver-webhooks",
                "--metrics-host", w["host"], "--metrics-port", str(w["port"])]

    def ready(self, ctx):
        w = self.worker(ctx)
        return http_ok(f"http://{w['host']}:{w['port']}/metrics")

    def detail(self, ctx):
        w = self.worker(ctx)
        return f"webhook deliveries, metrics http://{w['host']}:{w['port']}/metrics"


class HAProxy(Daemon):
    """Master-worker mode (-W): a changed configuration is reloaded (SIGUSR2 to the master: new workers,
    the old ones finish their requests), never restarted, so that no request is dropped."""

    name = "haproxy"

    def config(self, ctx) -> Path:
        return Path(ctx.vars["mes_topology"]["haproxy"]["dir"]) / "haproxy.cfg"

    def prepare(self, ctx):
        t = ctx.vars["mes_topology"]["haproxy"]
        folder = ctx.ensure_dir(Path(t["dir"]))
        # The frontends' certificate, signed by the stack's CA, for the address they listen on.
        pki.bundle(ctx, "haproxy", [f"IP:{t['bind']}", "DNS:localhost"], Path(t["crt"]))
        # haproxy.cfg only: db.cfg belongs to the database endpoints (stack/dbtier.py), which the single
        # topology does not have.
        dest = self.config(ctx)
        ctx.render("haproxy/haproxy.cfg.j2", dest, extra=monauth.password_hash(ctx, "haproxy_stats_bcrypt_cost", dest))
        ctx.run(["haproxy", "-c", "-f", str(self.config(ctx))], cwd=folder)  # (-q would hide the errors)

    def up(self, ctx):
        if not (ctx.pid(self.name) and self.ready(ctx)):
            return super().up(ctx)
        before = self.config(ctx).read_text() if self.config(ctx).exists() else ""
        self.prepare(ctx)
        if self.config(ctx).read_text() != before:
            self.reload(ctx)

    def reload(self, ctx) -> None:
        """A seamless reload: the master starts new workers with the current file; the old workers
        stop accepting and finish what they hold (stick tables pass to the new ones through `peers`)."""
        os.kill(ctx.pid(self.name), signal.SIGUSR2)
        if not wait_until(lambda: self.ready(ctx), self.start_timeout):
            raise StackError(f"haproxy did not answer after a reload:\n{ctx.log_tail(self.name)}")

    def argv(self, ctx):
        return ["haproxy", "-W", "-db", "-f", str(self.config(ctx))]

    def ready(self, ctx):
        t = ctx.vars["mes_topology"]["haproxy"]
        return http_ok(f"http://{t['bind']}:{t['stats_port']}/metrics", headers=monauth.headers(ctx))

    def detail(self, ctx):
        t = ctx.vars["mes_topology"]["haproxy"]
        return (f"public https :{t['public_port']}, operator https :{t['operator_port']}, "
                f"plain http :{t['http_port']}, stats :{t['stats_port']}")


class Prometheus(Daemon):
    name, user = "prometheus", "prometheus"
    start_timeout = 60

    def folder(self, ctx) -> Path:
        return Path(ctx.vars["mes_topology"]["prometheus"]["dir"])

    def prepare(self, ctx):
        folder = ctx.ensure_dir(self.folder(ctx), owner="prometheus")
        ctx.ensure_dir(folder / "data", owner="prometheus")
        # Both hold a secret: the password Prometheus sends, the hash of the one it accepts.
        ctx.render("monitoring/prometheus.yml.j2", folder / "prometheus.yml", owner="prometheus", mode=0o640)
        ctx.render("monitoring/web.yml.j2", folder / "web.yml", owner="prometheus", mode=0o640,
                   extra=monauth.password_hash(ctx, "monitoring_bcrypt_cost", folder / "web.yml"))
        ctx.run(["promtool", "check", "web-config", str(folder / "web.yml")])
        rules = ctx.ensure_dir(folder / "rules", owner="prometheus")
        for rule in (ROOT / "monitoring" / "rules").glob("*.yml"):
            shutil.copyfile(rule, rules / rule.name)
        for template in (ROOT / "monitoring" / "rules").glob("*.yml.j2"):  # settings from group_vars
            ctx.render(str(template.relative_to(ROOT)), rules / template.name.removesuffix(".j2"), owner="prometheus")
        ctx.run(["promtool", "check", "config", str(folder / "prometheus.yml")])

    def argv(self, ctx):
        t = ctx.vars["mes_topology"]["prometheus"]
        folder = self.folder(ctx)
        return ["prometheus", f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address={t['host']}:{t['port']}",
                f"--web.config.file={folder / 'web.yml'}",
                f"--storage.tsdb.retention.time={ctx.vars['prometheus_retention']}", "--web.enable-lifecycle"]

    def ready(self, ctx):
        t = ctx.vars["mes_topology"]["prometheus"]
        return http_ok(f"http://{t['host']}:{t['port']}/-/ready", headers=monauth.headers(ctx))


class AlertReceiver(Daemon):
    """The stack's webhook receiver (stack/alertsink.py): Alertmanager's pages, tickets and watchdog
    notifications, one JSON line each in logs/alert_receiver.log. Locally the stand-in for an incident
    tool; a test may stop it and listen on its port itself."""

    name = "alert_receiver"

    def argv(self, ctx):
        r = ctx.vars["stack_alert_receiver"]
        return [sys.executable, "-m", "stack.alertsink", r["host"], str(r["port"])]

    def env(self, ctx):
        return {"PYTHONPATH": str(ROOT)}

    def ready(self, ctx):
        r = ctx.vars["stack_alert_receiver"]
        return http_ok(f"http://{r['host']}:{r['port']}/")

    def detail(self, ctx):
        r = ctx.vars["stack_alert_receiver"]
        return f"http://{r['host']}:{r['port']}/{{pages,tickets,watchdog}}, notifications in logs/{self.name}.log"


# The local stack notifies sooner than group_vars' 30 s / 5 min, so that a firing alert and its
# resolution reach the receiver within a minute (tests/test_alert_path.py); the rest is group_vars'.
LOCAL_ALERTMANAGER = {"alertmanager_group_wait": "10s", "alertmanager_group_interval": "30s"}


def alert_receiver_urls(ctx: Ctx) -> dict[str, str]:
    """Where the local Alertmanager sends: the stack's own receiver, one path per receiver."""
    r = ctx.vars["stack_alert_receiver"]
    return {f"alertmanager_{name}_webhook_url": f"http://{r['host']}:{r['port']}/{name}"
            for name in ("pages", "tickets", "watchdog")}


class Alertmanager(Daemon):
    """prometheus-alertmanager from monitoring/alertmanager.yml.j2 (as the prometheus role renders it), its
    webhooks pointed at the stack's receiver; one instance (no cluster gossip); basic auth from
    monitoring/web.yml.j2, as Prometheus."""

    name, user = "alertmanager", "prometheus"

    def folder(self, ctx) -> Path:
        return ctx.path("alertmanager")

    def prepare(self, ctx):
        folder = ctx.ensure_dir(self.folder(ctx), owner="prometheus")
        ctx.ensure_dir(folder / "data", owner="prometheus")
        ctx.render("monitoring/alertmanager.yml.j2", folder / "alertmanager.yml", owner="prometheus", mode=0o640,
                   extra={**alert_receiver_urls(ctx), **LOCAL_ALERTMANAGER})
        ctx.render("monitoring/web.yml.j2", folder / "web.yml", owner="prometheus", mode=0o640,
                   extra=monauth.password_hash(ctx, "monitoring_bcrypt_cost", folder / "web.yml"))
        ctx.run(["amtool", "check-config", str(folder / "alertmanager.yml")])

    def argv(self, ctx):
        t = ctx.vars["mes_topology"]["alertmanager"]
        folder = self.folder(ctx)
        return ["prometheus-alertmanager", f"--config.file={folder / 'alertmanager.yml'}",
                f"--storage.path={folder / 'data'}", f"--web.listen-address={t['host']}:{t['port']}",
                f"--web.config.file={folder / 'web.yml'}", "--cluster.listen-address="]

    def ready(self, ctx):
        t = ctx.vars["mes_topology"]["alertmanager"]
        return http_ok(f"http://{t['host']}:{t['port']}/-/ready", headers=monauth.headers(ctx))

    def detail(self, ctx):
        t = ctx.vars["mes_topology"]["alertmanager"]
        return f"http://{t['host']}:{t['port']}/"
