"""Tables of the order service (SQLAlchemy 2.x); Alembic migrations create them."""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

from sqlalchemy import (
    BigInteger, Boolean, CheckConstraint, Date, DateTime, FetchedValue, Float, ForeignKey, Index, Integer, MetaData,
    Numeric, SmallInteger, String, Text, TypeDecorator, UniqueConstraint, text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .domain.lifecycle import OPEN_STATUSES, Status

# BIGINT on PostgreSQL, but INTEGER on SQLite so that it stays the rowid alias (autoincrement).
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(ts: datetime) -> str:
    """RFC 3339 in UTC with a Z, as the API shows timestamps."""
    return ts.isoformat().replace("+00:00", "Z")


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both backends (SQLite keeps no zone, so we store UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Partner(Base):
    __tablename__ = "partners"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiClient(Base):
    """A key holder: a partner's integration, or the CRM (scope `crm`, no partner)."""

    __tablename__ = "api_clients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    partner_id: Mapped[int | None] = mapped_column(ForeignKey("partners.id"))
    rate_tier: Mapped[str] = mapped_column(String(32), default="standard")
    # The key is shown once; we keep its public prefix (to find the row) and a hash.
    key_prefix: Mapped[str | None] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    partner: Mapped[Partner | None] = relationship()
    __table_args__ = (
        CheckConstraint("scope IN ('partner', 'crm')", name="scope"),
        CheckConstraint("(scope = 'partner') = (partner_id IS NOT NULL)", name="partner_scope_has_partner"),
    )


class Operator(Base):
    __tablename__ = "operators"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(120))
    password_hash: Mapped[str] = mapped_column(String(256))
    # A short secret for the shared terminal, beside the password (mes.services.accounts); none: password only.
    pin_hash: Mapped[str | None] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16), default="operator")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Sessions name the generation they were issued under; moving it on ends them all (mes.domain.sessions).
    session_generation: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    __table_args__ = (CheckConstraint("role IN ('operator', 'supervisor')", name="role"),)


class ReasonCode(Base):
    """A reason an operator can pick (kinds: mes.domain.reason_codes.Kind). Retired codes stay on the
    events that used them and can no longer be chosen; codes are never deleted."""

    __tablename__ = "reason_codes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    code: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(80))  # what operators pick and partners read
    requires_note: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    sort_order: Mapped[int] = mapped_column(Integer, default=100)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    __table_args__ = (
        UniqueConstraint("kind", "code"),
        CheckConstraint("kind IN ('hold', 'late', 'defect', 'cancel')", name="kind"),
    )


