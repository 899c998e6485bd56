"""stale_status: status writes the Redis cache may not have, kept in the database so that any process
settles them when Redis answers again (a worker's memory does not survive a reload)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stale_status",
        sa.Column("order_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("order_id", "status_version", name="pk_stale_status"),
    )


def downgrade() -> None:
    op.drop_table("stale_status")
