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
