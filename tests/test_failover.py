"""Faults in the database tier of the real topology (started as `make up` does, on free ports): Patroni
with etcd, synchronous replication, HAProxy's endpoints, Pgpool-II deciding nothing. Every test runs
a steady stream of order creations through HAProxy while the fault happens, and then checks that
every order a client was told about (201) is on the primary, under the id it was given.

What each fault costs in time is measured by `bench/failover_bench.py` (BENCHMARKS.md), not asserted here.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
import requests
from stack.base import wait_until
from stackutil import GROUP_VARS, Stack, running_stack, stack_cli

from mes.testing.writeload import WriteLoad
from stack import dbtier

pytestmark = pytest.mark.topology

RATE = 25           # creates per second: above the 20/s the durability promise is stated for
RECOVERY = 90       # seconds a fault may take before writes must succeed again (a sanity bound)


@pytest.fixture(scope="module")
def stack():
    with running_stack() as running:
        yield running


@pytest.fixture
def writes(stack):
    """A steady write load with its own bulk key; stopped after the test."""
    loads = []

    def start() -> WriteLoad:
        key = stack.new_key(f"faults-{len(loads)}-{time.monotonic_ns()}", tier="bulk")
        load = WriteLoad(stack.public, key, rate=RATE).start()
        loads.append(load)
        time.sleep(3)  # a steady state before the fault
        return load

    yield start
    for load in loads:
        load.stop()


# --- helpers -------------------------------------------------------------------------------------

def primary(stack: Stack) -> str:
    return dbtier.primary_node(stack.ctx)["name"]


def timeline(stack: Stack) -> int:
    leader = next(m for m in dbtier.cluster(stack.ctx)["members"] if m["role"] == "leader")
    return int(leader["timeline"])


def wait_for_writes(load: WriteLoad, since: float, what: str) -> float:
    """Seconds from `since` until a create that started after it succeeded."""
    deadline = since + RECOVERY
    while time.monotonic() < deadline:
        gap = load.write_gap(since)
        if gap is not None:
            return gap
        time.sleep(0.2)
    raise AssertionError(f"no write succeeded within {RECOVERY} s of {what}: {load.statuses()}")


def keep_writing(load: WriteLoad, seconds: float) -> None:
    """Let the load run on for a while, then stop it (what happened after recovery counts too)."""
    time.sleep(seconds)
    load.stop()


def assert_every_acknowledged_order_survived(stack: Stack, load: WriteLoad) -> None:
    acknowledged = load.acknowledged()
    assert len(acknowledged) > RATE * 3, load.statuses()  # the load really ran
    rows = dbtier.psql(stack.ctx, dbtier.primary_node(stack.ctx),
                       f"SELECT reference, id FROM orders WHERE reference LIKE 'W-{load.prefix}-%'",
                       db=GROUP_VARS["pg_database"])
    stored = {ref: int(order_id) for ref, order_id in (line.split("|") for line in rows.splitlines())}
    missing = sorted(set(acknowledged) - set(stored))
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged orders are missing: {missing[:10]}"
    moved = {ref: (acknowledged[ref], stored[ref]) for ref in acknowledged if stored[ref] != acknowledged[ref]}
    assert not moved, f"acknowledged orders stored under another id: {moved}"


def assert_no_server_errors_but_503(load: WriteLoad) -> None:
    """A fault may cost 503s (with Retry-After: the client comes back), never a 500 or a hang."""
    unexpected = {status: n for status, n in load.statuses().items() if status not in (201, 503)}
    assert not unexpected, load.statuses()


def restore(stack: Stack) -> None:
    """`make up` again: what was killed comes back; the cluster settles with a synchronous standby."""
    r = stack_cli(stack.env, "up")
    assert r.returncode == 0, r.stdout + r.stderr
    status = stack_cli(stack.env, "status")
    assert status.returncode == 0, status.stdout


def received_alerts(stack: Stack) -> list[dict]:
    """The notifications the stack's webhook receiver got so far (logs/alert_receiver.log, one JSON each)."""
    path = stack.ctx.logfile("alert_receiver")
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")] if path.exists() else []


def signal_postgres_and_patroni(stack: Stack, name: str, sig: int, postgres_only: bool) -> list[int]:
    return dbtier.kill_node(stack.ctx, name, postgres_only=postgres_only, sig=sig)


# --- host loss and crashes --------------------------------------------------------------------------

