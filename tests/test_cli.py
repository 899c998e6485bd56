"""The `mes` command: migrate, accounts and keys, demo data."""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import ProgrammingError

from mes.cli import main
from mes.config import Settings
from mes.migrate import upgrade
from mes.testing.postgres import create_mes_database
from mes.models import Order, OrderEvent
from mes.services import orders as svc


@pytest.fixture
def mes_cli(backend, app):
    """Runs `mes ...` in-process with the environment a deployment would set."""
    env = {"DATABASE_URL": backend.app_url, "MIGRATION_DATABASE_URL": backend.owner_url,
           "SECRET_KEY": "cli-test", "LOG_LEVEL": "WARNING", "MES_TEST_MARKER": "1"}
    if backend.name == "postgresql":
        env["MES_APP_DB_ROLE"] = "mes_app"
    runner = CliRunner()

    def run(*args, input=None):
        return runner.invoke(main, list(args), env=env, input=input, catch_exceptions=False)

    return run


def test_migrate_is_repeatable(mes_cli):
    r = mes_cli("migrate")
    assert r.exit_code == 0 and "latest schema" in r.output


def test_create_operator_and_duplicate(mes_cli, client):
    r = mes_cli("create-operator", "anna", "--role", "supervisor", "--password", "long-enough")
    assert r.exit_code == 0 and "anna (supervisor) created" in r.output
    again = mes_cli("create-operator", "anna", "--password", "long-enough")
    assert again.exit_code == 1 and "exists already" in again.output
    variant = mes_cli("create-operator", " ANNA", "--password", "long-enough")
    assert variant.exit_code == 1 and "'anna' exists already" in variant.output
    invisible = mes_cli("create-operator", "bo\u200bb", "--password", "long-enough")
    assert invisible.exit_code == 1 and "Invalid login" in invisible.output
    short = mes_cli("create-operator", "bob", "--password", "short")
    assert short.exit_code == 1 and "at least 8" in short.output


def test_set_password_and_deactivate_operator(mes_cli, db):
    from mes.services.accounts import check_operator_login, find_operator
    mes_cli("create-operator", "anna", "--password", "long-enough")
    r = mes_cli("set-password", "Anna", "--password", "longer-still")
    assert r.exit_code == 0 and "sessions have ended" in r.output
    assert check_operator_login(db, "anna", "longer-still") is not None
    assert mes_cli("set-password", "anna", "--password", "short").exit_code == 1
    r = mes_cli("deactivate-operator", "anna")
    assert r.exit_code == 0 and "anna deactivated" in r.output
    db.rollback()  # a new transaction, which sees the commands' commits
    assert find_operator(db, "anna").active is False and find_operator(db, "anna").session_generation == 3
    missing = mes_cli("deactivate-operator", "nobody")
    assert missing.exit_code == 1 and "No operator" in missing.output


def test_client_key_is_printed_once_and_works_until_revoked(mes_cli, backend):
    from mes import create_app
    # Remembering no key, so that replacing or revoking one shows at once; with the key cache on it
    # shows within its TTL (test_api.py::test_revocation_takes_effect_within_the_key_cache_ttl).
    app = create_app(backend.settings(api_key_cache_seconds=0))
    client = app.test_client()
    r = mes_cli("create-client", "acme-erp", "--partner", "ACME", "--tier", "bulk")
    assert r.exit_code == 0
    key = r.output.strip().splitlines()[-1]
    assert key.startswith("mes_")
    h = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/v1/orders", headers=h).status_code == 200
    new = mes_cli("issue-key", "acme-erp").output.strip().splitlines()[-1]
    assert client.get("/api/v1/orders", headers=h).status_code == 401  # the old key stops working
    h = {"Authorization": f"Bearer {new}"}
    assert client.get("/api/v1/orders", headers=h).status_code == 200
    assert mes_cli("revoke-key", "acme-erp").exit_code == 0
    assert client.get("/api/v1/orders", headers=h).status_code == 401
    assert mes_cli("revoke-key", "nobody").exit_code == 1
    assert mes_cli("create-client", "crm", "--scope", "crm").exit_code == 0
    assert mes_cli("create-client", "x", "--tier", "platinum", "--partner", "X").exit_code == 2
    app.extensions["mes_engine"].dispose()