_open = ", ".join(f"'{s.value}'" for s in OPEN_STATUSES)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"))
    reference: Mapped[str] = mapped_column(String(64))
    product: Mapped[str] = mapped_column(String(64))
    material: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)
    notes: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(SmallInteger, default=2)
    promised_date: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), default=Status.RECEIVED.value)
    status_version: Mapped[int] = mapped_column(Integer, default=1)
    holder_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    # The current hold (none when hold_since is null) and the seconds of every earlier one (mes.domain.holds).
    hold_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    hold_reason_id: Mapped[int | None] = mapped_column(ForeignKey("reason_codes.id"))
    hold_seconds: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    # The promise (mes.domain.forecast): when the order entered its status and its hold seconds then (so
    # that time worked in the stage is one subtraction), when it shipped, and the latest projection.
    stage_entered_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    stage_hold_base: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    shipped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    projected_finish: Mapped[datetime | None] = mapped_column(UTCDateTime())
    promise_status: Mapped[str | None] = mapped_column(String(8))
    # Why the order is (or was) at risk or late, asked of the floor once per at-risk spell (mes.domain.forecast).
    late_reason_id: Mapped[int | None] = mapped_column(ForeignKey("reason_codes.id"))
    # Who confirmed the delivery (an actor label: the partner's key or an operator) and when.
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_by: Mapped[str | None] = mapped_column(String(140))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    partner: Mapped[Partner] = relationship(lazy="joined")
    # Loaded with the order in one more query per batch of orders (the API embeds them).
    shipments: Mapped[list[Shipment]] = relationship(lazy="selectin", order_by="Shipment.id",
                                                     back_populates="order")
    holder: Mapped[Operator | None] = relationship()
    # Joined with the order, so that a page of held orders shows its reasons without a query per row.
    hold_reason: Mapped[ReasonCode | None] = relationship(lazy="joined", foreign_keys=[hold_reason_id])
    late_reason: Mapped[ReasonCode | None] = relationship(foreign_keys=[late_reason_id])
    __table_args__ = (
        UniqueConstraint("partner_id", "reference"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("priority BETWEEN 0 AND 3", name="priority_range"),
        CheckConstraint("status_version > 0", name="version_positive"),
        # The operator queue: open orders by promised date, then priority (keyset pages).
        Index("ix_orders_open_queue", "promised_date", "priority", "id",
              postgresql_where=text(f"status IN ({_open})"), sqlite_where=text(f"status IN ({_open})")),
        # Urgent first (the queue's other sort).
        Index("ix_orders_urgent_queue", "priority", "promised_date", "id",
              postgresql_where=text(f"status IN ({_open})"), sqlite_where=text(f"status IN ({_open})")),
        Index("ix_orders_status_queue", "status", "promised_date", "priority", "id"),
        Index("ix_orders_promised_queue", "promised_date", "priority", "id"),
        # The API's listings: by last change, per partner and for the CRM.
        Index("ix_orders_partner_updated", "partner_id", "updated_at", "id"),
        Index("ix_orders_partner_status_updated", "partner_id", "status", "updated_at", "id"),
        Index("ix_orders_updated", "updated_at", "id"),
        Index("ix_orders_status_updated", "status", "updated_at", "id"),
        Index("ix_orders_reference", "reference"),
        Index("ix_orders_holder_status", "holder_id", "status"),
        # The queue's "on hold" filter: held orders are few, so their own small index in queue order.
        Index("ix_orders_on_hold_queue", "promised_date", "priority", "id",
              postgresql_where=text("hold_since IS NOT NULL"), sqlite_where=text("hold_since IS NOT NULL")),
        CheckConstraint("(hold_since IS NULL) = (hold_reason_id IS NULL)", name="hold_has_reason"),
        CheckConstraint("hold_seconds >= 0", name="hold_seconds_positive"),
        # The oldest order per stage, the "at risk" filter in queue order, and shipments by day.
        Index("ix_orders_stage_entered", "status", "stage_entered_at",
              postgresql_where=text(f"status IN ({_open})"), sqlite_where=text(f"status IN ({_open})")),
        Index("ix_orders_promise_queue", "promise_status", "promised_date", "priority", "id",
              postgresql_where=text(f"status IN ({_open})"), sqlite_where=text(f"status IN ({_open})")),
        Index("ix_orders_projected_queue", "projected_finish", "id",
              postgresql_where=text(f"status IN ({_open})"), sqlite_where=text(f"status IN ({_open})")),
        Index("ix_orders_shipped_at", "shipped_at"),
        CheckConstraint("promise_status IN ('on_track', 'at_risk', 'late', 'met', 'missed')", name="promise_status"),
    )


class OrderEvent(Base):
    """One status change (or the creation), hold, release or change of promise; the feed reads these.

    A hold or release keeps the status (from = to) and names its reason code; `note` is the operator's
    internal note, shown on the floor and never to partners. Every event carries the order's promise
    status before and after it and the estimate after it; a `promise` event is a change of promise
    status alone (time passed, or the norms moved)."""

    __tablename__ = "order_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    partner_id: Mapped[int] = mapped_column(Integer)  # copied so that a partner's feed is one index scan
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    status_version: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(140))
    operator_id: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(8), default="status", server_default=text("'status'"))
    reason_code_id: Mapped[int | None] = mapped_column(ForeignKey("reason_codes.id"))
    note: Mapped[str | None] = mapped_column(Text)
    from_promise: Mapped[str | None] = mapped_column(String(8))
    to_promise: Mapped[str | None] = mapped_column(String(8))
    estimated_completion: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The id of the transaction that wrote the event, set by the database (PostgreSQL; 0 on SQLite):
    # with `id` it is the event's position in the feed (mes.services.feed).
    txid: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue())
    reason_code: Mapped[ReasonCode | None] = relationship(lazy="joined")
    __table_args__ = (
        CheckConstraint("kind IN ('status', 'hold', 'release', 'promise')", name="kind"),
        Index("ix_order_events_order", "order_id", "id"),
        Index("ix_order_events_position", "txid", "id"),
        Index("ix_order_events_partner_position", "partner_id", "txid", "id"),
        Index("ix_order_events_operator_day", "operator_id", "created_at"),
        Index("ix_order_events_created", "created_at"),  # the norms' and the board's recent window
    )


