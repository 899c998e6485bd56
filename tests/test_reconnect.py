"""A database connection that dies in the middle of a request (Pgpool-II drops its clients' backend
connections when a node is attached or detached): a repeatable request is run once more and succeeds,
any other gets a 503 with Retry-After and changes nothing. Real PostgreSQL; the connection is really
terminated (pg_terminate_backend from another session), just before a chosen statement."""
from __future__ import annotations

import time
from contextlib import contextmanager

import pytest
from conftest import auth, create_order
from sqlalchemy import create_engine, event, text

from mes.db import PRIMARY_HINT

pytestmark = pytest.mark.postgresql_only


@contextmanager
def connection_dies_before(app, backend, statement_start: str):
    """The first statement of the app that starts with `statement_start` (after a routing hint comment)
    finds its connection gone."""
    engine, killer = app.extensions["mes_engine"], create_engine(backend.app_url)
    killed: list[int] = []

    def kill(conn, cursor, statement, parameters, context, executemany):
        if killed or not statement.removeprefix(PRIMARY_HINT).lstrip().upper().startswith(statement_start):
            return
        pid = conn.connection.dbapi_connection.get_backend_pid()
        with killer.begin() as k:
            k.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            deadline = time.monotonic() + 5
            while k.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}).scalar() \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
        killed.append(pid)

    event.listen(engine, "before_cursor_execute", kill)
    try:
        yield killed
    finally:
        event.remove(engine, "before_cursor_execute", kill)
        killer.dispose()


def test_a_read_whose_connection_dies_is_answered(app, client, backend, accounts_):
    partner = accounts_.partner()
    order = create_order(client, partner).get_json()
    with connection_dies_before(app, backend, "SELECT ORDERS.") as killed:
        r = client.get(f"/api/v1/orders/{order['id']}", headers=auth(partner))
    assert killed, "the connection was not terminated: the test proves nothing"
    assert r.status_code == 200 and r.get_json()["reference"] == order["reference"]


def test_an_idempotent_create_whose_connection_dies_is_created_once(app, client, backend, accounts_, db):
    partner = accounts_.partner()
    with connection_dies_before(app, backend, "INSERT INTO ORDERS") as killed:
        r = create_order(client, partner, reference="PO-RECONNECT")
    assert killed
    assert r.status_code == 201, r.get_json()
    assert db.execute(text("SELECT count(*) FROM orders WHERE reference = 'PO-RECONNECT'")).scalar() == 1


def test_a_writers_routing_question_whose_connection_dies_is_asked_again(backend, accounts_):
    """Before the view, a partner that wrote a moment ago makes the request ask the primary whether every
    replica has its write (read-your-writes). That question runs outside the view's retries; it is a
    read, so it is asked again on a fresh connection instead of ending in a 503."""
    from mes import create_app

    app = create_app(backend.settings(read_your_writes=True))
    try:
        client, partner = app.test_client(), accounts_.partner()
        order = create_order(client, partner).get_json()  # leaves the partner's write marker
        with connection_dies_before(app, backend, "SELECT PUBLIC.MES_REPLICAS_REPLAYED") as killed:
            r = client.get(f"/api/v1/orders/{order['id']}", headers=auth(partner))
        assert killed, "the connection was not terminated: the test proves nothing"
        assert r.status_code == 200 and r.get_json()["reference"] == order["reference"], r.get_data(as_text=True)
    finally:
        app.extensions["mes_engine"].dispose()


def test_a_write_without_idempotency_key_gets_503_and_changes_nothing(app, client, backend, accounts_, db):
    partner = accounts_.partner()
    order = create_order(client, partner).get_json()
    with connection_dies_before(app, backend, "UPDATE ORDERS") as killed:
        r = client.post(f"/api/v1/orders/{order['id']}/cancel", headers=auth(partner))
    assert killed
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.get_data(as_text=True)
    assert r.mimetype == "application/problem+json" and r.get_json()["type"].endswith("database-unavailable")
    assert db.execute(text("SELECT status FROM orders WHERE id = :id"), {"id": order["id"]}).scalar() == "received"
    assert client.post(f"/api/v1/orders/{order['id']}/cancel", headers=auth(partner)).status_code == 200


def test_a_database_that_refuses_connections_is_a_503_with_retry_after(backend):
    """No primary to connect to (a failover in progress): a 503 with Retry-After after the bounded
    retries, never a 500, on the API and on the operator UI."""
    from mes import create_app
    from mes.testing.postgres import free_port

    nowhere = backend.app_url.rsplit("@", 1)[0] + f"@127.0.0.1:{free_port()}/mes"
    app = create_app(backend.settings(database_url=nowhere))
    try:
        client = app.test_client()
        r = client.get("/api/v1/orders", headers={"Authorization": "Bearer mes_abcdef12_" + "x" * 43})
        assert r.status_code == 503, r.get_data(as_text=True)
        assert r.headers["Retry-After"] == "2" and r.get_json()["type"] == "/problems/database-unavailable"
        page = client.get("/healthz/ready")
        assert page.status_code == 503
        form = client.get("/operator/login").get_data(as_text=True)
        token = form.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
        r = client.post("/operator/login", data={"login": "demo", "password": "x", "csrf_token": token})
        assert r.status_code == 503 and "text/html" in r.content_type, r.get_data(as_text=True)[:300]
    finally:
        app.extensions["mes_engine"].dispose()


def test_a_logged_in_operator_gets_a_readable_503_page_when_the_database_is_away(backend, accounts_):
    """The error page itself must not need the database (it used to load the operator for its header,
    fail again, and end in a bare 500)."""
    from mes import create_app
    from mes.testing.postgres import free_port

    working = create_app(backend.settings())
    nowhere = backend.app_url.rsplit("@", 1)[0] + f"@127.0.0.1:{free_port()}/mes"
    broken = create_app(backend.settings(database_url=nowhere))
    try:
        accounts_.operator("failover-op", "failover-pass")
        client = working.test_client()
        form = client.get("/operator/login").get_data(as_text=True)
        token = form.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
        r = client.post("/operator/login", data={"login": "failover-op", "password": "failover-pass",
                                                 "csrf_token": token}, follow_redirects=True)
        assert "Orders queue" in r.get_data(as_text=True)
        other = broken.test_client()
        name = working.config["SESSION_COOKIE_NAME"]
        other.set_cookie(name, client.get_cookie(name).value)
        r = other.get("/operator/")
        assert r.status_code == 503 and "text/html" in r.content_type, r.get_data(as_text=True)[:300]
        page = r.get_data(as_text=True)
        assert r.headers["Retry-After"] == "2" and "not available right now" in page
        assert '<meta http-equiv="refresh" content="2">' in page  # the tablet tries again by itself
        assert other.get("/operator/static/mes.css").status_code == 200
    finally:
        working.extensions["mes_engine"].dispose()
        broken.extensions["mes_engine"].dispose()
