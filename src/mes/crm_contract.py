"""What the MES publishes to the CRM's database (PostgreSQL logical replication, publication `crm`): the
tables, their columns and what each means. The CRM reads its copy through views built from this list
(stack/crm.py), and `mes migrate` refuses to finish while the publication differs from it (check()).

Nothing private is published: no API keys or secrets, no operators, no shop-floor notes or free-text
reasons (an event's reason may be an operator's words), no actor labels (they name operators).

Changing a published table, in this order (the CRM's apply worker stops on a column it does not have):
  1. the CRM's database first: add the new column to its copy (nullable), keep the old one;
  2. the MES migration, which also alters the publication's column list
     (ALTER PUBLICATION crm SET TABLE ... with the new list);
  3. this module, so that the check and the CRM's views agree with the publication;
  4. last, the CRM drops a column it no longer receives.
A column that leaves the MES must first leave the publication (PostgreSQL refuses to drop a published
column, and DROP ... CASCADE silently takes the whole table out of the publication).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PUBLICATION = "crm"
#: The logical replication slot the subscription uses; Patroni keeps it on every node (patroni.yml.j2).
SLOT = "crm"


@dataclass(frozen=True)
class Column:
    name: str
    meaning: str
    type: str  # the CRM copy's type (its own schema; the MES may differ as long as values fit)


@dataclass(frozen=True)
class Table:
    name: str
    meaning: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


TABLES: tuple[Table, ...] = (
    Table("partners", "A B2B client of the shop.", (
        Column("id", "The partner's id (orders.partner_id).", "integer"),
        Column("name", "The partner's name.", "text"),
    )),
    Table("orders", "A production order, its current status and promise (one row per order).", (
        Column("id", "The order's id, as in the API.", "bigint"),
        Column("partner_id", "Whose order it is (partners.id).", "integer"),
        Column("reference", "The partner's own reference (unique per partner).", "text"),
        Column("product", "The product ordered.", "text"),
        Column("quantity", "Pieces ordered.", "integer"),
        Column("status", "The current status (received, in_production, ..., shipped, delivered, cancelled).",
               "text"),
        Column("status_version", "Counts the order's status changes; an event's status_version names the "
               "change it records.", "integer"),
        Column("promise_status", "on_track, at_risk, late (open orders), met or missed (shipped); "
               "null before the first projection.", "text"),
        Column("projected_finish", "The estimated completion of an open order (UTC); null when none.",
               "timestamptz"),
        Column("promised_date", "The date promised to the partner.", "date"),
        Column("created_at", "When the order was received (UTC).", "timestamptz"),
        Column("updated_at", "The last change of the order (UTC).", "timestamptz"),
        Column("shipped_at", "When it shipped (UTC); null until then.", "timestamptz"),
    )),
    Table("order_events", "One change of an order, as the API's feed shows it: a status change (or the "
          "creation), a hold, a release, or a change of promise. Never updated once written.", (
        Column("id", "The event's id: one change, counted once.", "bigint"),
        Column("order_id", "The order (orders.id).", "bigint"),
        Column("partner_id", "Whose order (partners.id).", "integer"),
        Column("kind", "status, hold, release or promise.", "text"),
        Column("from_status", "The status before; null for the creation.", "text"),
        Column("to_status", "The status after (the same as before for hold, release and promise).", "text"),
        Column("status_version", "The order's status_version after this event.", "integer"),
        Column("from_promise", "The promise status before.", "text"),
        Column("to_promise", "The promise status after.", "text"),
        Column("estimated_completion", "The estimated completion after this event (UTC).", "timestamptz"),
        Column("created_at", "When it happened (UTC).", "timestamptz"),
        Column("txid", "The MES transaction that wrote it; (txid, id) is its position in the API's feed.",
               "bigint"),
    )),
    Table("crm_heartbeat", "One row the MES's scheduler rewrites every few seconds: how fresh the copy is "
          "(now() - beat_at on the CRM's side is the replication lag in seconds).", (
        Column("id", "Always 1.", "smallint"),
        Column("beat_at", "When the MES last wrote it (UTC).", "timestamptz"),
    )),
)

CONTRACT: Mapping[str, tuple[str, ...]] = {t.name: t.column_names for t in TABLES}

SAFE_ORDER = ("the safe order of steps: change the CRM's database first (add the new column, nullable; keep "
              "the old one), then the MES migration with ALTER PUBLICATION crm SET TABLE ... (the new column "
              "list), then mes/crm_contract.py; see that module's docstring")


class ContractBroken(RuntimeError):
    """The publication in the database no longer publishes what the CRM's contract says."""


def differences(published: Mapping[str, tuple[str, ...]] | None,
                existing: Mapping[str, tuple[str, ...]] | None = None) -> list[str]:
    """What differs between the publication (table -> published columns; None when it does not exist)
    and the contract, one sentence each; `existing` (table -> its columns) names a column the MES dropped."""
    if published is None:
        return [f"publication {PUBLICATION!r} does not exist"]
    problems = []
    for table, columns in CONTRACT.items():
        if table not in published:
            gone = [c for c in columns if existing is not None and c not in existing.get(table, ())]
            why = (f" (column {', '.join(f'{table}.{c}' for c in gone)} was dropped, which took the table out "
                   f"of the publication)") if gone else ""
            problems.append(f"table {table} is no longer published{why}")
            continue
        for column in columns:
            if column not in published[table]:
                problems.append(f"column {table}.{column} is no longer published")
        for column in published[table]:
            if column not in columns:
                problems.append(f"column {table}.{column} is published but not in the CRM contract")
    for table in published:
        if table not in CONTRACT:
            problems.append(f"table {table} is published but not in the CRM contract")
    return problems


def check(published, existing=None) -> None:
    """Raise ContractBroken naming every difference and the safe order of steps."""
    problems = differences(published, existing)
    if problems:
        raise ContractBroken(f"the CRM's publication does not match its contract (mes/crm_contract.py): "
                             f"{'; '.join(problems)}. The CRM's subscription would stop or silently lose "
                             f"data. Follow {SAFE_ORDER}.")


def as_dicts() -> list[dict]:
    """TABLES as plain data, for the templates that build the CRM's schema (postgresql/crm_schema.sql.j2)."""
    return [{"name": t.name, "meaning": t.meaning,
             "columns": [{"name": c.name, "type": c.type, "meaning": c.meaning} for c in t.columns]} for t in TABLES]
