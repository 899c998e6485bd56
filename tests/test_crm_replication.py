"""The CRM's own database in the real topology (started as `make up` does, on free ports): what the public API
writes reaches the CRM's views by logical replication (commit to visible measured, p50/p95 printed), the CRM
reads its copy while the MES primary is down, and after the primary's host is lost under writes and a
standby promoted (and across a switchover), every acknowledged change is in the CRM exactly once (counted by
event id), none extra. The same loss of the primary, after a SIGKILL of the webhook worker in the middle of
a delivery, loses no acknowledged change for the webhooks either (a receiver in this process)."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import statistics
import time

import pytest
import requests
from sqlalchemy import create_engine, text
from stack.base import wait_until
from stackutil import GROUP_VARS, api, create, running_stack, stack_cli
from webhookutil import CancelStream, Receiver, delivered_orders

from mes.testing.writeload import WriteLoad
from stack import crm, dbtier

pytestmark = pytest.mark.topology

BOUND = 30       # seconds: a change must be visible in the CRM's database well within this
RECOVERY = 90    # seconds a failover may take before writes must succeed again
# A webhook delivery claimed by a worker that died is sent again once its lease ends (connect + read timeout
# + 30 s with group_vars' settings): the bound for every acknowledged change to arrive after the faults.
DELIVERED_WITHIN = 150


@pytest.fixture(scope="module")
def stack():
    with running_stack() as running:
        yield running


@pytest.fixture(scope="module")
def receiver():
    """A webhook receiver on 127.0.0.1 (tests/webhookutil.py)."""
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def crm_db(stack):
    """The CRM's database as the CRM reads it: the read-only role, the crm_api views."""
    engine = create_engine(crm.reader_url(stack.ctx), pool_pre_ping=True)
    yield engine
    engine.dispose()


