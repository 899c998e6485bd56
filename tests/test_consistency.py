"""Read-your-writes on a real PostgreSQL with the production privilege split (the app's role). The
replica side, a paused replay, is in tests/test_topology.py."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from mes.consistency import WriteTracker

pytestmark = pytest.mark.postgresql_only


def test_the_app_role_may_ask_whether_replicas_replayed_but_not_read_their_positions(app, db):
    assert db.scalar(text("SELECT current_user")) == "mes_app"
    # No replica streams from the suite's server: nothing has replayed anything.
    assert db.scalar(text("SELECT public.mes_replicas_replayed(pg_current_wal_lsn())")) is False
    assert db.scalar(text("SELECT pg_has_role('pg_read_all_stats', 'MEMBER')")) is False


def test_without_redis_a_write_marker_lasts_the_window_and_no_longer(app, db):
    now = [1000.0]
    tracker = WriteTracker(None, enabled=True, window=300, clock=lambda: now[0])
    tracker.remember(db, "partner:1")
    assert tracker.route(db, "partner:1")  # not on every replica: read the primary
    db.info.pop("primary")
    now[0] += 299
    assert tracker.route(db, "partner:1")
    db.info.pop("primary")
    now[0] += 2
    assert not tracker.route(db, "partner:1")  # the window is over: the replica again
    assert not db.info.get("primary")
    assert not tracker.route(db, "partner:2")  # nothing written: the replica
