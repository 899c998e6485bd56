"""operators.session_generation: logout, deactivation and a new password end every session at once

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table or blocking writes for long.
    op.add_column("operators", sa.Column("session_generation", sa.Integer(), nullable=False,
                                         server_default=sa.text("1")))


def downgrade() -> None:
    with op.batch_alter_table("operators") as batch:
        batch.drop_column("session_generation")
