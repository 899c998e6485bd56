"""orders, events, clients, operators: the first schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 05:58:26.363530
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('operators',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('login', sa.String(length=64), nullable=False),
    sa.Column('display_name', sa.String(length=120), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("role IN ('operator', 'supervisor')", name=op.f('ck_operators_role')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_operators')),
    sa.UniqueConstraint('login', name=op.f('uq_operators_login'))
    )
    op.create_table('partners',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=120), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_partners')),
    sa.UniqueConstraint('name', name=op.f('uq_partners_name'))
    )
    op.create_table('status_counts',
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('status', name=op.f('pk_status_counts'))
    )
    op.create_table('api_clients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=120), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('partner_id', sa.Integer(), nullable=True),
    sa.Column('rate_tier', sa.String(length=32), nullable=False),
    sa.Column('key_prefix', sa.String(length=16), nullable=True),
    sa.Column('key_hash', sa.String(length=64), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("(scope = 'partner') = (partner_id IS NOT NULL)", name=op.f('ck_api_clients_partner_scope_has_partner')),
    sa.CheckConstraint("scope IN ('partner', 'crm')", name=op.f('ck_api_clients_scope')),
    sa.ForeignKeyConstraint(['partner_id'], ['partners.id'], name=op.f('fk_api_clients_partner_id_partners')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_clients')),
    sa.UniqueConstraint('key_prefix', name=op.f('uq_api_clients_key_prefix')),
    sa.UniqueConstraint('name', name=op.f('uq_api_clients_name'))
    )
    op.create_table('orders',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('partner_id', sa.Integer(), nullable=False),
    sa.Column('reference', sa.String(length=64), nullable=False),
    sa.Column('product', sa.String(length=64), nullable=False),
    sa.Column('material', sa.String(length=64), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('priority', sa.SmallInteger(), nullable=False),
    sa.Column('promised_date', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_version', sa.Integer(), nullable=False),
    sa.Column('holder_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('priority BETWEEN 0 AND 3', name=op.f('ck_orders_priority_range')),
    sa.CheckConstraint('quantity > 0', name=op.f('ck_orders_quantity_positive')),
    sa.CheckConstraint('status_version > 0', name=op.f('ck_orders_version_positive')),
    sa.ForeignKeyConstraint(['holder_id'], ['operators.id'], name=op.f('fk_orders_holder_id_operators')),
    sa.ForeignKeyConstraint(['partner_id'], ['partners.id'], name=op.f('fk_orders_partner_id_partners')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('partner_id', 'reference', name=op.f('uq_orders_partner_id_reference'))
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_holder_status', ['holder_id', 'status'], unique=False)
        batch_op.create_index('ix_orders_open_queue', ['promised_date', 'priority', 'id'], unique=False, postgresql_where=sa.text("status IN ('received', 'queued', 'in_production', 'quality_check', 'packed')"), sqlite_where=sa.text("status IN ('received', 'queued', 'in_production', 'quality_check', 'packed')"))
        batch_op.create_index('ix_orders_partner_updated', ['partner_id', 'updated_at', 'id'], unique=False)
        batch_op.create_index('ix_orders_promised_queue', ['promised_date', 'priority', 'id'], unique=False)
        batch_op.create_index('ix_orders_reference', ['reference'], unique=False)
        batch_op.create_index('ix_orders_status_queue', ['status', 'promised_date', 'priority', 'id'], unique=False)
        batch_op.create_index('ix_orders_status_updated', ['status', 'updated_at', 'id'], unique=False)
        batch_op.create_index('ix_orders_updated', ['updated_at', 'id'], unique=False)

    op.create_table('idempotency_keys',
    sa.Column('client_id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('response_status', sa.SmallInteger(), nullable=True),
    sa.Column('response_body', sa.Text(), nullable=True),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['client_id'], ['api_clients.id'], name=op.f('fk_idempotency_keys_client_id_api_clients')),
    sa.PrimaryKeyConstraint('client_id', 'key', name=op.f('pk_idempotency_keys'))
    )
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_keys_created_at'), ['created_at'], unique=False)

    op.create_table('order_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('partner_id', sa.Integer(), nullable=False),
    sa.Column('from_status', sa.String(length=16), nullable=True),
    sa.Column('to_status', sa.String(length=16), nullable=False),
    sa.Column('status_version', sa.Integer(), nullable=False),
    sa.Column('actor', sa.String(length=140), nullable=False),
    sa.Column('operator_id', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_order_events_order_id_orders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_order_events'))
    )
    with op.batch_alter_table('order_events', schema=None) as batch_op:
        batch_op.create_index('ix_order_events_operator_day', ['operator_id', 'created_at'], unique=False)
        batch_op.create_index('ix_order_events_order', ['order_id', 'id'], unique=False)
        batch_op.create_index('ix_order_events_partner', ['partner_id', 'id'], unique=False)

    # One counter row per status, so that changes only ever UPDATE them.
    statuses = ["received", "queued", "in_production", "quality_check", "packed", "shipped", "delivered", "cancelled"]
    counts = sa.table("status_counts", sa.column("status", sa.String), sa.column("count", sa.BigInteger))
    op.bulk_insert(counts, [{"status": s, "count": 0} for s in statuses])



def downgrade() -> None:
    with op.batch_alter_table('order_events', schema=None) as batch_op:
        batch_op.drop_index('ix_order_events_partner')
        batch_op.drop_index('ix_order_events_order')
        batch_op.drop_index('ix_order_events_operator_day')

    op.drop_table('order_events')
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_keys_created_at'))

    op.drop_table('idempotency_keys')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_updated')
        batch_op.drop_index('ix_orders_status_updated')
        batch_op.drop_index('ix_orders_status_queue')
        batch_op.drop_index('ix_orders_reference')
        batch_op.drop_index('ix_orders_promised_queue')
        batch_op.drop_index('ix_orders_partner_updated')
        batch_op.drop_index('ix_orders_open_queue', postgresql_where=sa.text("status IN ('received', 'queued', 'in_production', 'quality_check', 'packed')"), sqlite_where=sa.text("status IN ('received', 'queued', 'in_production', 'quality_check', 'packed')"))
        batch_op.drop_index('ix_orders_holder_status')

    op.drop_table('orders')
    op.drop_table('api_clients')
    op.drop_table('status_counts')
    op.drop_table('partners')
    op.drop_table('operators')
