"""Keeps the CRM's copy exact across a change of the MES's primary, which PostgreSQL 15's logical replication
alone does not.

The primary's logical walsender sends a transaction to the CRM once it is on the primary's disk, without
waiting for the synchronous standby. When the primary is lost, the CRM may have applied transactions that the
promoted standby never received (never acknowledged to their clients, so lost to the MES, but present in the
CRM's copy), and its subscription then asks the new primary to start after them: the new primary's own first
transactions below that position are skipped, silently. PostgreSQL 17's failover slots solve this at the
source; on 15 this guard does, on the CRM's side:

- every pass it asks the MES's primary (IDENTIFY_SYSTEM, over the subscription's own connection string) for its
  timeline, and compares it with the timeline it last verified (table crm_sync.state);
- on a new timeline (a failover or a switchover), and once at the start, it resyncs: disables the subscription,
  recreates the slot `crm` on the new primary with an exported snapshot, makes each published table of the copy
  equal to the MES's rows in that snapshot (deletes what the MES does not have, corrects what differs, adds
  what is missing, in one transaction), sets the subscription's position to the slot's consistent point, and
  enables the subscription again. Whatever committed before that point is in the snapshot, whatever committed
  after it streams: each change exactly once.

It connects to the CRM's database as its own role (crm_guard_role), which may change the copies' rows and
call the few SECURITY DEFINER functions of schema crm_sync (postgresql/crm_schema.sql.j2) that do what only a
superuser may on PostgreSQL 15: read the subscription's connection string, disable and enable it, move its
position. Its state, for on-call and the exporter, is the table crm_sync.state.
"""
from __future__ import annotations

import logging
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass

import psycopg2
import psycopg2.extras
from psycopg2 import errors, sql

from . import crm_contract

log = logging.getLogger("mes.crm_guard")

SCHEMA = "crm_sync"
STOP_TIMEOUT = 30  # seconds for the subscription's workers to exit once it is disabled
SLOT_ATTEMPTS = 5  # Patroni may recreate the slot between our drop and our create: try again
SPOOL_BYTES = 32 * 1024 * 1024  # a table's rows in memory up to this, on disk beyond


class GuardError(RuntimeError):
    """A pass could not finish; the next one tries again (the subscription may be left disabled)."""


@dataclass(frozen=True)
class Resync:
    timeline: int
    consistent_lsn: str
    deleted: int
    updated: int
    inserted: int
    seconds: float

    @property
    def fixed(self) -> int:
        return self.deleted + self.updated + self.inserted


def _subscription(crm, name: str) -> tuple[int, str, str]:
    with crm.cursor() as cur:
        cur.execute(f"SELECT oid, conninfo, slot FROM {SCHEMA}.subscription(%s)", (name,))
        row = cur.fetchone()
    if row is None or row[0] is None:
        raise GuardError(f"the CRM's database has no subscription {name!r}")
    return row


def _state(crm, name: str) -> tuple[str | None, int | None]:
    with crm.cursor() as cur:
        cur.execute(f"SELECT system_identifier, timeline FROM {SCHEMA}.state WHERE subscription = %s", (name,))
        return cur.fetchone() or (None, None)


def _enabled(crm, oid: int) -> bool:
    with crm.cursor() as cur:
        cur.execute("SELECT subenabled FROM pg_subscription WHERE oid = %s", (oid,))
        return bool(cur.fetchone()[0])


def _locked(crm, subscription: str) -> bool:
    """One guard at a time (the service and an on-call's --resync): two resyncs interleaved could leave the
    subscription at one's position and the slot at the other's. Held until the connection closes."""
    with crm.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(hashtext('mes crm-guard ' || %s))", (subscription,))
        return cur.fetchone()[0]


def _tables_ready(crm, oid: int) -> bool:
    """The first copy of every table is done (a resync during it would collide with the copy's rows)."""
    with crm.cursor() as cur:
        cur.execute("SELECT count(*) FILTER (WHERE srsubstate <> 'r'), count(*) FROM pg_subscription_rel "
                    "WHERE srsubid = %s", (oid,))
        pending, total = cur.fetchone()
    return total > 0 and pending == 0


def _identify(repl) -> tuple[str, int]:
    with repl.cursor() as cur:
        cur.execute("IDENTIFY_SYSTEM")
        system_id, timeline, _, _ = cur.fetchone()
    return str(system_id), int(timeline)


