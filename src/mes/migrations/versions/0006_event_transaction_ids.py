"""order_events.txid: the writing transaction's id, so that the feed never hands out a position that a
later commit could still fill (mes.services.feed)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

WRITER_XID = "(pg_current_xact_id()::text)::bigint"


def upgrade() -> None:
    postgresql = op.get_context().dialect.name == "postgresql"
    # A constant default first: the column is added without rewriting the table. Rows written before
    # this have txid 0 and keep their id order, which is the order the feed gave them out in.
    op.add_column("order_events", sa.Column("txid", sa.BigInteger(), nullable=False, server_default=sa.text("0")))
    if not postgresql:
        op.create_index("ix_order_events_position", "order_events", ["txid", "id"])
        op.create_index("ix_order_events_partner_position", "order_events", ["partner_id", "txid", "id"])
        op.drop_index("ix_order_events_partner", table_name="order_events")
        return
    op.alter_column("order_events", "txid", server_default=sa.text(WRITER_XID))
    # CONCURRENTLY, so that a live database keeps taking writes while the indexes are built.
    with op.get_context().autocommit_block():
        op.create_index("ix_order_events_position", "order_events", ["txid", "id"], postgresql_concurrently=True)
        op.create_index("ix_order_events_partner_position", "order_events", ["partner_id", "txid", "id"],
                        postgresql_concurrently=True)
        op.drop_index("ix_order_events_partner", table_name="order_events", postgresql_concurrently=True)


def downgrade() -> None:
    op.create_index("ix_order_events_partner", "order_events", ["partner_id", "id"])
    op.drop_index("ix_order_events_partner_position", table_name="order_events")
    op.drop_index("ix_order_events_position", table_name="order_events")
    with op.batch_alter_table("order_events") as batch:
        batch.drop_column("txid")
