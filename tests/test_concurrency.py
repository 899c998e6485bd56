"""Races that must have exactly one winner: claims, status changes, and duplicate idempotent creates."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import requests
from conftest import NEW_ORDER, auth, cancel_reason, create_order

from mes.domain.errors import AlreadyClaimed, Conflict
from mes.domain.lifecycle import Status
from mes.services import orders as svc
from mes.services.accounts import operator_actor


def race(n: int, action):
    """Run `action(i)` in n threads released at the same moment; return results or exceptions."""
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        try:
            return action(i)
        except Exception as exc:  # the loser's error is the result we check
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_two_operators_claim_at_once_one_wins(app, client, accounts_, db):
    partner = accounts_.partner()
    ops = [operator_actor(accounts_.operator(f"op{i}")) for i in range(4)]
    for round_ in range(5):
        oid = create_order(client, partner, key=f"k{round_}", reference=f"R{round_}").get_json()["id"]
        make_session = app.extensions["mes_sessionmaker"]

        def claim(i, oid=oid):
            with make_session() as session:
                return svc.claim(session, ops[i], oid)

        results = race(len(ops), claim)
        winners = [r for r in results if not isinstance(r, Exception)]
        losers = [r for r in results if isinstance(r, Exception)]
        assert len(winners) == 1, results
        assert all(isinstance(e, AlreadyClaimed) and "already held by" in e.detail for e in losers), losers
        db.rollback()  # end the old snapshot (SQLite keeps one per transaction)
        assert svc.get_order(db, ops[0], oid).holder_id == winners[0].holder_id


def test_concurrent_status_changes_one_wins_the_other_gets_409(app, client, accounts_, db):
    partner = accounts_.partner()
    boss = [operator_actor(accounts_.operator(f"chief{i}", role="supervisor")) for i in range(2)]
    oid = create_order(client, partner).get_json()["id"]
    make_session = app.extensions["mes_sessionmaker"]
    why = cancel_reason(db)

    def move(i):
        with make_session() as session:
            # Both saw version 1 and want different futures for the order.
            target = Status.QUEUED if i == 0 else Status.CANCELLED
            return svc.change_status(session, boss[i], oid, target, expected_version=1,
                                     cancel_reason_id=why if target is Status.CANCELLED else None)

    results = race(2, move)
    assert sum(not isinstance(r, Exception) for r in results) == 1, results
    assert sum(isinstance(r, Conflict) for r in results) == 1, results
    db.rollback()  # end the old snapshot (SQLite keeps one per transaction)
    order = svc.get_order(db, boss[0], oid)
    assert order.status_version == 2 and len(svc.history(db, oid)) == 2
    assert sum(svc.status_counts(db).values()) == 1


def test_duplicate_idempotent_creates_at_once_make_one_order(live_server, accounts_, db):
    partner = accounts_.partner()

    def post(_i):
        with requests.Session() as s:
            return s.post(f"{live_server.url}/api/v1/orders", json=NEW_ORDER, timeout=30,
                          headers={**auth(partner), "Idempotency-Key": "same-key"})

    for _ in range(3):
        answers = race(8, post)
        assert [r.status_code for r in answers] == [201] * 8, [r.text for r in answers]
        assert len({r.json()["id"] for r in answers}) == 1
        assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) >= 7
    assert svc.status_counts(db)["received"] == 1
    listed = requests.get(f"{live_server.url}/api/v1/orders", headers=auth(partner), timeout=30).json()
    assert len(listed["items"]) == 1


def test_concurrent_creates_with_different_keys_all_land(live_server, accounts_, db):
    partner = accounts_.partner()

    def post(i):
        return requests.post(f"{live_server.url}/api/v1/orders", json={**NEW_ORDER, "reference": f"C-{i}"},
                             headers={**auth(partner), "Idempotency-Key": f"c-{i}"}, timeout=30)

    answers = race(8, post)
    assert [r.status_code for r in answers] == [201] * 8
    assert svc.status_counts(db)["received"] == 8
