"""webhooks: partners' endpoints, the outbox of events, one delivery per event and endpoint, and each
delivery's attempts

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("partner_id", sa.Integer(),
                  sa.ForeignKey("partners.id", name=op.f("fk_webhook_endpoints_partner_id_partners"))),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("event_types", sa.Text(), nullable=False),
        sa.Column("description", sa.String(200)),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("previous_secret", sa.String(100)),
        sa.Column("previous_secret_until", When),
        sa.Column("failing_since", When),
        sa.Column("created_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index("ix_webhook_endpoints_partner_id", "webhook_endpoints", ["partner_id"])
    op.create_table(
        "webhook_events",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("msg_id", sa.String(40), nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("partner_id", sa.Integer()),
        sa.Column("order_id", sa.BigInteger()),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_webhook_events_msg_id")),
    )
    op.create_index("ix_webhook_events_created", "webhook_events", ["created_at"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("event_id", sa.BigInteger(),
                  sa.ForeignKey("webhook_events.id", name=op.f("fk_webhook_deliveries_event_id_webhook_events")),
                  nullable=False),
        sa.Column("endpoint_id", sa.Integer(),
                  sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE",
                                name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints")), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", When),
        sa.Column("claim", sa.String(40)),
        sa.Column("replay", sa.Boolean(), nullable=False),
        sa.Column("last_status_code", sa.SmallInteger()),
        sa.Column("delivered_at", When),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name=op.f("ck_webhook_deliveries_state")),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["next_attempt_at"],
                    postgresql_where=sa.text("state = 'pending'"), sqlite_where=sa.text("state = 'pending'"))
    op.create_index("ix_webhook_deliveries_endpoint", "webhook_deliveries", ["endpoint_id", "id"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("delivery_id", sa.BigInteger(),
                  sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE",
                                name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries")), nullable=False),
        sa.Column("attempted_at", When, nullable=False),
        sa.Column("status_code", sa.SmallInteger()),
        sa.Column("latency_ms", sa.Integer()),
        sa.Column("error", sa.String(500)),
        sa.Column("response_excerpt", sa.Text()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index("ix_webhook_attempts_delivery", "webhook_attempts", ["delivery_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_attempts_delivery", table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_deliveries_endpoint", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_webhook_events_created", table_name="webhook_events")
    op.drop_table("webhook_events")
    op.drop_index("ix_webhook_endpoints_partner_id", table_name="webhook_endpoints")
    op.drop_table("webhook_endpoints")
