"""production records (output and rework per operator and stage), the floor's events on orders (work
started, paused, resumed, finished; claimed, released, reassigned), piece rates by product family and stage with their history; defect
codes seeded; orders found by a prefix of their reference in any case (the terminal's scan field); the
queue's urgent-first order; operators' PINs (a shared terminal); the audit log of supervisors' changes

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# The defect codes as of this revision (mes.domain.reason_codes.DEFAULT_DEFECT_CODES may grow later).
DEFECT_SEED = [
    ("burr", "Burr", False),
    ("crack", "Crack", False),
    ("dimension", "Dimension out of tolerance", False),
    ("surface", "Surface damage", False),
    ("wrong_material", "Wrong material", False),
    ("other", "Other", True),
]
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    now = datetime.now(timezone.utc)
    codes = sa.table("reason_codes", sa.column("kind"), sa.column("code"), sa.column("label"),
                     sa.column("requires_note"), sa.column("active"), sa.column("sort_order"),
                     sa.column("created_at"))
    op.bulk_insert(codes, [
        {"kind": "defect", "code": code, "label": label, "requires_note": note, "active": True,
         "sort_order": (i + 1) * 10, "created_at": now.replace(tzinfo=None) if sqlite else now}
        for i, (code, label, note) in enumerate(DEFECT_SEED)
    ])

    op.create_table(
        "production_records",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("order_id", sa.BigInteger(), sa.ForeignKey("orders.id", name=op.f("fk_production_records_order_id_orders")),
                  nullable=False),
        sa.Column("operator_id", sa.Integer(),
                  sa.ForeignKey("operators.id", name=op.f("fk_production_records_operator_id_operators")), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("good", sa.Integer(), nullable=False),
        sa.Column("scrap", sa.Integer(), nullable=False),
        sa.Column("defect_code_id", sa.Integer(),
                  sa.ForeignKey("reason_codes.id", name=op.f("fk_production_records_defect_code_id_reason_codes"))),
        sa.Column("worked_seconds", sa.Integer(), nullable=False),
        sa.Column("note", sa.Text()),
        sa.Column("reworks_id", sa.BigInteger(),
                  sa.ForeignKey("production_records.id", name=op.f("fk_production_records_reworks_id_production_records"))),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_production_records")),
        sa.CheckConstraint("kind IN ('output', 'rework')", name=op.f("ck_production_records_kind")),
        sa.CheckConstraint("good >= 0 AND scrap >= 0 AND good + scrap > 0", name=op.f("ck_production_records_counts")),
        sa.CheckConstraint("worked_seconds >= 0", name=op.f("ck_production_records_worked_seconds")),
        sa.CheckConstraint("scrap = 0 OR defect_code_id IS NOT NULL", name=op.f("ck_production_records_scrap_has_defect")),
        sa.CheckConstraint("(kind = 'rework') = (reworks_id IS NOT NULL)", name=op.f("ck_production_records_rework_link")),
    )
    # An order's records; an operator's records by time (the ledger: a day, a pay period).
    op.create_index("ix_production_records_order_id_id", "production_records", ["order_id", "id"])
    op.create_index("ix_production_records_operator_id_created_at", "production_records",
                    ["operator_id", "created_at"])
    op.create_index("ix_production_records_created_at", "production_records", ["created_at"])

    op.create_table(
        "floor_events",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("order_id", sa.BigInteger(), sa.ForeignKey("orders.id", name=op.f("fk_floor_events_order_id_orders")),
                  nullable=False),
        sa.Column("operator_id", sa.Integer(),
                  sa.ForeignKey("operators.id", name=op.f("fk_floor_events_operator_id_operators")), nullable=False),
        sa.Column("by_id", sa.Integer(), sa.ForeignKey("operators.id", name=op.f("fk_floor_events_by_id_operators"))),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_floor_events")),
        sa.CheckConstraint("action IN ('start', 'pause', 'resume', 'finish', 'claim', 'release', 'reassign')",
                           name=op.f("ck_floor_events_action")),
    )
    op.create_index("ix_floor_events_order_id_operator_id_id", "floor_events", ["order_id", "operator_id", "id"])
    op.create_index("ix_floor_events_operator_id_id", "floor_events", ["operator_id", "id"])

    # lower(reference) LIKE 'abc%': text_pattern_ops serves LIKE prefixes whatever the collation.
    if sqlite:
        op.execute("CREATE INDEX ix_orders_reference_lower ON orders (lower(reference))")
    else:
        op.execute("CREATE INDEX ix_orders_reference_lower ON orders (lower(reference) text_pattern_ops)")

    open_ = sa.text("status IN ('received', 'queued', 'in_production', 'quality_check', 'packed')")
    op.create_index("ix_orders_urgent_queue", "orders", ["priority", "promised_date", "id"],
                    postgresql_where=open_, sqlite_where=open_)

    op.add_column("operators", sa.Column("pin_hash", sa.String(256)))
    op.create_table(
        "audit_log",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("actor_id", sa.Integer(), sa.ForeignKey("operators.id", name=op.f("fk_audit_log_actor_id_operators"))),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(140), nullable=False),
        sa.Column("detail", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_created_at", "audit_log", ["created_at"])

    op.create_table(
        "piece_rates",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("family", sa.String(32), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("per_piece", sa.Numeric(12, 4), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("set_by_id", sa.Integer(), sa.ForeignKey("operators.id", name=op.f("fk_piece_rates_set_by_id_operators"))),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_piece_rates")),
        sa.UniqueConstraint("family", "stage", "valid_from", name=op.f("uq_piece_rates_family_stage_valid_from")),
        sa.CheckConstraint("per_piece >= 0", name=op.f("ck_piece_rates_per_piece")),
    )


def downgrade() -> None:
    op.drop_table("piece_rates")
    op.drop_index("ix_audit_log_created_at", table_name="audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("operators") as batch:
        batch.drop_column("pin_hash")
    op.drop_index("ix_orders_reference_lower", table_name="orders")
    op.drop_index("ix_orders_urgent_queue", table_name="orders")
    op.drop_index("ix_floor_events_operator_id_id", table_name="floor_events")
    op.drop_index("ix_floor_events_order_id_operator_id_id", table_name="floor_events")
    op.drop_table("floor_events")
    op.drop_index("ix_production_records_created_at", table_name="production_records")
    op.drop_index("ix_production_records_operator_id_created_at", table_name="production_records")
    op.drop_index("ix_production_records_order_id_id", table_name="production_records")
    op.drop_table("production_records")
    op.execute("DELETE FROM reason_codes WHERE kind = 'defect'")
