"""The CRM's own PostgreSQL in the local stack (mes_topology.crm_db): one plain server, not run by Patroni and
never a failover target, that subscribes to the MES's publication `crm` (PostgreSQL logical replication).

- Settings and client authentication come from the same templates as every node (postgresql/*.j2), shown a
  topology of this one server, as the Ansible role `postgresql` does for group crm_db; TLS with a
  certificate of the stack's CA (stack/pki.py).
- Its database `crm_database` holds copies of the published tables (owned by `crm_owner_role`) and a schema
  `crm_api` of read-only views, with COMMENT ON for every column, built from mes/crm_contract.py: the
  contract the CRM reads (as `crm_reader_role`, which may read those views and nothing else).
- The subscription `crm` connects to the MES's nodes as `crm_replication_role` over a multi-host libpq
  string with target_session_attrs=read-write (it follows a promotion) and sslmode=verify-full, and uses
  the slot `crm` that Patroni keeps on every node (create_slot=false). It is made disabled and without a
  copy: `mes crm-guard` (CrmGuard, mes/crm_guard.py) copies every table from a snapshot that matches the slot
  it makes, enables it, and does the same again after every change of the MES's primary.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

from . import pki
from .base import ROOT, Ctx, StackError, shared_plugin, wait_until
from .dbtier import (PG_USER, PostgresExporter, _bin, _is_root, _pg_home, _render, _try_psql, primary_node, psql,
                     render_text, rest_send, standby_nodes, tls_params)
from .services import Daemon

def schema_sql(ctx: Ctx) -> str:
    """Roles, database, copies, views, crm_sync and the subscription (postgresql/crm_schema.sql.j2, as the
    Ansible role postgresql renders it for group crm_db); psql as the superuser, from database postgres."""
    c = shared_plugin("crm_contract").crm_contract(str(ROOT))  # mes/crm_contract.py, as Ansible reads it
    return render_text(ctx, "postgresql/crm_schema.sql.j2", {
        "crm_tables": c["tables"], "crm_publication": c["publication"], "crm_slot": c["slot"],
        "crm_sslrootcert": str(pki.ca_file(ctx))})


def ensure_logical_wal(ctx: Ctx) -> None:
    """A cluster made before the CRM's database existed runs wal_level replica (Patroni reads bootstrap.dcs
    once): set logical in its configuration and restart each node in place, standbys first. Writes pause
    for the primary's restart (a few seconds); nothing fails over."""
    primary = primary_node(ctx)
    if _try_psql(ctx, primary, "SHOW wal_level") == "logical":
        return
    if rest_send(primary, "PATCH", "/config", {"postgresql": {"parameters": {"wal_level": "logical"}}}) != 200:
        raise StackError("Patroni refused wal_level = logical")
    for node in [*standby_nodes(ctx), primary]:
        if not wait_until(lambda n=node: rest_send(n, "POST", "/restart", {}) == 200, 60, 2) or not wait_until(
                lambda n=node: _try_psql(ctx, n, "SHOW wal_level") == "logical", 120, 1):
            raise StackError(f"{node['name']} did not restart with wal_level = logical:\n{ctx.log_tail(node['name'])}")


