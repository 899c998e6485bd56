"""shipments: what left for an order (carrier, tracking number and link, packages, pieces, who recorded it;
several per order); who confirmed an order's delivery and when, filled for delivered orders from their events

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "shipments",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("order_id", sa.BigInteger(), sa.ForeignKey("orders.id", name=op.f("fk_shipments_order_id_orders")),
                  nullable=False),
        sa.Column("carrier", sa.String(64), nullable=False),
        sa.Column("tracking_number", sa.String(64)),
        sa.Column("tracking_url", sa.String(500)),
        sa.Column("packages", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("created_by_id", sa.Integer(),
                  sa.ForeignKey("operators.id", name=op.f("fk_shipments_created_by_id_operators")), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shipments")),
        sa.CheckConstraint("packages > 0", name=op.f("ck_shipments_packages_positive")),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_shipments_quantity_positive")),
    )
    # An order's shipments, in the order they left.
    op.create_index("ix_shipments_order_id_id", "shipments", ["order_id", "id"])

    op.add_column("orders", sa.Column("delivered_at", sa.DateTime(timezone=True)))
    op.add_column("orders", sa.Column("delivered_by", sa.String(140)))
    # Orders delivered before this revision: who and when from the event of their delivery.
    last = ("(SELECT e.{column} FROM order_events e WHERE e.order_id = orders.id AND e.kind = 'status' "
            "AND e.to_status = 'delivered' ORDER BY e.id DESC LIMIT 1)")
    op.execute(f"UPDATE orders SET delivered_at = {last.format(column='created_at')}, "
               f"delivered_by = {last.format(column='actor')} WHERE status = 'delivered'")


def downgrade() -> None:
    # A plain DROP COLUMN on both (SQLite has it since 3.35): batch mode would copy the orders table and
    # lose its expression index (ix_orders_reference_lower), which SQLAlchemy cannot reflect.
    op.execute("ALTER TABLE orders DROP COLUMN delivered_by")
    op.execute("ALTER TABLE orders DROP COLUMN delivered_at")
    op.drop_index("ix_shipments_order_id_id", table_name="shipments")
    op.drop_table("shipments")