@pytest.mark.parametrize("lag", [False, True], ids=["in-sync", "standby-lagging"])
def test_losing_the_primarys_host_loses_no_acknowledged_order(stack, writes, lag):
    """kill -9 of the primary's Patroni, postmaster and backends together. With `lag`, the primary's
    walsender is stopped for a few seconds first: the standby falls behind, and (synchronous commit)
    the writes of that time wait instead of being acknowledged. The failover reaches the stack's alert
    receiver as a PatroniFailover ticket."""
    load = writes()
    old, tli = primary(stack), timeline(stack)
    notified = received_alerts(stack)
    pids = []
    if lag:
        postmaster = dbtier.PatroniNode(dbtier.node_by_name(stack.ctx, old)).postmaster_pid()
        pids = [p for p in dbtier._children(postmaster) if b"walsender" in open(f"/proc/{p}/cmdline", "rb").read()]
        assert pids, "no walsender found on the primary"
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(4)
    killed_at = time.monotonic()
    dbtier.kill_node(stack.ctx, old)
    wait_for_writes(load, killed_at, f"killing {old}")
    keep_writing(load, 3)

    new = primary(stack)
    assert new != old and timeline(stack) > tli
    assert_every_acknowledged_order_survived(stack, load)
    assert_no_server_errors_but_503(load)
    # The promoted node emptied the status cache (an entry there may predate the promotion).
    assert "order-status cache emptied" in stack.ctx.logfile(new).read_text()

    restore(stack)  # the old primary's Patroni comes back and rejoins it by pg_rewind
    members = {m["name"]: m for m in dbtier.cluster(stack.ctx)["members"]}
    assert members[old]["role"] in ("sync_standby", "replica") and members[new]["role"] == "leader"
    log = stack.ctx.logfile(old).read_text()
    assert re.search(r"pg_rewind exit code=0", log), "the old primary did not rejoin by pg_rewind"
    # The failover reaches a person: PatroniFailover on the new primary, sent by Alertmanager as a ticket to
    # the stack's receiver (within a scrape, an evaluation and group_wait, well inside this bound).
    def ticket() -> bool:
        return any(n["receiver"] == "tickets" and any(
            a["status"] == "firing" and a["labels"].get("alertname") == "PatroniFailover"
            and a["labels"].get("node") == new for a in n["alerts"]) for n in received_alerts(stack)[len(notified):])
    assert wait_until(ticket, 90, 1), received_alerts(stack)[len(notified):]


def test_a_crashed_postgres_is_restarted_in_place_without_failover(stack, writes):
    load = writes()
    leader = primary(stack)
    killed_at = time.monotonic()
    dbtier.kill_node(stack.ctx, leader, postgres_only=True)
    wait_for_writes(load, killed_at, f"killing {leader}'s PostgreSQL")
    keep_writing(load, 3)
    assert primary(stack) == leader  # Patroni restarted it; nobody was promoted
    assert_every_acknowledged_order_survived(stack, load)
    assert_no_server_errors_but_503(load)
    restore(stack)


@pytest.mark.parametrize("whole_node", [False, True], ids=["postgres-hung", "node-hung"])
def test_a_hung_primary_is_replaced_and_takes_no_write_after_it_resumes(stack, writes, whole_node):
    """SIGSTOP of the primary's PostgreSQL (or of its Patroni as well): a standby is promoted once the
    leader key expires; after SIGCONT the old primary must not accept writes (it demotes itself and
    rejoins), so no order acknowledged by either side is lost."""
    load = writes()
    old = primary(stack)
    stopped = signal_postgres_and_patroni(stack, old, signal.SIGSTOP, postgres_only=not whole_node)
    stopped_at = time.monotonic()
    try:
        wait_for_writes(load, stopped_at, f"stopping {old}")
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    # Writes continue while the old primary wakes up, notices it lost the leader key and steps down.
    deadline = time.monotonic() + RECOVERY
    while time.monotonic() < deadline:
        roles = {m["name"]: m["role"] for m in dbtier.cluster(stack.ctx)["members"]}
        if roles.get(old) in ("sync_standby", "replica") and list(roles.values()).count("leader") == 1:
            break
        time.sleep(0.5)
    keep_writing(load, 5)
    assert primary(stack) != old
    writable = [n["name"] for n in dbtier.nodes(stack.ctx)
                if dbtier._try_psql(stack.ctx, n, "SELECT pg_is_in_recovery()") == "f"]
    assert writable == [primary(stack)], writable
    assert_every_acknowledged_order_survived(stack, load)
    assert_no_server_errors_but_503(load)
    restore(stack)