class StageNorm(Base):
    """How long a stage usually takes (working time, holds left out), learned from recent shipped orders
    per product family, and overall under family "" (mes.services.forecast recomputes them)."""

    __tablename__ = "stage_norms"
    family: Mapped[str] = mapped_column(String(32), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    p50_seconds: Mapped[int] = mapped_column(BigInteger)
    p85_seconds: Mapped[int] = mapped_column(BigInteger)
    samples: Mapped[int] = mapped_column(Integer)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StageFlow(Base):
    """Orders leaving each stage per day over the recent window: with the work in progress it says how
    long the queue at a stage takes to drain (mes.domain.forecast)."""

    __tablename__ = "stage_flow"
    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    exits_per_day: Mapped[float] = mapped_column(Float)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ForecastCheck(Base):
    """One backtest of the projections over the order history (mes.domain.backtest); the board shows
    the latest."""

    __tablename__ = "forecast_checks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    window_days: Mapped[int] = mapped_column(Integer)
    orders: Mapped[int] = mapped_column(Integer)
    projections: Mapped[int] = mapped_column(Integer)
    mean_abs_error_days: Mapped[float | None] = mapped_column(Float)
    missed: Mapped[int] = mapped_column(Integer)
    flagged_in_time: Mapped[int] = mapped_column(Integer)
    median_warning_days: Mapped[float | None] = mapped_column(Float)
    false_alarm_share: Mapped[float | None] = mapped_column(Float)


class JobLease(Base):
    """One periodic job (mes.scheduler): when it is due next, and who ran it last with what result."""

    __tablename__ = "job_leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_run_at: Mapped[datetime] = mapped_column(UTCDateTime())
    holder: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_ok: Mapped[bool | None] = mapped_column(Boolean)
    last_result: Mapped[str | None] = mapped_column(String(500))


class CrmHeartbeat(Base):
    """One row the scheduler rewrites every few seconds; published to the CRM's database (mes.crm_contract),
    where now() minus it is how far behind the copy is."""

    __tablename__ = "crm_heartbeat"
    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    beat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)


