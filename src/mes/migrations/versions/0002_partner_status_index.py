"""index for a partner's orders filtered by status (GET /orders?status=...)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # CONCURRENTLY on PostgreSQL, so that adding it to a live database does not block writes.
    if op.get_context().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index("ix_orders_partner_status_updated", "orders",
                            ["partner_id", "status", "updated_at", "id"], postgresql_concurrently=True)
    else:
        op.create_index("ix_orders_partner_status_updated", "orders", ["partner_id", "status", "updated_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_orders_partner_status_updated", table_name="orders")