def check_once(crm_dsn: str, subscription: str = crm_contract.PUBLICATION, *, force: bool = False) -> Resync | None:
    """One pass: verify the MES's timeline, resync the copy when it changed (or when `force`: after a lost
    slot, or to repair a copy someone changed by hand). Returns the resync, if any."""
    with closing(psycopg2.connect(crm_dsn, application_name="mes-crm-guard")) as crm:
        crm.autocommit = True
        if not _locked(crm, subscription):
            if force:
                raise GuardError("another mes crm-guard is checking right now; try again in a few seconds")
            return None
        try:
            oid, conninfo, slot = _subscription(crm, subscription)
            with closing(psycopg2.connect(conninfo, application_name="mes-crm-guard",
                                          connection_factory=psycopg2.extras.LogicalReplicationConnection)) as repl:
                system_id, timeline = _identify(repl)
                # A disabled subscription on a verified timeline: a resync that failed halfway (its position
                # may already have moved), so do it again rather than call the copy verified.
                if not force and (system_id, timeline) == _state(crm, subscription) and _enabled(crm, oid):
                    _record(crm, subscription, "checked_at = now(), last_error = NULL")
                    return None
                if not _tables_ready(crm, oid):
                    log.info("crm guard: timeline %s, waiting for the subscription's first copy", timeline)
                    return None
                log.warning("crm guard: the MES's primary is on timeline %s (verified: %s); resyncing the copy",
                            timeline, _state(crm, subscription)[1])
                result = _resync(crm, repl, conninfo, subscription, oid, slot or subscription, timeline)
        except (psycopg2.Error, GuardError) as err:
            try:
                _record(crm, subscription, "last_error = %(e)s, last_error_at = now()", e=str(err).strip()[:500])
            except psycopg2.Error:
                pass  # the CRM's database itself is what fails: the error above says more
            raise
        _record(crm, subscription, "system_identifier = %(s)s, timeline = %(t)s, consistent_lsn = %(l)s, "
                "checked_at = now(), resynced_at = now(), resyncs = state.resyncs + 1, "
                "rows_fixed = state.rows_fixed + %(f)s, last_rows_fixed = %(f)s, last_error = NULL",
                s=system_id, t=timeline, l=result.consistent_lsn, f=result.fixed)
        log.warning("crm guard: resynced at %s on timeline %s: %s deleted, %s corrected, %s added, %.1f s",
                    result.consistent_lsn, timeline, result.deleted, result.updated, result.inserted, result.seconds)
        return result


def _record(crm, subscription: str, assignments: str, **values) -> None:
    with crm.cursor() as cur:
        cur.execute(f"INSERT INTO {SCHEMA}.state (subscription) VALUES (%s) ON CONFLICT DO NOTHING", (subscription,))
        cur.execute(f"UPDATE {SCHEMA}.state SET {assignments} WHERE subscription = %(sub)s",
                    {"sub": subscription, **values})


def _set_enabled(crm, subscription: str, oid: int, enabled: bool) -> None:
    with crm.cursor() as cur:
        cur.execute(f"SELECT {SCHEMA}.set_enabled(%s, %s)", (subscription, enabled))
        if enabled:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while True:
            cur.execute("SELECT count(*) FROM pg_stat_subscription WHERE subid = %s AND pid IS NOT NULL", (oid,))
            if cur.fetchone()[0] == 0:
                return
            if time.monotonic() > deadline:
                raise GuardError(f"the subscription's workers did not stop within {STOP_TIMEOUT} s")
            time.sleep(0.1)


def _recreate_slot(repl, slot: str) -> tuple[str, str]:
    """Drop the slot on the MES's primary (its position may be past the copy's, or from before the copy's
    last change) and create it again with an exported snapshot: (consistent point, snapshot name)."""
    with repl.cursor() as cur:
        for _ in range(SLOT_ATTEMPTS):
            cur.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            if cur.fetchone()[0]:
                cur.execute(f"DROP_REPLICATION_SLOT {sql.Identifier(slot).as_string(cur)} WAIT")
            try:
                cur.execute(f"CREATE_REPLICATION_SLOT {sql.Identifier(slot).as_string(cur)} LOGICAL pgoutput "
                            f"(SNAPSHOT 'export')")
            except errors.DuplicateObject:
                continue  # Patroni made it again meanwhile (a permanent slot): drop it once more
            _, consistent, snapshot, _ = cur.fetchone()
            return consistent, snapshot
    raise GuardError(f"could not recreate the slot {slot!r} in {SLOT_ATTEMPTS} attempts")


