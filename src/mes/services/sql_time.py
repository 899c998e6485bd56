"""Two SQL expressions that mean the same on both databases: a timestamp's UTC day, and the seconds
between two timestamps. SQLite keeps our timestamps as UTC text, PostgreSQL as timestamptz, whose day
would otherwise follow the session's time zone."""
from __future__ import annotations

from sqlalchemy import Date, Float
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class utc_day(FunctionElement):  # noqa: N801  (used like a SQL function)
    """The calendar day (UTC) of a timestamp column."""

    type = Date()
    name = "utc_day"
    inherit_cache = True


class seconds_between(FunctionElement):  # noqa: N801
    """seconds_between(start, end): end - start in seconds, as a float."""

    type = Float()
    name = "seconds_between"
    inherit_cache = True


@compiles(utc_day)
def _utc_day(element, compiler, **kw):
    return f"CAST(({compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC') AS DATE)"


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element, compiler, **kw):
    return f"date({compiler.process(element.clauses, **kw)})"


@compiles(seconds_between)
def _seconds(element, compiler, **kw):
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(EXTRACT(EPOCH FROM ({end} - {start})) AS DOUBLE PRECISION)"


@compiles(seconds_between, "sqlite")
def _seconds_sqlite(element, compiler, **kw):
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"
