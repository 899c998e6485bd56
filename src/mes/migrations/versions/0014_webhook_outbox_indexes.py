"""indexes for the outbox's pruning and range replays: a delivery by its event, an event by partner and time

Revision ID: 0014
Revises: 0012
Create Date: 2026-11-30
"""
from alembic import op

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None

INDEXES = (
    # Pruning asks per old event whether a delivery is pending, and deletes deliveries by event; every
    # event deleted is also checked against the deliveries' foreign key. Without it each is a scan.
    ("ix_webhook_deliveries_event", "webhook_deliveries", ["event_id"]),
    # A range replay reads one partner's events of a time range.
    ("ix_webhook_events_partner_created", "webhook_events", ["partner_id", "created_at"]),
)


def upgrade() -> None:
    # CONCURRENTLY on PostgreSQL, so that adding them to a live database does not block writes.
    if op.get_context().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            for name, table, columns in INDEXES:
                op.create_index(name, table, columns, postgresql_concurrently=True)
    else:
        for name, table, columns in INDEXES:
            op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