class StatusCount(Base):
    """Orders per status, kept in step with every change, so the queue never counts the table."""

    __tablename__ = "status_counts"
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class IdempotencyRecord(Base):
    """The first answer to a client's Idempotency-Key, replayed for retries."""

    __tablename__ = "idempotency_keys"
    client_id: Mapped[int] = mapped_column(ForeignKey("api_clients.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int | None] = mapped_column(SmallInteger)
    response_body: Mapped[str | None] = mapped_column(Text)
    order_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class StaleStatus(Base):
    """A status write the Redis cache may not have: written in the write's own transaction, removed once
    the cache has that version (mes.stale_status). A row that outlives its write means the cache entry
    of that order must be rewritten from the primary before the cache is trusted again."""

    __tablename__ = "stale_status"
    order_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    status_version: Mapped[int] = mapped_column(Integer, primary_key=True)


class ProductionRecord(Base):
    """What one operator made of an order in one stage (mes.domain.production): good and scrapped
    pieces, the defect of the scrap, the time worked since their previous record on the order, a note
    for the floor. A rework is a quality check sending `good` pieces of the record `reworks_id` back."""

    __tablename__ = "production_records"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id"))
    kind: Mapped[str] = mapped_column(String(8))
    stage: Mapped[str] = mapped_column(String(16))
    good: Mapped[int] = mapped_column(Integer)
    scrap: Mapped[int] = mapped_column(Integer)
    defect_code_id: Mapped[int | None] = mapped_column(ForeignKey("reason_codes.id"))
    worked_seconds: Mapped[int] = mapped_column(Integer, default=0)
    note: Mapped[str | None] = mapped_column(Text)
    reworks_id: Mapped[int | None] = mapped_column(ForeignKey("production_records.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    operator: Mapped[Operator] = relationship(lazy="joined")
    defect_code: Mapped[ReasonCode | None] = relationship(lazy="joined")


class FloorEvent(Base):
    """What happened to an order on the shop floor that partners never see: an operator starting,
    pausing, resuming or finishing their work on it (`operator_id` did it), or the order claimed,
    released or reassigned (`operator_id` is the holder concerned, `by_id` who did it: none when a partner's
    cancel released it)."""

    __tablename__ = "floor_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id"))
    by_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    action: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    operator: Mapped[Operator] = relationship(foreign_keys=[operator_id], lazy="joined")
    by: Mapped[Operator | None] = relationship(foreign_keys=[by_id], lazy="joined")


class PieceRate(Base):
    """The pay for one good piece of a product family in a stage, from `valid_from` until the next rate
    of the same family and stage. Rates are never changed or deleted: a new one is added."""

    __tablename__ = "piece_rates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    family: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str] = mapped_column(String(16))
    per_piece: Mapped[Decimal] = mapped_column(Numeric(12, 4))
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime())
    set_by_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEntry(Base):
    """A supervisor's change to people, rates or codes: who, what, on whom or what, when."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    action: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(140))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[Operator | None] = relationship(lazy="joined")


class Shipment(Base):
    """What left the factory for an order in one consignment (mes.domain.shipments): the carrier, its
    tracking number and link, how many packages and pieces, and the operator who recorded it."""

    __tablename__ = "shipments"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    carrier: Mapped[str] = mapped_column(String(64))
    tracking_number: Mapped[str | None] = mapped_column(String(64))
    tracking_url: Mapped[str | None] = mapped_column(String(500))
    packages: Mapped[int] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(Integer)
    created_by_id: Mapped[int] = mapped_column(ForeignKey("operators.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    order: Mapped[Order] = relationship(back_populates="shipments")
    created_by: Mapped[Operator] = relationship(lazy="joined")
    __table_args__ = (
        CheckConstraint("packages > 0", name="packages_positive"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        Index("ix_shipments_order_id_id", "order_id", "id"),
    )


class WebhookEndpoint(Base):
    """Where a partner (or, with no partner, the CRM: every partner's orders) wants events sent.

    The signing secret is kept as it is, unlike API keys: the sender needs the secret itself to sign
    (README, "Webhooks"). After a rotation the previous secret signs too until `previous_secret_until`."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    partner_id: Mapped[int | None] = mapped_column(ForeignKey("partners.id"))
    url: Mapped[str] = mapped_column(String(2000))
    event_types: Mapped[str] = mapped_column(Text)  # space-separated (mes.domain.webhooks.SUBSCRIBABLE)
    description: Mapped[str | None] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set when a delivery gave up (its retries ran out); cleared by the next successful delivery.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    __table_args__ = (Index("ix_webhook_endpoints_partner_id", "partner_id"),)

    @property
    def types(self) -> list[str]:
        return self.event_types.split()


class WebhookEvent(Base):
    """The outbox: one event, written in the transaction of the change that caused it
    (mes.services.webhooks). `msg_id` is its `webhook-id`, the same on every delivery and replay."""

    __tablename__ = "webhook_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    msg_id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(40))
    partner_id: Mapped[int | None] = mapped_column(Integer)
    order_id: Mapped[int | None] = mapped_column(BigInteger)
    payload: Mapped[str] = mapped_column(Text)  # the JSON body as sent
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    __table_args__ = (
        Index("ix_webhook_events_created", "created_at"),
        Index("ix_webhook_events_partner_created", "partner_id", "created_at"),  # range replays
    )


class WebhookDelivery(Base):
    """One event owed to one endpoint: pending until delivered, or failed once its retries ran out.
    A worker claims a due row by moving `next_attempt_at` a lease ahead under a fresh `claim` token
    (mes.webhook_worker); only the holder of that token records the outcome."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("webhook_events.id"))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claim: Mapped[str | None] = mapped_column(String(40))
    replay: Mapped[bool] = mapped_column(Boolean, default=False)
    last_status_code: Mapped[int | None] = mapped_column(SmallInteger)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    event: Mapped[WebhookEvent] = relationship(lazy="joined")
    attempt_log: Mapped[list[WebhookAttempt]] = relationship(lazy="selectin", order_by="WebhookAttempt.id",
                                                             passive_deletes=True)
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="state"),
        # What the workers claim: the due pending rows, oldest first.
        Index("ix_webhook_deliveries_due", "next_attempt_at",
              postgresql_where=text("state = 'pending'"), sqlite_where=text("state = 'pending'")),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_event", "event_id"),  # the outbox's pruning
    )


class WebhookAttempt(Base):
    """One try of a delivery: the answer's status (none when no answer came), how long it took, the start
    of the response body, or why nothing was sent."""

    __tablename__ = "webhook_attempts"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(SmallInteger)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(500))
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "id"),)
