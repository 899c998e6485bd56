"""Run the Alembic migrations as the migration role, then grant the app role what it needs (no DDL), and the
monitoring role (postgres_exporter's) the few columns its queries read."""
from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from . import crm_contract
from .config import Settings


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(files("mes").joinpath("migrations")))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings) -> None:
    url = settings.migration_database_url or settings.database_url
    command.upgrade(alembic_config(url), "head")
    if settings.app_db_role and not url.startswith("sqlite"):
        grant_app_role(url, settings.app_db_role)
    if settings.monitor_db_role and not url.startswith("sqlite"):
        grant_monitor_role(url, settings.monitor_db_role)
    if settings.crm_replication_role and not url.startswith("sqlite"):
        grant_crm_replication_role(url, settings.crm_replication_role)


def grant_app_role(url: str, role: str) -> None:
    """Reads and writes on every table, nothing more: the app cannot change the schema.
    UPDATE on sequences lets the bulk loader move them past the ids it wrote (setval)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        quoted = conn.dialect.identifier_preparer.quote(role)
        conn.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {quoted}"))
        conn.execute(text(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {quoted}"))
    engine.dispose()


#: What the promise's queries of postgres_exporter read (monitoring/postgres_exporter_queries.yml, mes_*):
#: statuses, dates, holds and counts; no partner, reference, product, note, key or operator.
MONITOR_COLUMNS = {
    "orders": ("status", "stage_entered_at", "hold_since", "hold_reason_id", "promised_date", "promise_status",
               "shipped_at"),
    "reason_codes": ("id", "kind", "code"),
    "status_counts": ("status", "count"),
    "job_leases": ("name", "next_run_at", "finished_at", "last_ok"),
}


def grant_monitor_role(url: str, role: str) -> None:
    """SELECT on those columns only, after every migration (a new column stays out until listed here). The role
    needs CONNECT on the database as well (postgresql/roles.sql.j2 grants it to the exporter's role)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        quote = conn.dialect.identifier_preparer.quote
        for table, columns in MONITOR_COLUMNS.items():
            conn.execute(text(f"GRANT SELECT ({', '.join(quote(c) for c in columns)}) ON {quote(table)} "
                              f"TO {quote(role)}"))
    engine.dispose()


def check_crm_publication(conn) -> None:
    """Raise crm_contract.ContractBroken when the publication `crm` differs from mes.crm_contract. The
    migrations' environment calls it inside their transaction once the database is at the head revision,
    so that a migration that breaks the CRM's subscription is rolled back, not committed (PostgreSQL only)."""
    rows = conn.execute(text("SELECT tablename, attnames FROM pg_catalog.pg_publication_tables "
                             "WHERE pubname = :pub AND schemaname = 'public'"), {"pub": crm_contract.PUBLICATION})
    exists = conn.execute(text("SELECT count(*) FROM pg_catalog.pg_publication WHERE pubname = :pub"),
                          {"pub": crm_contract.PUBLICATION}).scalar()
    published = {r.tablename: tuple(r.attnames) for r in rows} if exists else None
    existing: dict[str, tuple[str, ...]] = {}
    for r in conn.execute(text("SELECT table_name, column_name FROM information_schema.columns "
                               "WHERE table_schema = 'public' AND table_name = ANY(:tables)"),
                          {"tables": list(crm_contract.CONTRACT)}):
        existing[r.table_name] = existing.get(r.table_name, ()) + (r.column_name,)
    crm_contract.check(published, existing)


def grant_crm_replication_role(url: str, role: str) -> None:
    """The CRM's subscription copies each published table as this role first (table sync): SELECT on the
    published columns only (mes.crm_contract), after every migration."""
    engine = create_engine(url)
    with engine.begin() as conn:
        quote = conn.dialect.identifier_preparer.quote
        for table, columns in crm_contract.CONTRACT.items():
            conn.execute(text(f"GRANT SELECT ({', '.join(quote(c) for c in columns)}) ON {quote(table)} "
                              f"TO {quote(role)}"))
    engine.dispose()