def test_list_clients_shows_each_key_by_its_id_never_the_key(mes_cli):
    key = mes_cli("create-client", "acme-erp", "--partner", "ACME").output.strip().splitlines()[-1]
    crm = mes_cli("create-client", "crm", "--scope", "crm").output.strip().splitlines()[-1]
    assert mes_cli("revoke-key", "crm").exit_code == 0
    kid = hashlib.sha256(key.encode()).hexdigest()[:8]  # what HAProxy logs as key=
    r = mes_cli("list-clients")
    assert r.exit_code == 0 and key not in r.output and crm not in r.output
    rows = [line.split("\t") for line in r.output.strip().splitlines()]
    assert rows[0] == ["name", "scope", "partner", "tier", "key_id", "state"]
    assert rows[1] == ["acme-erp", "partner", "ACME", "standard", kid, "active"]
    assert rows[2][:4] == ["crm", "crm", "-", "crm"] and rows[2][5] == "revoked"  # the CRM's own tier by default
    found = mes_cli("list-clients", "--key-id", kid.upper()).output.strip().splitlines()
    assert len(found) == 2 and found[1].startswith("acme-erp\t")
    assert len(mes_cli("list-clients", "--key-id", "00000000").output.strip().splitlines()) == 1


def test_demo_data_has_a_realistic_spread_and_consistent_counts(mes_cli, db):
    r = mes_cli("demo-data", "--orders", "3000", "--partners", "7")
    assert r.exit_code == 0 and "3000 orders" in r.output
    counts = svc.status_counts(db)
    actual = dict(db.execute(select(Order.status, func.count()).group_by(Order.status)).all())
    assert {k: v for k, v in counts.items() if v} == actual
    assert sum(actual.values()) == 3000
    assert actual["delivered"] > 1000 and actual["received"] + actual["queued"] > 20
    assert actual["cancelled"] > 0 and actual["in_production"] > 20
    assert svc.count_overdue(db, svc.day_start().date()) > 0
    # Every order's history ends in its current status, with one event per version.
    events = db.scalar(select(func.count()).select_from(OrderEvent))
    versions = db.scalar(select(func.sum(Order.status_version)))
    assert events == versions
    assert db.scalar(select(func.count(func.distinct(Order.partner_id)))) == 7


def test_purge_keeps_fresh_idempotency_keys(mes_cli):
    r = mes_cli("purge-idempotency-keys")
    assert r.exit_code == 0 and "0 keys purged" in r.output


def test_python_dash_m_mes_runs(backend):
    out = subprocess.run([sys.executable, "-m", "mes", "--help"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "DATABASE_URL": backend.app_url, "SECRET_KEY": "x",
                              "PYTHONPATH": ":".join(sys.path)}, timeout=60)
    assert out.returncode == 0 and "demo-data" in out.stdout and "create-client" in out.stdout


def test_the_app_role_cannot_change_the_schema(postgres_server):
    """On PostgreSQL the app connects as a role without DDL rights; migrations use their own."""
    owner_url, app_url = create_mes_database(postgres_server, dbname="ddl_check",
                                             owner=("ddl_owner", "pw1"), app=("ddl_app", "pw2"))
    upgrade(Settings(database_url=app_url, migration_database_url=owner_url, app_db_role="ddl_app"))
    engine = create_engine(app_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM status_counts")).scalar() == 8
        for ddl in ("CREATE TABLE intruder (id int)", "DROP TABLE orders", "ALTER TABLE orders ADD COLUMN x int",
                    "TRUNCATE orders"):
            with pytest.raises(ProgrammingError, match="permission denied|must be owner"):
                conn.execute(text(ddl))
            conn.rollback()
    engine.dispose()


def test_seed_demo_prints_working_accounts_and_gives_the_demo_partner_orders(mes_cli, client):
    out = mes_cli("seed-demo", "--orders", "200").output
    assert "operator login: demo / demo-pass" in out and "200 demo orders loaded" in out
    key = next(line.split()[-1] for line in out.splitlines() if "partner API key" in line)
    orders = client.get("/api/v1/orders", headers={"Authorization": f"Bearer {key}"}).get_json()["items"]
    assert len(orders) > 0
    # "My work" and the ledger have figures: records of the last weeks, at rates with a history.
    records = re.search(r"(\d+) production records of the last 35 days, piece rates for (\d+) families", out)
    assert records and int(records.group(1)) > 0 and int(records.group(2)) > 5, out
    again = mes_cli("seed-demo", "--orders", "200").output  # a second run re-issues keys, loads nothing
    assert "demo orders loaded" not in again and key not in again