class CrmDatabase(Daemon):
    """The CRM's server, as the postgres user; `up` also applies its schema and subscription (made disabled:
    CrmGuard's first pass copies every table and enables it)."""

    name, user = "crmdb", PG_USER
    start_timeout = 60

    def node(self, ctx: Ctx) -> dict:
        return ctx.vars["mes_topology"]["crm_db"]

    def _extra(self, ctx: Ctx) -> dict:
        """What postgresql/*.j2 need, for a topology of this one server (its clients: the stack's host)."""
        node = self.node(ctx)
        crt, key = pki.certificate(ctx, "crmdb-postgresql", [f"IP:{node['host']}", "DNS:localhost"], owner=PG_USER)
        one = {"single": True, "pg_bindir": ctx.vars["mes_topology"]["pg_bindir"], "pg_nodes": [node],
               "app_operator": [], "app_public": [], "app_single": [{"host": node["host"]}]}
        return {"mes_topology": one, "pg_node_name": node["name"], "pg_socket_dir": node["socket_dir"],
                "pg_local_auth": "peer" if _is_root() else "trust", "pg_tls_cert": str(crt), "pg_tls_key": str(key),
                "pg_database": ctx.vars["crm_database"], "pg_owner_role": ctx.vars["crm_owner_role"],
                "pg_app_role": ctx.vars["crm_reader_role"], "pg_own_host_roles": [ctx.vars["crm_guard_role"]]}

    def prepare(self, ctx):
        node = self.node(ctx)
        data, conf = Path(node["data_dir"]), Path(node["conf_dir"])
        ctx.ensure_dir(data.parent, owner=PG_USER, mode=0o700)
        ctx.ensure_dir(conf, owner=PG_USER, mode=0o700)
        ctx.ensure_dir(Path(node["socket_dir"]), owner=PG_USER, mode=0o755)
        if not (data / "PG_VERSION").exists():
            ctx.run([_bin(ctx, "initdb"), "-D", str(data), "-U", "postgres", "--data-checksums", "-E", "UTF8",
                     "--locale", "C.UTF-8", "--auth-local", "peer" if _is_root() else "trust",
                     "--auth-host", "scram-sha-256"], user=PG_USER, timeout=120)
        extra = self._extra(ctx)
        _render(ctx, "postgresql/postgresql.conf.j2", conf / "mes.conf", mode=0o600, extra=extra)
        _render(ctx, "postgresql/pg_hba.conf.j2", conf / "pg_hba.conf", mode=0o600, extra=extra)

    def env(self, ctx):
        return {"HOME": _pg_home()}  # the subscription's libpq looks for client certificates in ~/.postgresql

    def argv(self, ctx):
        node = self.node(ctx)
        conf = Path(node["conf_dir"])
        return [_bin(ctx, "postgres"), "-D", node["data_dir"], "-c", f"config_file={conf / 'mes.conf'}",
                "-c", f"hba_file={conf / 'pg_hba.conf'}"]

    def ready(self, ctx):
        return _try_psql(ctx, self.node(ctx), "SELECT 1", timeout=5) == "1"

    def up(self, ctx) -> None:
        super().up(ctx)
        if self.query(ctx, "SELECT count(*) FROM pg_subscription WHERE subname = 'crm'") != "1":
            ensure_logical_wal(ctx)
        # A new subscription is made disabled, without a copy: the guard (CrmGuard) copies every table from
        # a snapshot that matches the slot it makes, then enables it.
        psql(ctx, self.node(ctx), schema_sql(ctx), timeout=120)

    def down(self, ctx) -> None:
        ctx.stop(self.name, sig=signal.SIGINT, timeout=60)  # fast shutdown (SIGTERM waits for clients)

    def query(self, ctx: Ctx, sql: str) -> str | None:
        return _try_psql(ctx, self.node(ctx), sql, ctx.vars["crm_database"])

    def unsynced(self, ctx: Ctx) -> int | None:
        """Published tables not yet copied and streaming (state other than r), None when unknown."""
        out = self.query(ctx, "SELECT count(*) FILTER (WHERE srsubstate <> 'r') FROM pg_subscription_rel")
        return int(out) if out not in (None, "") else None

    def detail(self, ctx):
        row = self.query(ctx, "SELECT s.pid IS NOT NULL, coalesce(extract(epoch FROM now() - s.last_msg_receipt_time)"
                              "::int, -1), (SELECT extract(epoch FROM now() - beat_at)::int FROM crm_heartbeat) "
                              "FROM pg_stat_subscription s WHERE s.subname = 'crm' AND s.relid IS NULL")
        if not row:
            return "subscription crm: no apply worker"
        running, last, lag = row.split("|")
        return (f"subscription crm {'streaming' if running == 't' else 'STOPPED'}, last message {last} s ago, "
                f"heartbeat lag {lag or '?'} s, {self.unsynced(ctx)} tables copying")


