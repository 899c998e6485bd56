"""crm publication: the heartbeat table, and on PostgreSQL the publication `crm` that the CRM's database
subscribes to, with explicit column lists (mes.crm_contract says what they mean)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# The column lists as of this revision (mes.crm_contract may grow later, with a migration of its own).
# Explicit lists: a column added to the MES later stays out until the CRM has it (the apply worker stops on
# a column it does not know), and no column that is not listed (notes, actors, keys) ever leaves.
PUBLISHED = {
    "partners": ("id", "name"),
    "orders": ("id", "partner_id", "reference", "product", "quantity", "status", "status_version",
               "promise_status", "projected_finish", "promised_date", "created_at", "updated_at", "shipped_at"),
    "order_events": ("id", "order_id", "partner_id", "kind", "from_status", "to_status", "status_version",
                     "from_promise", "to_promise", "estimated_completion", "created_at", "txid"),
    "crm_heartbeat": ("id", "beat_at"),
}


def upgrade() -> None:
    op.create_table(
        "crm_heartbeat",
        sa.Column("id", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_heartbeat")),
        sa.CheckConstraint("id = 1", name=op.f("ck_crm_heartbeat_one_row")),
    )
    op.execute("INSERT INTO crm_heartbeat (id, beat_at) VALUES (1, CURRENT_TIMESTAMP)")
    if op.get_bind().dialect.name == "postgresql":  # SQLite has no replication: nothing to publish
        tables = ", ".join(f"{table} ({', '.join(columns)})" for table, columns in PUBLISHED.items())
        op.execute(f"CREATE PUBLICATION crm FOR TABLE {tables}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP PUBLICATION IF EXISTS crm")
    op.drop_table("crm_heartbeat")