def read(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def seconds_until(predicate, timeout: float = BOUND) -> float:
    started = time.monotonic()
    assert wait_until(predicate, timeout, 0.002), f"not visible in the CRM's database within {timeout} s"
    return time.monotonic() - started


def test_orders_created_and_cancelled_through_the_api_reach_the_crm_views(stack, crm_db):
    key = stack.new_key(f"crm-sync-{time.monotonic_ns()}")
    status = "SELECT status, status_version FROM crm_api.orders WHERE id = :id"
    delays = []
    for i in range(20):
        order = create(stack, key, f"CRM-{time.monotonic_ns()}-{i}")
        delays.append(seconds_until(lambda: read(crm_db, status, id=order["id"]) == [("received", 1)]))
        r = api(stack, "POST", f"/orders/{order['id']}/cancel", key, json={"reason": "test"})
        assert r.status_code == 200, r.text
        delays.append(seconds_until(lambda: read(crm_db, status, id=order["id"])[0][0] == "cancelled"))
    events = read(crm_db, "SELECT kind, from_status, to_status FROM crm_api.order_events WHERE order_id = :id "
                          "ORDER BY id", id=order["id"])
    assert events == [("status", None, "received"), ("status", "received", "cancelled")]
    delays.sort()
    print(f"\nMES commit (API answer) to visible in the CRM's views, {len(delays)} changes: "
          f"p50 {statistics.median(delays) * 1000:.1f} ms, p95 {delays[int(len(delays) * 0.95) - 1] * 1000:.1f} ms, "
          f"max {delays[-1] * 1000:.1f} ms")
    # The reader sees the views and nothing else; the heartbeat says how fresh the copy is.
    with pytest.raises(Exception, match="permission denied"):
        read(crm_db, "SELECT count(*) FROM public.orders")
    assert read(crm_db, "SELECT lag_seconds < 30 FROM crm_api.replication_lag") == [(True,)]


def metrics(host: str, port: int) -> str:
    return requests.get(f"http://{host}:{port}/metrics", timeout=10).text


def test_the_exporters_show_the_subscription_and_the_slot(stack):
    """What the alerts of monitoring/rules/crm.yml read, from the CRM's exporter and the primary's."""
    t = stack.ctx.vars["mes_topology"]
    crm_side = metrics(t["crm_db"]["host"], t["crm_db"]["exporter_port"])
    assert re.search(r'^crm_subscription_apply_running\{[^}]*subscription="crm"[^}]*\} 1$', crm_side, re.M), crm_side
    assert re.search(r'^crm_subscription_tables_not_ready\{[^}]*\} 0$', crm_side, re.M)
    lag = re.search(r"^crm_heartbeat_lag_seconds(?:\{[^}]*\})? (\S+)$", crm_side, re.M)
    assert lag and 0 <= float(lag.group(1)) < 30, crm_side
    # mes crm-guard verified the MES's timeline within its last few passes, and is not failing
    checked = re.search(r'^crm_guard_check_age_seconds\{[^}]*subscription="crm"[^}]*\} (\S+)$', crm_side, re.M)
    assert checked and 0 <= float(checked.group(1)) < 30, crm_side
    assert re.search(r'^crm_guard_failing\{[^}]*\} 0$', crm_side, re.M)
    assert re.search(r'^crm_guard_resyncs\{[^}]*\} [1-9]', crm_side, re.M)  # once at its start
    primary = dbtier.primary_node(stack.ctx)
    mes_side = metrics(primary["host"], primary["exporter_port"])
    assert re.search(r'^pg_logical_slot_wal_status\{[^}]*slot_name="crm"[^}]*\} 0$', mes_side, re.M), mes_side
    assert re.search(r'^pg_logical_slot_active\{[^}]*slot_name="crm"[^}]*\} 1$', mes_side, re.M)


def writing(stack) -> WriteLoad:
    load = WriteLoad(stack.public, stack.new_key(f"crm-faults-{time.monotonic_ns()}", tier="bulk"), rate=25).start()
    time.sleep(3)  # a steady state first
    return load


def keep_writing_after(load: WriteLoad, since: float) -> None:
    """Until a write that started after `since` succeeded, 3 s more, then stop."""
    while load.write_gap(since) is None:
        assert time.monotonic() - since < RECOVERY, f"no write succeeded after the change of primary: {load.statuses()}"
        time.sleep(0.2)
    time.sleep(3)
    load.stop()


def guard_state(stack) -> dict:
    """mes crm-guard's row of crm_sync.state (on the CRM's server, as its superuser)."""
    columns = ("timeline", "resyncs", "last_rows_fixed", "last_error")
    row = dbtier.psql(stack.ctx, stack.ctx.vars["mes_topology"]["crm_db"],
                      f"SELECT {', '.join(columns)} FROM crm_sync.state", db=GROUP_VARS["crm_database"])
    values = dict(zip(columns, row.split("|")))
    return {**{k: int(values[k] or 0) for k in columns[:3]}, "last_error": values["last_error"]}


def mes_timeline(stack) -> int:
    """The primary's timeline: the first 8 hex digits of its current WAL file's name."""
    return int(dbtier.psql(stack.ctx, dbtier.primary_node(stack.ctx), "SELECT ('x' || substr(pg_walfile_name("
                           "pg_current_wal_lsn()), 1, 8))::bit(32)::int"))


def assert_every_acknowledged_change_once_in_the_crm(stack, crm_db, load: WriteLoad) -> tuple[int, int]:
    """Every order the API acknowledged is in the CRM's views; its events there are the MES's, by id, each
    once and none extra (once mes crm-guard verified the new timeline). Returns (acknowledged orders, events)."""
    acknowledged = load.acknowledged()
    # At 25 creates/s: 3 s before the change of primary and 3 s after the first write that followed it.
    assert len(acknowledged) >= 50, load.statuses()
    timeline = mes_timeline(stack)
    assert wait_until(lambda: guard_state(stack)["timeline"] == timeline, RECOVERY, 0.5), guard_state(stack)
    like = f"W-{load.prefix}-%"
    mes_events = {int(line) for line in dbtier.psql(
        stack.ctx, dbtier.primary_node(stack.ctx),
        f"SELECT e.id FROM order_events e JOIN orders o ON o.id = e.order_id WHERE o.reference LIKE '{like}'",
        db=GROUP_VARS["pg_database"]).split()}
    query = ("SELECT e.id FROM crm_api.order_events e JOIN crm_api.orders o ON o.id = e.order_id "
             "WHERE o.reference LIKE :like")
    seconds_until(lambda: {r[0] for r in read(crm_db, query, like=like)} >= mes_events, RECOVERY)
    crm_events = [r[0] for r in read(crm_db, query, like=like)]
    assert len(crm_events) == len(set(crm_events)), "an event arrived twice"
    assert set(crm_events) == mes_events, f"events in the CRM that the MES does not have: " \
                                          f"{sorted(set(crm_events) - mes_events)[:10]}"
    orders = dict(read(crm_db, "SELECT reference, id FROM crm_api.orders WHERE reference LIKE :like", like=like))
    assert {ref: orders.get(ref) for ref in acknowledged} == acknowledged
    return len(acknowledged), len(crm_events)


def test_a_switchover_under_writes_keeps_the_subscription_flowing(stack, crm_db):
    load = writing(stack)
    old = dbtier.primary_node(stack.ctx)
    new = dbtier.standby_nodes(stack.ctx)[0]
    switched_at = time.monotonic()
    r = requests.post(f"http://{old['host']}:{old['patroni_port']}/switchover",
                      json={"leader": old["name"], "candidate": new["name"]}, timeout=60)
    assert r.status_code == 200, r.text
    keep_writing_after(load, switched_at)
    assert dbtier.primary_node(stack.ctx)["name"] == new["name"]
    orders, events = assert_every_acknowledged_change_once_in_the_crm(stack, crm_db, load)
    print(f"\n{orders} acknowledged orders across a switchover to {new['name']}: all in the CRM's database, "
          f"{events} events, each once")


# An order committed on the primary alone: a copy of an acknowledged one under another reference.
PHANTOM = """
BEGIN;
SET LOCAL synchronous_commit = local;
CREATE TEMP TABLE phantom ON COMMIT DROP AS SELECT * FROM orders WHERE reference = '{copy_of}';
UPDATE phantom SET id = nextval(pg_get_serial_sequence('orders', 'id')), reference = '{reference}';
INSERT INTO orders SELECT * FROM phantom;
COMMIT;
"""


def physical_walsenders(stack, node: str) -> list[int]:
    """The node's walsenders to its standbys (not the CRM's logical one)."""
    postmaster = dbtier.PatroniNode(dbtier.node_by_name(stack.ctx, node)).postmaster_pid()
    role = GROUP_VARS["pg_replication_role"].encode()
    return [p for p in dbtier._children(postmaster)
            if re.search(rb"walsender " + re.escape(role) + rb" ", open(f"/proc/{p}/cmdline", "rb").read())]


def test_a_killed_worker_and_a_lost_primary_lose_no_acknowledged_change_for_the_crm_nor_the_webhooks(
        stack, crm_db, receiver):
    """One loss of the primary's host under writes, seen by both consumers of the MES's changes.

    Webhooks: an endpoint subscribed to status changes and a stream of cancels through the API; the delivery
    worker is SIGKILLed while the receiver holds one of its requests (`make up` starts it again), then the
    primary's host is lost. Every acknowledged cancel reaches the receiver at least once, counted by
    webhook-id: duplicates are allowed, losses are not.

    The CRM: PostgreSQL 15 sends a transaction to the CRM once it is on the primary's disk, before the
    synchronous standby has it. Here the primary's walsenders to its standbys are stopped before the loss:
    writes wait for the standby (never acknowledged) while the CRM already shows them, and the promoted
    standby never has them (the test commits one such write itself, so that there surely is one). Without
    mes crm-guard the CRM would keep them, and its subscription would skip the new primary's first
    transactions; with it, the copy is resynced on the new timeline: the lost writes
    leave the CRM, and every acknowledged change, before and after, is there exactly once."""
    # The old primary of the switchover before rejoined as a standby (synchronous again).
    assert wait_until(lambda: any(m["role"] == "sync_standby" for m in dbtier.cluster(stack.ctx)["members"]), 60, 1)
    resyncs_before = guard_state(stack)["resyncs"]
    hooks = stack.new_key(f"hooks-{time.monotonic_ns()}", tier="bulk")
    r = api(stack, "POST", "/webhook-endpoints", {**hooks, "Idempotency-Key": "endpoint"},
            json={"url": receiver.url, "event_types": ["order.status_changed"]})
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    stream, load, stalled = CancelStream(stack, hooks, str(time.monotonic_ns())).start(), None, []
    try:
        assert wait_until(lambda: len(stream.acknowledged) >= 10, 60, 0.2), stream.failures
        receiver.hold_next()
        assert receiver.held.wait(60), "no delivery reached the receiver"
        worker = stack.pid("webhooks")
        os.kill(worker, signal.SIGKILL)
        assert wait_until(lambda: stack.pid("webhooks") is None, 10)
        time.sleep(2)
        up = stack_cli(stack.env, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert stack.pid("webhooks") not in (None, worker)

        load = writing(stack)
        old = dbtier.primary_node(stack.ctx)["name"]
        stalled = physical_walsenders(stack, old)
        assert stalled, "no walsender to a standby on the primary"
        for pid in stalled:
            os.kill(pid, signal.SIGSTOP)
        like = f"W-{load.prefix}-%"

        def unacknowledged_in_crm() -> dict[str, int]:
            rows = read(crm_db, "SELECT reference, id FROM crm_api.orders WHERE reference LIKE :like", like=like)
            acknowledged = load.acknowledged()
            return {ref: id_ for ref, id_ in rows if ref not in acknowledged}

        # The API's creates now wait for the standby, and soon hold every worker: whether one commits after
        # the stop is luck. So one transaction is committed here as well, on the primary after the stop
        # (synchronous_commit local: the same WAL, without a client that waits for the standby).
        phantom = f"W-{load.prefix}-phantom"
        dbtier.psql(stack.ctx, dbtier.node_by_name(stack.ctx, old), PHANTOM.format(
            copy_of=next(iter(load.acknowledged())), reference=phantom), db=GROUP_VARS["pg_database"])
        assert wait_until(lambda: phantom in unacknowledged_in_crm(), 20, 0.1), \
            "the CRM did not receive the write that the standbys never had"
        phantoms = unacknowledged_in_crm()
        killed_at = time.monotonic()
        dbtier.kill_node(stack.ctx, old)
        # The MES has no primary now: the CRM's database still answers from its copy.
        assert read(crm_db, "SELECT count(*) > 0 FROM crm_api.orders") == [(True,)]
        keep_writing_after(load, killed_at)
        assert wait_until(lambda: stream.acknowledged_since(killed_at), RECOVERY, 0.5), stream.failures
        time.sleep(3)
    finally:
        for pid in stalled:              # a failure before the kill leaves no stopped walsender behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        stream.stop()
        if load is not None:
            load.stop()
    assert dbtier.primary_node(stack.ctx)["name"] != old
    assert stack.pid("webhooks"), "the worker did not survive the failover:\n" + stack.ctx.log_tail("webhooks")

    # The CRM: exactly the MES's rows, the lost writes gone.
    orders, events = assert_every_acknowledged_change_once_in_the_crm(stack, crm_db, load)
    mes_ids = {int(i) for i in dbtier.psql(stack.ctx, dbtier.primary_node(stack.ctx),
                                           f"SELECT id FROM orders WHERE reference LIKE '{like}'",
                                           db=GROUP_VARS["pg_database"]).split()}
    lost = {ref: id_ for ref, id_ in phantoms.items() if id_ not in mes_ids}
    assert phantom in lost, f"a write the standbys never received reached the new primary ({phantoms})"
    crm_ids = {r[0] for r in read(crm_db, "SELECT id FROM crm_api.orders WHERE reference LIKE :like", like=like)}
    assert crm_ids == mes_ids, f"orders in the CRM that the MES lost: {sorted(crm_ids - mes_ids)}"
    state = guard_state(stack)
    assert state["resyncs"] > resyncs_before and state["last_rows_fixed"] >= len(lost), state
    print(f"\n{orders} acknowledged orders across the failover of {old}: all in the CRM's database, {events} "
          f"events, each once; {len(lost)} orders the MES lost (never acknowledged) left the CRM again "
          f"(the resync corrected {state['last_rows_fixed']} rows)")

    # The webhooks: every acknowledged cancel at least once, once the lease of the killed worker's claim ran out.
    cancelled = set(stream.acknowledged)
    wait_until(lambda: cancelled <= set(delivered_orders(receiver, secret)[0]), DELIVERED_WITHIN, 1)
    delivered, times = delivered_orders(receiver, secret)
    missing = sorted(cancelled - set(delivered))
    duplicates = {msg_id: n for msg_id, n in times.items() if n > 1}
    print(f"webhooks: {len(cancelled)} acknowledged changes, {len(times)} webhook-ids received "
          f"({sum(times.values())} deliveries), {len(duplicates)} delivered more than once, {len(missing)} lost; "
          f"stream failures {dict(stream.failures)}")
    assert len(cancelled) >= 20, stream.failures   # the stream really ran
    # The delivery in hand when the worker died was sent again once its lease ran out: at least once.
    assert times[receiver.held_id] >= 2, (receiver.held_id, times[receiver.held_id])
    assert not missing, f"{len(missing)} of {len(cancelled)} acknowledged changes never arrived: {missing[:10]}"
    # One event per change: an order's status change arrives under one webhook-id, however often.
    assert all(len(ids) == 1 for ids in delivered.values()), {o: i for o, i in delivered.items() if len(i) > 1}


def test_a_column_published_before_the_crm_has_it_stops_the_copy_until_it_has_it(stack, crm_db):
    """The wrong order of mes/crm_contract.py's steps (the MES publishes a column first): the CRM's apply
    worker stops on it and retries; once the CRM's copy has the column, everything arrives, nothing lost."""
    from mes import crm_contract

    lists = {**crm_contract.CONTRACT, "orders": (*crm_contract.CONTRACT["orders"], "material")}
    publish = "ALTER PUBLICATION crm SET TABLE " + ", ".join(f"{t} ({', '.join(c)})" for t, c in lists.items())
    crm_node = stack.ctx.vars["mes_topology"]["crm_db"]
    errors = "SELECT apply_error_count FROM pg_stat_subscription_stats WHERE subname = 'crm'"
    before = int(dbtier.psql(stack.ctx, crm_node, errors, db=GROUP_VARS["crm_database"]))
    dbtier.psql(stack.ctx, dbtier.primary_node(stack.ctx), publish, db=GROUP_VARS["pg_database"])
    order = create(stack, stack.new_key(f"crm-column-{time.monotonic_ns()}"), f"CRM-COL-{time.monotonic_ns()}")
    seconds_until(lambda: int(dbtier.psql(stack.ctx, crm_node, errors, db=GROUP_VARS["crm_database"])) > before)
    assert read(crm_db, "SELECT id FROM crm_api.orders WHERE id = :id", id=order["id"]) == []
    dbtier.psql(stack.ctx, crm_node, "ALTER TABLE public.orders ADD COLUMN material text",
                db=GROUP_VARS["crm_database"])
    copy = "SELECT material FROM public.orders WHERE id = %d" % order["id"]
    seconds_until(lambda: dbtier.psql(stack.ctx, crm_node, copy, db=GROUP_VARS["crm_database"]) == "steel S235")