def _published(mes, publication: str) -> dict[str, list[str]]:
    with mes.cursor() as cur:
        cur.execute("SELECT schemaname, tablename, attnames FROM pg_publication_tables WHERE pubname = %s",
                    (publication,))
        return {(schema, table): list(columns) for schema, table, columns in cur.fetchall()}


def _reconcile_table(mes, crm_cur, schema: str, table: str, columns: list[str]) -> tuple[int, int, int]:
    """Make the CRM's copy of one table equal to the MES's rows in the exported snapshot: (deleted, updated,
    inserted). Only the published columns; a column the CRM added for itself stays as it is."""
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    copy, theirs = sql.Identifier(f"mes_{table}"), sql.Identifier(schema, table)
    crm_cur.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
        copy, cols, theirs))
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+b") as rows:
        with mes.cursor() as cur:
            cur.copy_expert(sql.SQL("COPY (SELECT {} FROM {}.{}) TO STDOUT").format(
                cols, sql.Identifier(schema), sql.Identifier(table)).as_string(cur), rows)
        rows.seek(0)
        crm_cur.copy_expert(sql.SQL("COPY {} ({}) FROM STDIN").format(copy, cols).as_string(crm_cur), rows)
    crm_cur.execute(sql.SQL("DELETE FROM {} c WHERE NOT EXISTS (SELECT 1 FROM {} m WHERE m.id = c.id)").format(
        theirs, copy))
    deleted = crm_cur.rowcount
    crm_cur.execute(sql.SQL("UPDATE {t} c SET ({cols}) = ROW({mcols}) FROM {m} m WHERE m.id = c.id "
                            "AND ROW({ccols}) IS DISTINCT FROM ROW({mcols})").format(
        t=theirs, m=copy, cols=cols,
        mcols=sql.SQL(", ").join(sql.Identifier("m", c) for c in columns),
        ccols=sql.SQL(", ").join(sql.Identifier("c", c) for c in columns)))
    updated = crm_cur.rowcount
    crm_cur.execute(sql.SQL("INSERT INTO {t} ({cols}) SELECT {cols} FROM {m} m WHERE NOT EXISTS "
                            "(SELECT 1 FROM {t} c WHERE c.id = m.id)").format(t=theirs, m=copy, cols=cols))
    return deleted, updated, crm_cur.rowcount


def _resync(crm, repl, conninfo: str, subscription: str, oid: int, slot: str, timeline: int) -> Resync:
    started = time.monotonic()
    _set_enabled(crm, subscription, oid, False)
    consistent, snapshot = _recreate_slot(repl, slot)
    # The snapshot stays valid while `repl` runs nothing else; `mes` must reach the same server (the
    # primary, by the same connection string): if it changed meanwhile, SET TRANSACTION SNAPSHOT fails.
    with closing(psycopg2.connect(conninfo, application_name="mes-crm-guard")) as mes:
        mes.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with mes.cursor() as cur:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
        totals = [0, 0, 0]
        crm.autocommit = False
        try:
            with crm.cursor() as crm_cur:
                for (schema, table), columns in sorted(_published(mes, subscription).items()):
                    counts = _reconcile_table(mes, crm_cur, schema, table, columns)
                    totals = [a + b for a, b in zip(totals, counts)]
                # The position the apply worker asks the slot for: nothing before it (in the snapshot) again.
                crm_cur.execute(f"SELECT {SCHEMA}.set_position(%s, %s)", (subscription, consistent))
            crm.commit()
        except BaseException:
            crm.rollback()
            raise
        finally:
            crm.autocommit = True
        mes.rollback()
    _set_enabled(crm, subscription, oid, True)
    return Resync(timeline, consistent, *totals, time.monotonic() - started)


def serve(crm_dsn: str, interval: float, subscription: str = crm_contract.PUBLICATION) -> None:
    """Check every `interval` seconds until stopped; a failed pass is logged and tried again."""
    while True:
        try:
            check_once(crm_dsn, subscription)
        except (psycopg2.Error, GuardError) as err:
            log.warning("crm guard: pass failed, trying again in %s s: %s", interval, str(err).strip())
        time.sleep(interval)
