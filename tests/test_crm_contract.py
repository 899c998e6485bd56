"""The publication `crm` the CRM's database subscribes to: made by migration 0015 as mes.crm_contract says,
and `mes migrate` refuses, undoing it, a change that would break the subscription (PostgreSQL). SQLite has no
publication and still migrates."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from mes import crm_contract
from mes.migrate import alembic_config, upgrade
from mes.testing.postgres import create_mes_database

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = text("SELECT tablename, attnames FROM pg_publication_tables WHERE pubname = 'crm'")
PRIVATE = {"api_clients", "operators", "audit_log", "webhook_endpoints", "production_records"}


def published(url: str) -> dict[str, tuple[str, ...]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = {r.tablename: tuple(r.attnames) for r in conn.execute(PUBLISHED)}
    engine.dispose()
    return rows


def test_the_migrations_publish_exactly_the_contract_and_nothing_private(backend):
    engine = create_engine(backend.owner_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM crm_heartbeat")).scalars().all() == [1]
    engine.dispose()
    if backend.name == "sqlite":
        return  # no publication: the heartbeat table is all SQLite gets
    rows = published(backend.owner_url)
    assert {t: set(c) for t, c in rows.items()} == {t: set(c) for t, c in crm_contract.CONTRACT.items()}
    assert not PRIVATE & set(rows)
    assert not {"notes", "actor", "note", "reason", "operator_id", "key_hash"} & {c for cs in rows.values() for c in cs}


@pytest.fixture
def own_database(postgres_server, request):
    """A database of its own (the test changes its publication), with roles of its own."""
    name = f"crm_{request.node.name[5:30]}".lower()
    owner_url, app_url = create_mes_database(postgres_server, dbname=name, owner=(f"{name}_owner", "pw-o"),
                                             app=(f"{name}_app", "pw-a"))
    upgrade_ = alembic_config(owner_url)
    command.upgrade(upgrade_, "head")
    return owner_url


@pytest.mark.postgresql_only
def test_migrate_refuses_and_undoes_a_later_migration_that_drops_a_published_column(own_database, tmp_path,
                                                                                   backend):
    (tmp_path / "9999_drop_promise.py").write_text(
        'revision = "9999"\ndown_revision = "0015"\nbranch_labels = None\ndepends_on = None\n'
        "from alembic import op\n\n\ndef upgrade():\n"
        '    op.execute("ALTER TABLE orders DROP COLUMN promise_status CASCADE")\n')
    cfg = alembic_config(own_database)
    versions = Path(cfg.get_main_option("script_location")) / "versions"
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join([str(versions), str(tmp_path)]))
    with pytest.raises(crm_contract.ContractBroken) as refused:
        command.upgrade(cfg, "head")
    message = str(refused.value)
    assert "orders.promise_status was dropped" in message
    assert "change the CRM's database first" in message and "ALTER PUBLICATION crm SET TABLE" in message
    engine = create_engine(own_database)
    with engine.connect() as conn:  # rolled back: the column, the publication and the revision are as before
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0015"
        assert conn.execute(text("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' "
                                 "AND column_name = 'promise_status'")).scalar() == 1
    engine.dispose()
    assert "promise_status" in published(own_database)["orders"]


@pytest.mark.postgresql_only
def test_mes_migrate_names_a_column_the_publication_lost_or_gained(own_database, backend):
    engine = create_engine(own_database)
    columns = [c for c in crm_contract.CONTRACT["orders"] if c != "status_version"] + ["notes"]
    with engine.begin() as conn:
        conn.execute(text(f"ALTER PUBLICATION crm SET TABLE orders ({', '.join(columns)}), "
                          "order_events, partners (id, name), crm_heartbeat"))
    engine.dispose()
    env = {**os.environ, "DATABASE_URL": own_database, "SECRET_KEY": "test-secret", "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run([sys.executable, "-m", "mes", "migrate"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "migration refused, nothing changed" in run.stderr
    for problem in ("column orders.status_version is no longer published",
                    "column orders.notes is published but not in the CRM contract",
                    "column order_events.actor is published but not in the CRM contract",
                    "column order_events.note is published but not in the CRM contract"):
        assert problem in run.stderr
    assert "Traceback" not in run.stderr


def test_the_contract_check_reads_as_sentences():
    assert crm_contract.differences(None) == ["publication 'crm' does not exist"]
    assert crm_contract.differences(dict(crm_contract.CONTRACT)) == []
    gone = {t: c for t, c in crm_contract.CONTRACT.items() if t != "partners"}
    assert crm_contract.differences(gone, {"partners": ("id", "created_at")}) == [
        "table partners is no longer published (column partners.name was dropped, which took the table out of "
        "the publication)"]


def test_sqlite_migrates_to_head_without_a_publication(tmp_path):
    url = f"sqlite:///{tmp_path / 'mes.db'}"
    from mes.config import Settings
    upgrade(Settings(database_url=url))
    command.downgrade(alembic_config(url), "0014")
    command.upgrade(alembic_config(url), "head")
