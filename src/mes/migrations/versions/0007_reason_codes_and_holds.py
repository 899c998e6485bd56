"""reason_codes (hold reasons first, seeded), holds on orders (current hold and earlier hold seconds),
hold and release events (event kind, reason code, internal note)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The hold reasons as of this revision (mes.domain.reason_codes.DEFAULT_HOLD_REASONS may grow later).
SEED = [
    ("material_shortage", "Material shortage", False),
    ("machine_down", "Machine down", False),
    ("tooling", "Tooling", False),
    ("quality_hold", "Quality hold", False),
    ("waiting_for_customer", "Waiting for the customer", False),
    ("capacity", "Capacity", False),
    ("other", "Other", True),
]


def upgrade() -> None:
    codes = op.create_table(
        "reason_codes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("label", sa.String(80), nullable=False),
        sa.Column("requires_note", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("sort_order", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reason_codes"),
        sa.UniqueConstraint("kind", "code", name=op.f("uq_reason_codes_kind_code")),
        sa.CheckConstraint("kind IN ('hold', 'late', 'defect')", name=op.f("ck_reason_codes_kind")),
    )
    now = datetime.now(timezone.utc)
    if op.get_bind().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)
    op.bulk_insert(codes, [
        {"kind": "hold", "code": code, "label": label, "requires_note": note, "active": True,
         "sort_order": (i + 1) * 10, "created_at": now}
        for i, (code, label, note) in enumerate(SEED)
    ])

    # Nullable or constant defaults: PostgreSQL adds these columns without rewriting the tables.
    op.add_column("orders", sa.Column("hold_since", sa.DateTime(timezone=True)))
    op.add_column("orders", sa.Column("hold_reason_id", sa.Integer()))
    op.add_column("orders", sa.Column("hold_seconds", sa.BigInteger(), nullable=False, server_default=sa.text("0")))
    op.add_column("order_events", sa.Column("kind", sa.String(8), nullable=False,
                                            server_default=sa.text("'status'")))
    op.add_column("order_events", sa.Column("reason_code_id", sa.Integer()))
    op.add_column("order_events", sa.Column("note", sa.Text()))
    held = sa.text("hold_since IS NOT NULL")
    op.create_index("ix_orders_on_hold_queue", "orders", ["promised_date", "priority", "id"],
                    postgresql_where=held, sqlite_where=held)
    if op.get_bind().dialect.name != "sqlite":
        # SQLite cannot add constraints to an existing table (only by copying it); the service keeps
        # these rules there, and production's PostgreSQL enforces them.
        op.create_foreign_key(op.f("fk_orders_hold_reason_id_reason_codes"), "orders", "reason_codes",
                              ["hold_reason_id"], ["id"])
        op.create_foreign_key(op.f("fk_order_events_reason_code_id_reason_codes"), "order_events",
                              "reason_codes", ["reason_code_id"], ["id"])
        op.create_check_constraint(op.f("ck_orders_hold_has_reason"), "orders",
                                   "(hold_since IS NULL) = (hold_reason_id IS NULL)")
        op.create_check_constraint(op.f("ck_orders_hold_seconds_positive"), "orders", "hold_seconds >= 0")
        op.create_check_constraint(op.f("ck_order_events_kind"), "order_events", "kind IN ('status', 'hold', 'release')")


def downgrade() -> None:
    op.drop_index("ix_orders_on_hold_queue", table_name="orders")
    with op.batch_alter_table("order_events") as batch:
        if op.get_bind().dialect.name != "sqlite":
            batch.drop_constraint("ck_order_events_kind", type_="check")
            batch.drop_constraint("fk_order_events_reason_code_id_reason_codes", type_="foreignkey")
        batch.drop_column("note")
        batch.drop_column("reason_code_id")
        batch.drop_column("kind")
    with op.batch_alter_table("orders") as batch:
        if op.get_bind().dialect.name != "sqlite":
            batch.drop_constraint("ck_orders_hold_seconds_positive", type_="check")
            batch.drop_constraint("ck_orders_hold_has_reason", type_="check")
            batch.drop_constraint("fk_orders_hold_reason_id_reason_codes", type_="foreignkey")
        batch.drop_column("hold_seconds")
        batch.drop_column("hold_reason_id")
        batch.drop_column("hold_since")
    op.drop_table("reason_codes")
