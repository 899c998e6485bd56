"""Engine and sessions: one engine per process, one session per request."""
from __future__ import annotations

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, *, application_name: str | None = None, pool_size: int = 5) -> Engine:
    """Engine tuned per backend: SQLite waits for the writer lock, PostgreSQL pools."""
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
    return create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
        pool_recycle=1800, connect_args=connect_args,
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def begin_write(session: Session) -> None:
    """Declare that this transaction will write, before its first statement.

    SQLite then takes its write lock up front (BEGIN IMMEDIATE) instead of failing
    when two readers both try to upgrade; PostgreSQL ignores the hint. A read-only
    transaction already open (e.g. the API key lookup) is ended first.
    """
    if session.in_transaction():
        session.commit()
    session.connection(execution_options={"write_intent": True})
