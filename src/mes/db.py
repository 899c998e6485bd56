"""Engine and sessions: one engine per process, one session per request."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")


def make_engine(url: str, *, application_name: str | None = None, pool_size: int = 5,
                max_overflow: int | None = None) -> Engine:
    """Engine tuned per backend: SQLite waits for the writer lock, PostgreSQL pools (at most pool_size +
    max_overflow connections, max_overflow defaulting to pool_size)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # Autocommit at the driver level, so that our BEGIN IMMEDIATE decides when the
            # write lock is taken (pysqlite's own implicit BEGIN is deferred and deadlocks).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            write = conn.get_execution_options().get("write_intent")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    connect_args = {"application_name": application_name} if application_name else {}
    engine = create_engine(
        url, pool_size=pool_size, max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_pre_ping=True, pool_recycle=1800, connect_args=connect_args,
    )

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _primary_hint(conn, cursor, statement, parameters, context, executemany):
        # Pgpool-II sends a statement that starts with this comment to the primary, never to a
        # replica; without pgpool the comment is harmless.
        if conn.info.get("primary"):
            statement = PRIMARY_HINT + statement
        return statement, parameters

    @event.listens_for(engine, "checkin")
    def _forget_route(dbapi_conn, record):
        record.info.pop("primary", None)

    return engine


PRIMARY_HINT = "/*NO LOAD BALANCE*/ "


def make_sessionmaker(engine: Engine, info: dict | None = None) -> sessionmaker[Session]:
    """Sessions on `engine`; `info` is given to each (the app's promise policy, mes.services.forecast)."""
    factory = sessionmaker(engine, expire_on_commit=False, info=info or {})

    @event.listens_for(factory, "after_begin")
    def _route(session, transaction, connection):
        connection.info["primary"] = bool(session.info.get("primary"))

    return factory


def begin_write(session: Session) -> None:
    """Declare that this transaction will write, before its first statement.

    SQLite then takes its write lock up front (BEGIN IMMEDIATE) instead of failing
    when two readers both try to upgrade; PostgreSQL ignores the hint. A read-only
    transaction already open (e.g. the API key lookup) is ended first.
    """
    if session.in_transaction():
        session.commit()
    # Reads inside a write transaction (idempotency lookup, row lock) must see the primary's data.
    session.info["primary"] = True
    session.connection(execution_options={"write_intent": True})


def use_primary(session: Session) -> None:
    """Send this session's reads to the primary from its next transaction on (they must see a fresh write)."""
    if not session.info.get("primary"):
        session.info["primary"] = True
        if session.in_transaction():
            session.commit()


def read_on_primary(session: Session, work: Callable[[], T]) -> T:
    """work() in a transaction of its own on the primary; the session's later reads go where they went
    before. For the few reads that a replica's lag must never answer (who is logged in), without
    sending the whole request to the primary."""
    before = bool(session.info.get("primary"))
    if session.in_transaction():
        session.commit()
    session.info["primary"] = True
    try:
        result = work()
        session.commit()
        return result
    except BaseException:
        session.rollback()
        raise
    finally:
        session.info["primary"] = before
