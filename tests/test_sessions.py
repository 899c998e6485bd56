"""How operator sessions end: logout, deactivation and a password change end every session of the operator
at once (a copied cookie is refused), and a session ends after its idle time and its absolute lifetime."""
from __future__ import annotations

import pytest
from sqlalchemy import event
from test_operator_ui import Browserless

from mes import create_app
from mes.config import Settings
from mes.db import PRIMARY_HINT
from mes.extensions import limiter
from mes.services import accounts

MINUTE = 60.0
HOUR = 60 * MINUTE


class Clock:
    """Time as the app sees it, moved by the test instead of waiting."""

    def __init__(self, start: float = 1_900_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(backend, settings, clock):
    """The app on a clock the test moves (replaces conftest's app)."""
    app = create_app(settings, clock=clock)
    yield app
    app.extensions["mes_engine"].dispose()
    limiter.reset()
    backend.reset()


def cookie_of(client, app) -> str:
    return client.get_cookie(app.config["SESSION_COOKIE_NAME"]).value


def with_cookie(app, value: str):
    """Another browser that presents a copied session cookie."""
    other = app.test_client()
    other.set_cookie(app.config["SESSION_COOKIE_NAME"], value)
    return other


def logged_in(client) -> bool:
    r = client.get("/operator/")
    assert r.status_code in (200, 302)
    return r.status_code == 200


@pytest.fixture
def olga(client, accounts_):
    accounts_.operator("olga", "secret-pass")
    b = Browserless(client)
    assert b.login("olga", "secret-pass").status_code == 302
    return b


def test_a_cookie_copied_before_logout_is_refused_after_it(olga, client, app):
    copied = cookie_of(client, app)
    assert logged_in(with_cookie(app, copied))
    olga.post("/operator/logout", "/operator/")
    assert not logged_in(client)
    assert not logged_in(with_cookie(app, copied))


def test_logout_ends_the_operators_other_sessions_too(olga, client, app):
    """One generation per operator: logging out is logging out everywhere."""
    other_terminal = app.test_client()
    assert Browserless(other_terminal).login("olga", "secret-pass").status_code == 302
    olga.post("/operator/logout", "/operator/")
    assert not logged_in(other_terminal)
    assert Browserless(other_terminal).login("olga", "secret-pass").status_code == 302
    assert logged_in(other_terminal)


def test_deactivating_an_operator_ends_their_sessions_at_once(olga, client, app, db):
    copied = cookie_of(client, app)
    accounts.deactivate_operator(db, "olga")
    assert not logged_in(client) and not logged_in(with_cookie(app, copied))
    assert Browserless(app.test_client()).login("olga", "secret-pass").status_code == 401


def test_a_password_change_ends_the_sessions_and_the_new_password_logs_in(olga, client, app, db):
    copied = cookie_of(client, app)
    accounts.set_operator_password(db, " OLGA ", "new-secret-pass")
    assert not logged_in(client) and not logged_in(with_cookie(app, copied))
    fresh = Browserless(app.test_client())
    assert fresh.login("olga", "secret-pass").status_code == 401
    assert fresh.login("olga", "new-secret-pass").status_code == 302


def test_a_session_ends_after_its_idle_time(olga, client, app, clock, settings):
    idle = settings.session_idle_minutes * MINUTE
    for _ in range(3):  # working keeps the session alive well past one idle time
        clock.advance(idle - MINUTE)
        assert logged_in(client)
    copied = cookie_of(client, app)
    clock.advance(idle + 1)
    r = client.get("/operator/", follow_redirects=True)
    assert "/operator/login" in r.request.url and "Your session ended" in r.get_data(as_text=True)
    assert not logged_in(with_cookie(app, copied))


def test_a_session_ends_after_its_absolute_lifetime_even_in_use(olga, client, app, clock, settings):
    lifetime = settings.session_lifetime_hours * HOUR
    step = settings.session_idle_minutes * MINUTE / 2
    started = clock.now
    while clock.now - started + step < lifetime:
        clock.advance(step)
        assert logged_in(client)
    clock.advance(step)
    assert not logged_in(client)
    assert Browserless(client).login("olga", "secret-pass").status_code == 302
    assert logged_in(client)


def test_defaults_fit_a_shift(settings):
    assert 30 <= settings.session_idle_minutes <= 60 and settings.session_lifetime_hours == 12


def test_session_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MES_SESSION_IDLE_MINUTES", "45")
    monkeypatch.setenv("MES_SESSION_LIFETIME_HOURS", "8.5")
    cfg = Settings.from_env()
    assert cfg.session_idle_minutes == 45 and cfg.session_lifetime_hours == 8.5


def test_a_cookie_from_before_generations_is_refused(olga, client, app):
    """Sessions issued before this check existed carry no generation: they end at once."""
    with client.session_transaction() as sess:
        sess["_user_id"] = sess["_user_id"].split(":")[0]
    assert not logged_in(client)


@pytest.mark.postgresql_only
def test_the_session_check_reads_the_primary(olga, client, app):
    """Behind Pgpool-II a replica may not have the logout yet: the operator row is read on the primary."""
    seen = []

    def remember(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    engine = app.extensions["mes_engine"]
    event.listen(engine, "before_cursor_execute", remember)
    try:
        assert logged_in(client)
    finally:
        event.remove(engine, "before_cursor_execute", remember)
    operator_reads = [s for s in seen if "FROM operators" in s]
    assert operator_reads and all(s.startswith(PRIMARY_HINT) for s in operator_reads)
    order_reads = [s for s in seen if "FROM orders" in s]
    assert order_reads and not any(s.startswith(PRIMARY_HINT) for s in order_reads)
