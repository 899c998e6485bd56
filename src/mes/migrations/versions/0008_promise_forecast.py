"""the promise: each order's stage entry, hold seconds at that entry, ship time, projected finish and
promise status and the recorded cause of its lateness; promise changes as events (with the estimate); learned stage norms and stage throughput;
the periodic jobs' leases (mes.scheduler), backtests of the forecasts; late reasons seeded

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The late reasons as of this revision (mes.domain.reason_codes.DEFAULT_LATE_REASONS may grow later).
LATE_SEED = [
    ("material_shortage", "Material shortage", False),
    ("machine_down", "Machine down", False),
    ("tooling", "Tooling", False),
    ("quality_hold", "Quality hold", False),
    ("waiting_for_customer", "Waiting for the customer", False),
    ("capacity", "Capacity", False),
    ("late_upstream", "Late upstream", False),
    ("other", "Other", True),
]
OPEN = "status IN ('received', 'queued', 'in_production', 'quality_check', 'packed')"


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    now = datetime.now(timezone.utc)
    codes = sa.table("reason_codes", sa.column("kind"), sa.column("code"), sa.column("label"),
                     sa.column("requires_note"), sa.column("active"), sa.column("sort_order"),
                     sa.column("created_at"))
    op.bulk_insert(codes, [
        {"kind": "late", "code": code, "label": label, "requires_note": note, "active": True,
         "sort_order": (i + 1) * 10, "created_at": now.replace(tzinfo=None) if sqlite else now}
        for i, (code, label, note) in enumerate(LATE_SEED)
    ])

    op.add_column("orders", sa.Column("stage_entered_at", sa.DateTime(timezone=True)))
    op.add_column("orders", sa.Column("stage_hold_base", sa.BigInteger(), nullable=False,
                                      server_default=sa.text("0")))
    op.add_column("orders", sa.Column("shipped_at", sa.DateTime(timezone=True)))
    op.add_column("orders", sa.Column("projected_finish", sa.DateTime(timezone=True)))
    op.add_column("orders", sa.Column("promise_status", sa.String(8)))
    op.add_column("orders", sa.Column("late_reason_id", sa.Integer()))
    # Where each order entered its status, and when it shipped, from its events (one pass each).
    op.execute("UPDATE orders SET stage_entered_at = (SELECT max(e.created_at) FROM order_events e "
               "WHERE e.order_id = orders.id AND e.kind = 'status'), stage_hold_base = hold_seconds")
    op.execute("UPDATE orders SET stage_entered_at = created_at WHERE stage_entered_at IS NULL")
    op.execute("UPDATE orders SET shipped_at = (SELECT min(e.created_at) FROM order_events e "
               "WHERE e.order_id = orders.id AND e.to_status = 'shipped' AND e.kind = 'status') "
               "WHERE status IN ('shipped', 'delivered')")
    # A shipped order's promise was met or missed; open orders get theirs from `mes recompute-promises`.
    ship_day = "date(shipped_at)" if sqlite else "CAST(shipped_at AT TIME ZONE 'UTC' AS date)"
    op.execute(f"UPDATE orders SET promise_status = CASE WHEN {ship_day} <= promised_date THEN 'met' "
               "ELSE 'missed' END WHERE shipped_at IS NOT NULL")
    open_ = sa.text(OPEN)
    op.create_index("ix_orders_stage_entered", "orders", ["status", "stage_entered_at"],
                    postgresql_where=open_, sqlite_where=open_)
    op.create_index("ix_orders_promise_queue", "orders", ["promise_status", "promised_date", "priority", "id"],
                    postgresql_where=open_, sqlite_where=open_)
    op.create_index("ix_orders_projected_queue", "orders", ["projected_finish", "id"],
                    postgresql_where=open_, sqlite_where=open_)
    op.create_index("ix_orders_shipped_at", "orders", ["shipped_at"])

    op.add_column("order_events", sa.Column("from_promise", sa.String(8)))
    op.add_column("order_events", sa.Column("to_promise", sa.String(8)))
    op.add_column("order_events", sa.Column("estimated_completion", sa.DateTime(timezone=True)))
    op.create_index("ix_order_events_created", "order_events", ["created_at"])

    op.create_table(
        "stage_norms",
        sa.Column("family", sa.String(32), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("p50_seconds", sa.BigInteger(), nullable=False),
        sa.Column("p85_seconds", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("family", "stage", name="pk_stage_norms"),
    )
    op.create_table(
        "stage_flow",
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("exits_per_day", sa.Float(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("stage", name="pk_stage_flow"),
    )
    op.create_table(
        "forecast_checks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_days", sa.Integer(), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("projections", sa.Integer(), nullable=False),
        sa.Column("mean_abs_error_days", sa.Float()),
        sa.Column("missed", sa.Integer(), nullable=False),
        sa.Column("flagged_in_time", sa.Integer(), nullable=False),
        sa.Column("median_warning_days", sa.Float()),
        sa.Column("false_alarm_share", sa.Float()),
        sa.PrimaryKeyConstraint("id", name="pk_forecast_checks"),
    )
    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("holder", sa.String(200)),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("last_ok", sa.Boolean()),
        sa.Column("last_result", sa.String(500)),
        sa.PrimaryKeyConstraint("name", name="pk_job_leases"),
    )
    if not sqlite:
        op.alter_column("orders", "stage_entered_at", nullable=False)
        op.drop_constraint(op.f("ck_order_events_kind"), "order_events", type_="check")
        op.create_check_constraint(op.f("ck_order_events_kind"), "order_events",
                                   "kind IN ('status', 'hold', 'release', 'promise')")
        op.create_foreign_key(op.f("fk_orders_late_reason_id_reason_codes"), "orders", "reason_codes",
                              ["late_reason_id"], ["id"])
        promise = "promise_status IN ('on_track', 'at_risk', 'late', 'met', 'missed')"
        op.create_check_constraint(op.f("ck_orders_promise_status"), "orders", promise)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f("ck_orders_promise_status"), "orders", type_="check")
        op.drop_constraint(op.f("fk_orders_late_reason_id_reason_codes"), "orders", type_="foreignkey")
        op.execute("DELETE FROM order_events WHERE kind = 'promise'")
        op.drop_constraint(op.f("ck_order_events_kind"), "order_events", type_="check")
        op.create_check_constraint(op.f("ck_order_events_kind"), "order_events",
                                   "kind IN ('status', 'hold', 'release')")
    op.drop_table("job_leases")
    op.drop_table("forecast_checks")
    op.drop_table("stage_flow")
    op.drop_table("stage_norms")
    op.drop_index("ix_order_events_created", table_name="order_events")
    with op.batch_alter_table("order_events") as batch:
        batch.drop_column("estimated_completion")
        batch.drop_column("to_promise")
        batch.drop_column("from_promise")
    for index in ("ix_orders_shipped_at", "ix_orders_projected_queue", "ix_orders_promise_queue",
                  "ix_orders_stage_entered"):
        op.drop_index(index, table_name="orders")
    with op.batch_alter_table("orders") as batch:
        for column in ("late_reason_id", "promise_status", "projected_finish", "shipped_at", "stage_hold_base", "stage_entered_at"):
            batch.drop_column(column)
    op.execute("DELETE FROM reason_codes WHERE kind = 'late'")
