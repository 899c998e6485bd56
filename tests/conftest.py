"""Fixtures: every test that touches the database runs twice, on SQLite and on a real PostgreSQL 15
that the suite starts itself in a temporary folder (MES_TEST_BACKENDS=sqlite narrows it)."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import hypothesis
import pytest
from sqlalchemy import create_engine, text
from werkzeug.serving import make_server

from mes import create_app
from mes.config import Settings
from mes.domain.reason_codes import (
    DEFAULT_CANCEL_REASONS, DEFAULT_DEFECT_CODES, DEFAULT_HOLD_REASONS, DEFAULT_LATE_REASONS,
)
from mes.extensions import limiter
from mes.migrate import upgrade
from mes.services import accounts
from mes.testing.postgres import UNSAFE_FAST_SETTINGS, create_mes_database, port_slice, temporary_postgres

BACKENDS = [b for b in os.environ.get("MES_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]

# Property tests (Hypothesis, schemathesis): no per-example deadline on a shared machine; under CI the
# same examples on every run, so that a red build can be reproduced.
hypothesis.settings.register_profile("dev", deadline=None)
hypothesis.settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")
TABLES = ["webhook_attempts", "webhook_deliveries", "webhook_events", "webhook_endpoints", "audit_log", "shipments", "production_records", "floor_events", "piece_rates", "stale_status", "order_events", "idempotency_keys", "orders", "api_clients", "operators", "partners",
          "reason_codes", "stage_norms", "stage_flow", "job_leases",
          "forecast_checks"]
TEST_LIMITS = {"standard": "100000/minute", "bulk": "100000/minute", "crm": "100000/minute", "tiny": "3/minute"}


@dataclass
class Backend:
    name: str
    app_url: str  # the app's own role: no DDL
    owner_url: str  # migrations and test cleanup

    def settings(self, **overrides) -> Settings:
        base = Settings(database_url=self.app_url, migration_database_url=self.owner_url,
                        secret_key="test-secret", rate_limits=dict(TEST_LIMITS),
                        log_level="WARNING")
        return replace(base, **overrides)

    def reset(self) -> None:
        engine = create_engine(self.owner_url)
        with engine.begin() as conn:
            if self.name == "postgresql":
                conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
            else:
                for table in TABLES:
                    conn.execute(text(f"DELETE FROM {table}"))
            conn.execute(text("UPDATE status_counts SET count = 0"))
            seed_reason_codes(conn)
        engine.dispose()


def seed_reason_codes(conn) -> None:
    """The hold, late, defect and cancel reasons a fresh database has, back as the migrations left them
    (hold ids 1 to 7)."""
    seeds = [("hold", i, seed) for i, seed in enumerate(DEFAULT_HOLD_REASONS)]
    seeds += [("late", i, seed) for i, seed in enumerate(DEFAULT_LATE_REASONS)]
    seeds += [("defect", i, seed) for i, seed in enumerate(DEFAULT_DEFECT_CODES)]
    seeds += [("cancel", i, seed) for i, seed in enumerate(DEFAULT_CANCEL_REASONS)]
    rows = [{"id": n + 1, "kind": kind, "code": seed.code, "label": seed.label, "requires_note": seed.requires_note,
             "sort_order": (i + 1) * 10} for n, (kind, i, seed) in enumerate(seeds)]
    conn.execute(text("INSERT INTO reason_codes (id, kind, code, label, requires_note, active, sort_order, created_at) "
                      "VALUES (:id, :kind, :code, :label, :requires_note, true, :sort_order, CURRENT_TIMESTAMP)"), rows)
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT setval('reason_codes_id_seq', (SELECT max(id) FROM reason_codes))"))


def cancel_reason(session, code: str = "customer_request") -> int:
    """The id of a seeded cancel reason, which the shop floor gives with every cancellation."""
    return session.execute(text("SELECT id FROM reason_codes WHERE kind = 'cancel' AND code = :code"),
                           {"code": code}).scalar_one()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """One real PostgreSQL for the session (durability off: this data is thrown away)."""
    with temporary_postgres(settings=UNSAFE_FAST_SETTINGS) as server:
        yield server


#: Each backend's database, made once per session: pytest may set a session-scoped parametrized fixture
#: up again when the order of the tests switches between its parameters (postgresql_only tests do), and
#: the PostgreSQL server's roles outlive the first setup.
_MADE: dict[str, Backend] = {}


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request, tmp_path_factory) -> Backend:
    if request.param in _MADE:
        return _MADE[request.param]
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "mes.db"
        be = Backend("sqlite", f"sqlite:///{path}", f"sqlite:///{path}")
        upgrade(be.settings(migration_database_url=None))
    else:
        server = request.getfixturevalue("postgres_server")
        owner_url, app_url = create_mes_database(server)
        be = Backend("postgresql", app_url, owner_url)
        upgrade(be.settings(app_db_role="mes_app"))
    _MADE[request.param] = be
    return be


@pytest.fixture
def settings(backend) -> Settings:
    return backend.settings()


@pytest.fixture
def app(backend, settings):
    app = create_app(settings)
    yield app
    app.extensions["mes_engine"].dispose()
    limiter.reset()
    backend.reset()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def db(app):
    session = app.extensions["mes_sessionmaker"]()
    yield session
    session.close()


class Accounts:
    """Creates operators and API clients for a test, and builds their auth headers."""

    def __init__(self, session):
        self.session = session

    def partner(self, name: str = "acme-erp", partner: str = "ACME", tier: str = "standard") -> dict:
        issued = accounts.create_client(self.session, name, scope="partner", partner_name=partner, rate_tier=tier)
        return {"Authorization": f"Bearer {issued.key}", "_client_id": issued.client.id,
                "_partner_id": issued.client.partner_id}

    def crm(self, name: str = "crm") -> dict:
        issued = accounts.create_client(self.session, name, scope="crm", rate_tier="crm")
        return {"Authorization": f"Bearer {issued.key}", "_client_id": issued.client.id}

    def operator(self, login: str = "olga", password: str = "secret-pass", role: str = "operator",
                 display_name: str | None = None):
        return accounts.create_operator(self.session, login, password, role=role, display_name=display_name)


@pytest.fixture
def accounts_(db) -> Accounts:
    return Accounts(db)


def auth(headers: dict) -> dict:
    """The HTTP part of an Accounts.partner()/crm() result."""
    return {k: v for k, v in headers.items() if not k.startswith("_")}


NEW_ORDER = {"reference": "PO-1", "product": "BRKT-200", "material": "steel S235", "quantity": 10}


def create_order(client, headers, key: str | None = None, **fields):
    body = {**NEW_ORDER, **fields}
    return client.post("/api/v1/orders", json=body,
                       headers={**auth(headers), "Idempotency-Key": key or f"key-{body['reference']}"})


@dataclass
class LiveServer:
    url: str
    app: object


@pytest.fixture
def one_rate_window():
    """Start a burst at least 15 s before the next minute. The limits count in sliding-window-counter
    windows aligned to the minute: hits in the previous window are weighted by the part of it still in
    the sliding minute, so a burst that straddles the edge can be let through one more time (the
    strategy's documented approximation, mes/__init__.py says why it was chosen). Request it as the
    test's last fixture, so that the others are set up before the wait."""
    left = 60 - time.time() % 60
    if left < 15:
        time.sleep(left + 0.05)


@pytest.fixture
def live_server(app):
    """The app on a real socket (threaded), for the browser and concurrency tests."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield LiveServer(f"http://127.0.0.1:{server.server_port}", app)
    server.shutdown()
    thread.join(5)


def pytest_collection_modifyitems(config, items):
    """Tests marked postgresql_only (behaviour SQLite cannot have, e.g. a replica) are not collected
    on the SQLite backend: deselected, not skipped."""
    drop = [item for item in items if item.get_closest_marker("postgresql_only")
            and getattr(item, "callspec", None) and item.callspec.params.get("backend") == "sqlite"]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if item not in drop]


def pytest_configure(config):
    """Parallel workers (pytest-xdist, `make test-suite`) pick free ports from slices of their own: the
    stacks of two workers start at the same time, and a port that one has picked but not yet bound
    looks free to the other."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker and count > 1 and "MES_FREE_PORTS" not in os.environ:
        os.environ["MES_FREE_PORTS"] = port_slice(int(worker.removeprefix("gw")), count)


def pytest_report_header(config):
    return f"database backends: {', '.join(BACKENDS)}"


ROOT = Path(__file__).resolve().parent.parent