class CrmGuard(Daemon):
    """`mes crm-guard` (mes/crm_guard.py), as crm_guard_role over TLS, as on the CRM's host on the VMs: resyncs
    the copy when the MES's timeline changes (a failover or switchover), and once when it first starts."""

    name = "crmguard"
    start_timeout = 120  # the first pass resyncs every published table

    def argv(self, ctx):
        return [sys.executable, "-m", "mes", "crm-guard"]

    def env(self, ctx):
        v, node = ctx.vars, ctx.vars["mes_topology"]["crm_db"]
        params = {"host": node["host"], "port": node["port"], "dbname": v["crm_database"],
                  "user": v["crm_guard_role"], **tls_params(ctx)}
        quoted = (str(val).replace("\\", "\\\\").replace("'", "\\'") for val in params.values())  # libpq's quoting
        return {"MES_CRM_GUARD_DSN": " ".join(f"{k}='{val}'" for k, val in zip(params, quoted)),
                "PGPASSWORD": v["mes_secrets"]["crm_guard_password"]}

    def ready(self, ctx):
        return _try_psql(ctx, ctx.vars["mes_topology"]["crm_db"], "SELECT count(*) FROM crm_sync.state WHERE "
                         "checked_at IS NOT NULL AND last_error IS NULL", ctx.vars["crm_database"]) == "1"

    def detail(self, ctx):
        row = _try_psql(ctx, ctx.vars["mes_topology"]["crm_db"], "SELECT timeline, extract(epoch FROM now() - "
                        "checked_at)::int, resyncs, last_rows_fixed, coalesce(last_error, '') FROM crm_sync.state",
                        ctx.vars["crm_database"])
        if not row:
            return "no check yet"
        timeline, age, resyncs, fixed, error = row.split("|", 4)
        return (f"MES timeline {timeline} verified {age} s ago, {resyncs} resyncs (last fixed {fixed} rows)"
                + (f"; failing: {error}" if error else ""))


class CrmExporter(PostgresExporter):
    """prometheus-postgres-exporter of the CRM's server, connected to its database, with the subscription's
    queries (monitoring/crm_exporter_queries.yml): Prometheus job crm_db."""

    queries_file, queries_dir = ROOT / "monitoring" / "crm_exporter_queries.yml", "crm_exporter"

    def __init__(self, ctx: Ctx):
        super().__init__(ctx.vars["mes_topology"]["crm_db"])
        self.name = "crmdb_exporter"

    def _dsn(self, ctx: Ctx) -> str:
        v = ctx.vars
        return (f"postgresql://{quote(v['pg_exporter_role'], safe='')}:"
                f"{quote(v['mes_secrets']['exporter_password'], safe='')}@{self.node['host']}:{self.node['port']}/"
                f"{quote(v['crm_database'], safe='')}?{urlencode({**tls_params(ctx), 'application_name': self.name}, safe='/')}")


def components(ctx: Ctx) -> list:
    """The CRM's database and its exporter when the topology has one (after the MES's migrations: it
    subscribes to them)."""
    return [CrmDatabase(), CrmGuard(), CrmExporter(ctx)] if "crm_db" in ctx.vars["mes_topology"] else []


def reader_url(ctx: Ctx) -> str:
    """A SQLAlchemy URL of the CRM's database as the read-only reader (what the CRM uses)."""
    from .dbtier import _url
    node = ctx.vars["mes_topology"]["crm_db"]
    return _url(ctx, ctx.vars["crm_reader_role"], ctx.vars["mes_secrets"]["crm_reader_password"], node["host"],
                node["port"], ctx.vars["crm_database"])
