"""cancel reasons: the reason-code kind "cancel" (the kind's check constraint widened), seeded

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The cancel reasons as of this revision (mes.domain.reason_codes.DEFAULT_CANCEL_REASONS may grow later).
CANCEL_SEED = [
    ("customer_request", "Customer request", False),
    ("duplicate_order", "Duplicate order", False),
    ("cannot_be_made", "Cannot be made", False),
    ("other", "Other", True),
]
KINDS_BEFORE = "kind IN ('hold', 'late', 'defect')"
KINDS_AFTER = "kind IN ('hold', 'late', 'defect', 'cancel')"


def _kinds(condition: str) -> None:
    """Replace the kind's check. PostgreSQL alters it in place (the table, its grants and the foreign keys
    into it stay); SQLite cannot alter a constraint, so batch mode copies the table with the new one,
    carrying its rows and ids (the migration's connection has foreign keys off, as SQLite's own recipe
    for such a change wants, so the rows that refer to codes keep pointing at the same ids)."""
    with op.batch_alter_table("reason_codes") as batch:
        batch.drop_constraint(op.f("ck_reason_codes_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_reason_codes_kind"), condition)


def upgrade() -> None:
    _kinds(KINDS_AFTER)
    sqlite = op.get_bind().dialect.name == "sqlite"
    now = datetime.now(timezone.utc)
    codes = sa.table("reason_codes", sa.column("kind"), sa.column("code"), sa.column("label"),
                     sa.column("requires_note"), sa.column("active"), sa.column("sort_order"),
                     sa.column("created_at"))
    op.bulk_insert(codes, [
        {"kind": "cancel", "code": code, "label": label, "requires_note": note, "active": True,
         "sort_order": (i + 1) * 10, "created_at": now.replace(tzinfo=None) if sqlite else now}
        for i, (code, label, note) in enumerate(CANCEL_SEED)
    ])


def downgrade() -> None:
    # The cancellations stay; the reason they were recorded with goes with its kind.
    op.execute("UPDATE order_events SET reason_code_id = NULL, note = NULL WHERE reason_code_id IN "
               "(SELECT id FROM reason_codes WHERE kind = 'cancel')")
    op.execute("DELETE FROM reason_codes WHERE kind = 'cancel'")
    _kinds(KINDS_BEFORE)