# --- faults that must not fail over ----------------------------------------------------------------

def test_terminating_app_sessions_on_the_primary_fails_nothing_over(stack, writes):
    """pg_terminate_backend sends the administrative-shutdown message that Pgpool-II once took for a
    dead node. Now nothing Pgpool-II sees can start a failover, and no Pgpool-II child sleeps after it
    (failover_on_backend_shutdown): with the sleep, every pooled connection whose session was ended
    held its next request for 5 s, and the load here fell to a third of its rate."""
    assert dbtier.pgpool_query(stack.ctx, "PGPOOL SHOW failover_on_backend_shutdown") == [
        {"failover_on_backend_shutdown": "off"}]
    load = writes()
    leader, tli = primary(stack), timeline(stack)
    terminated = 0
    for _ in range(3):
        out = dbtier.psql(stack.ctx, dbtier.primary_node(stack.ctx),
                          "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                          "WHERE application_name LIKE 'mes-%' AND pid <> pg_backend_pid()")
        terminated += int(out)
        time.sleep(1.5)
    keep_writing(load, 3)
    assert terminated > 0
    assert (primary(stack), timeline(stack)) == (leader, tli)
    failed = sum(n for status, n in load.statuses().items() if status != 201)
    assert failed <= terminated, (load.statuses(), terminated)
    assert_no_server_errors_but_503(load)
    assert_every_acknowledged_order_survived(stack, load)
    rows = dbtier.pool_nodes(stack.ctx)
    assert all(r["status"] in ("up", "waiting") for r in rows), rows


def test_a_pgpool_restart_fails_nothing_over(stack, writes):
    load = writes()
    leader, tli = primary(stack), timeline(stack)
    dbtier.Pgpool().down(stack.ctx)
    restarted_at = time.monotonic()
    dbtier.Pgpool().up(stack.ctx)
    wait_for_writes(load, restarted_at, "restarting Pgpool-II")
    keep_writing(load, 3)
    assert (primary(stack), timeline(stack)) == (leader, tli)
    assert_no_server_errors_but_503(load)
    assert_every_acknowledged_order_survived(stack, load)


def test_losing_an_etcd_member_changes_nothing(stack, writes):
    """Two of three etcd members are a majority: the leader key is renewed as before."""
    load = writes()
    leader, tli = primary(stack), timeline(stack)
    member = stack.ctx.vars["mes_topology"]["etcd"][0]["name"]
    os.kill(stack.pid(member), signal.SIGKILL)
    # Longer than the leader key's TTL: had the key not been renewed, a failover would have happened.
    keep_writing(load, GROUP_VARS["patroni_ttl"] + 5)
    assert (primary(stack), timeline(stack)) == (leader, tli)
    assert load.statuses() == {201: len(load.attempts)}, load.statuses()
    assert_every_acknowledged_order_survived(stack, load)
    restore(stack)


# --- a lost standby -------------------------------------------------------------------------------

def test_a_lost_standby_costs_a_bounded_wait_and_raises_the_alert(stack, writes):
    """The synchronous standby's host is lost: commits wait until Patroni drops the synchronous
    requirement (synchronous mode is not strict), then go on, and Prometheus fires
    PatroniNoSynchronousStandby. When the standby is back, it is synchronous again."""
    load = writes()
    leader = primary(stack)
    standby = next(n["name"] for n in dbtier.standby_nodes(stack.ctx))
    killed_at = time.monotonic()
    dbtier.kill_node(stack.ctx, standby)
    wait_for_writes(load, killed_at, f"losing the standby {standby}")
    assert primary(stack) == leader

    deadline, alert = time.monotonic() + 120, None
    while time.monotonic() < deadline and alert is None:
        alerts = requests.get(f"{stack.prometheus}/api/v1/alerts", auth=stack.monitoring,
                              timeout=10).json()["data"]["alerts"]
        alert = next((a for a in alerts if a["labels"]["alertname"] == "PatroniNoSynchronousStandby"
                      and a["state"] == "firing"), None)
        time.sleep(2)
    keep_writing(load, 1)
    assert alert is not None, "PatroniNoSynchronousStandby did not fire"
    assert_every_acknowledged_order_survived(stack, load)
    assert_no_server_errors_but_503(load)

    restore(stack)
    members = {m["name"]: m["role"] for m in dbtier.cluster(stack.ctx)["members"]}
    assert members == {leader: "leader", standby: "sync_standby"}
