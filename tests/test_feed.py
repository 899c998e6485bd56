"""The status-change feed: every committed event is handed out exactly once, also when transactions
commit in another order than the one they took their event ids in."""
from __future__ import annotations

import threading
import time

import pytest
from conftest import auth, cancel_reason, create_order
from sqlalchemy import create_engine, text

from mes.domain.lifecycle import Status
from mes.services import cursors
from mes.services import orders as svc
from mes.services.accounts import operator_actor


def read_feed(client, headers, after: str | None = None) -> tuple[list[tuple[int, str]], str]:
    """One poll: (order id, new status) of each item, and the cursor to pass next time."""
    url = "/api/v1/status-changes" + (f"?after={after}" if after else "")
    page = client.get(url, headers=auth(headers)).get_json()
    return [(e["order_id"], e["to_status"]) for e in page["items"]], page["next_cursor"]


@pytest.mark.postgresql_only
def test_a_late_commit_is_not_skipped_by_a_reader_in_between(app, client, backend, accounts_, db):
    """A takes the lower event id, B the higher; B commits first, a reader polls, then A commits.
    The reader must get A's event on a later poll: a cursor that moved past it would lose it for good."""
    partner, crm = accounts_.partner(), accounts_.crm()
    boss = operator_actor(accounts_.operator("chief", role="supervisor"))
    order_a = create_order(client, partner, reference="A").get_json()["id"]
    order_b = create_order(client, partner, reference="B").get_json()["id"]
    svc.change_status(db, boss, order_b, Status.QUEUED)
    seen, cursor = read_feed(client, crm)
    assert len(seen) == 3

    # Hold A's transaction open after it wrote its event: it waits on a row of the status counter
    # that this test keeps locked (the change writes its event before it counts).
    holder = create_engine(backend.owner_url)
    lock = holder.connect()
    lock.execute(text("SELECT 1 FROM status_counts WHERE status = 'cancelled' FOR UPDATE"))
    make_session = app.extensions["mes_sessionmaker"]
    why = cancel_reason(db)

    def change_a():
        with make_session() as session:
            svc.change_status(session, boss, order_a, Status.CANCELLED, cancel_reason_id=why)

    writer = threading.Thread(target=change_a)
    writer.start()
    try:
        with holder.connect() as probe:  # until A's event row exists, uncommitted
            for _ in range(500):
                if probe.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")):
                    break
                time.sleep(0.01)
            else:
                pytest.fail("the first change never waited on the locked counter")
        svc.change_status(db, boss, order_b, Status.IN_PRODUCTION)  # B: higher event id, commits first
        first, cursor = read_feed(client, crm, cursor)
    finally:
        lock.rollback()
        lock.close()
        writer.join(10)
        holder.dispose()

    rest, cursor = read_feed(client, crm, cursor)
    delivered = first + rest
    assert sorted(delivered) == sorted([(order_a, "cancelled"), (order_b, "in_production")])
    assert read_feed(client, crm, cursor)[0] == []


def test_pages_hand_out_every_event_once(client, accounts_, db):
    """Small pages, read to the end, give each event once and then nothing."""
    partner = accounts_.partner()
    boss = operator_actor(accounts_.operator("chief", role="supervisor"))
    ids = [create_order(client, partner, reference=f"R{i}").get_json()["id"] for i in range(5)]
    for oid in ids[::2]:
        svc.change_status(db, boss, oid, Status.QUEUED)
    delivered, cursor = [], None
    for _ in range(10):
        url = "/api/v1/status-changes?limit=2" + (f"&after={cursor}" if cursor else "")
        page = client.get(url, headers=auth(partner)).get_json()
        delivered += [(e["order_id"], e["to_status"]) for e in page["items"]]
        assert all(e["cursor"] for e in page["items"])
        cursor = page["next_cursor"]
    expected = [(oid, "received") for oid in ids] + [(oid, "queued") for oid in ids[::2]]
    assert sorted(delivered) == sorted(expected) and len(delivered) == len(expected)


def test_a_cursor_of_the_old_form_reads_on_from_where_it_was(client, backend, accounts_, db):
    """Cursors handed out before events kept their transaction (the last event's id) keep working:
    events written before the upgrade have txid 0 and follow in id order, then every later one."""
    partner = accounts_.partner()
    before = [create_order(client, partner, reference=f"R{i}").get_json()["id"] for i in range(3)]
    owner = create_engine(backend.owner_url)
    with owner.begin() as conn:  # as the upgrade leaves the rows written before it
        conn.execute(text("UPDATE order_events SET txid = 0"))
    owner.dispose()
    after = create_order(client, partner, reference="R3").get_json()["id"]
    old_cursor = cursors.encode(svc.history(db, before[0])[0].id)
    events, _ = read_feed(client, partner, old_cursor)
    assert events == [(before[1], "received"), (before[2], "received"), (after, "received")]
