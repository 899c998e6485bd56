"""Migrations that change data, run from the revision before them on a database with old rows."""
from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from mes.migrate import alembic_config

OPERATOR = ("INSERT INTO operators (login, display_name, password_hash, role, active, created_at) "
            "VALUES (:login, :login, 'x', 'operator', true, CURRENT_TIMESTAMP)")


@pytest.fixture
def old_database(tmp_path):
    """A SQLite database at revision 0002, before logins were normalised."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0002")
    engine = create_engine(url)
    yield url, engine
    engine.dispose()


def test_0003_normalises_existing_logins(old_database):
    url, engine = old_database
    with engine.begin() as conn:
        for login in ("Olga", " ivan ", "anna"):
            conn.execute(text(OPERATOR), {"login": login})
    command.upgrade(alembic_config(url), "head")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT login, display_name FROM operators ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [("olga", "Olga"), ("ivan", " ivan "), ("anna", "anna")]


def test_0003_stops_on_two_accounts_that_only_spelling_tells_apart(old_database):
    url, engine = old_database
    with engine.begin() as conn:
        for login in ("olga", "OLGA"):
            conn.execute(text(OPERATOR), {"login": login})
    with pytest.raises(RuntimeError, match="same login 'olga'"):
        command.upgrade(alembic_config(url), "head")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT login FROM operators ORDER BY id")).scalars().all() == ["olga", "OLGA"]


def test_0011_fills_who_confirmed_a_delivery_from_its_event_and_goes_back_without_losing_an_index(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0010")
    engine = create_engine(url)
    indexes = text("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'orders' ORDER BY name")
    order = ("INSERT INTO orders (id, partner_id, reference, product, material, quantity, priority, promised_date, "
             "status, status_version, created_at, updated_at, hold_seconds, stage_hold_base) VALUES "
             "(:id, 1, :ref, 'BRKT', 'steel', 5, 2, '2026-12-01', :status, :version, '2026-11-01 08:00:00', "
             "'2026-11-20 09:00:00', 0, 0)")
    event = ("INSERT INTO order_events (order_id, partner_id, from_status, to_status, status_version, actor, "
             "created_at, txid, kind) VALUES (:order, 1, :before, :after, :version, :actor, :at, 0, 'status')")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO partners (id, name, created_at) VALUES (1, 'ACME', CURRENT_TIMESTAMP)"))
        conn.execute(text(order), {"id": 1, "ref": "PO-1", "status": "delivered", "version": 7})
        conn.execute(text(order), {"id": 2, "ref": "PO-2", "status": "shipped", "version": 6})
        conn.execute(text(event), {"order": 1, "before": "packed", "after": "shipped", "version": 6,
                                   "actor": "operator:olga", "at": "2026-11-19 10:00:00"})
        conn.execute(text(event), {"order": 1, "before": "shipped", "after": "delivered", "version": 7,
                                   "actor": "client:acme-erp", "at": "2026-11-20 09:00:00"})
        before = conn.execute(indexes).scalars().all()
    command.upgrade(alembic_config(url), "0011")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, delivered_at, delivered_by FROM orders ORDER BY id")).all()
    assert [(r[0], str(r[1])[:19] if r[1] else None, r[2]) for r in rows] == [
        (1, "2026-11-20 09:00:00", "client:acme-erp"), (2, None, None)]
    command.downgrade(alembic_config(url), "0010")
    with engine.connect() as conn:
        assert conn.execute(indexes).scalars().all() == before
        assert conn.execute(text("SELECT count(*) FROM orders")).scalar() == 2
    engine.dispose()


def test_0012_adds_the_webhook_tables_and_goes_back_to_0011(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "head")
    engine = create_engine(url)
    tables = text("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'webhook%' ORDER BY name")
    with engine.connect() as conn:
        assert conn.execute(tables).scalars().all() == [
            "webhook_attempts", "webhook_deliveries", "webhook_endpoints", "webhook_events"]
    command.downgrade(alembic_config(url), "0011")
    with engine.connect() as conn:
        assert conn.execute(tables).scalars().all() == []
    command.upgrade(alembic_config(url), "head")
    engine.dispose()
