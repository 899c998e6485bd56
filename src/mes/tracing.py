"""Request tracing with OpenTelemetry and W3C Trace Context.

Every request carries a `traceparent`: the client's when it sent a well-formed one, otherwise one that
HAProxy starts (haproxy/haproxy.cfg.j2), which also logs its trace id. Here each request gets a server
span that is the child of that context (FlaskInstrumentor), with a child span for every SQL statement
(SQLAlchemyInstrumentor) and Redis command (RedisInstrumentor), and every statement sent to PostgreSQL
ends with a comment in sqlcommenter's format naming the handler, the route and the trace context, so
that PostgreSQL's slow-statement log and Pgpool-II's log name the request. The JSON logs put `trace_id`
and `span_id` on every line written during a request (mes.logs).

Spans are exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set,
sampled by the standard OTEL_TRACES_SAMPLER/OTEL_TRACES_SAMPLER_ARG (the deployment sets
parentbased_traceidratio: a request follows the sampled flag HAProxy or the client set). Without an
endpoint nothing is recorded (every span is the SDK's non-recording span), but the ids still travel to
the logs and the SQL comments: a log line and a slow statement can always be tied to HAProxy's line.
"""
from __future__ import annotations

import logging
import os
import socket
import urllib.parse

from flask import Flask, g, has_request_context, request
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from sqlalchemy import event
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)
# Probes and scrapes get no span: HAProxy and Prometheus poll every instance every few seconds.
EXCLUDED_URLS = "/healthz/,/metrics"
# Characters of a Flask rule that stay as they are in a SQL comment.
_ROUTE_SAFE = "/<>:_-.,"

_provider: TracerProvider | None = None


def export_endpoint() -> str | None:
    """Where spans go (OTLP/HTTP), from OpenTelemetry's own variables; None: nothing is exported."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def tracer_provider(service: str) -> TracerProvider:
    """This process's provider, made once (OpenTelemetry allows one global provider per process)."""
    global _provider
    if _provider is None:
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service,
                                    "service.instance.id": f"{socket.gethostname()}:{os.getpid()}"})
        if export_endpoint():
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            _provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
            _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            _provider = TracerProvider(resource=resource, sampler=ALWAYS_OFF)
        trace.set_tracer_provider(_provider)
    return _provider


def init_tracing(app: Flask, engine: Engine, pool: str) -> None:
    """Spans for this app's requests, its engine's statements and every Redis client of the process."""
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    provider = tracer_provider(f"mes-{pool}")
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS)
    if not SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry:
        # Its declared range stops below SQLAlchemy 2.1, whose engine events it uses are unchanged
        # (tests/test_tracing.py checks the statement spans). Once instrumented, every engine made
        # later in the process is traced too (it wraps create_engine).
        SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=provider, skip_dep_check=True)
    if not RedisInstrumentor().is_instrumented_by_opentelemetry:
        RedisInstrumentor().instrument(tracer_provider=provider)
    comment_statements(engine)

    @app.after_request
    def _describe(response):
        # Who asked, on which pool: what on-call filters traces by (the route and status are the
        # instrumentation's own attributes).
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("mes.pool", pool)
            actor = g.get("actor")
            if actor is not None:
                span.set_attribute(f"mes.{actor.kind}_id", actor.id)
            span.set_attribute("mes.request_id", g.get("request_id") or "")
        return response


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the span in progress, or None outside one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def traceparent() -> str | None:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return (f"00-{trace.format_trace_id(context.trace_id)}-{trace.format_span_id(context.span_id)}"
            f"-{int(context.trace_flags):02x}")


def sql_comment(**tags: str | None) -> str:
    """sqlcommenter's format: key='url-encoded value' pairs sorted by key, in one trailing comment. A
    value that would need a '%' escape is left out: psycopg2 would read the '%' as a placeholder (our
    values, handler names, rules and trace ids, never need one)."""
    quoted = {key: urllib.parse.quote(value, safe=_ROUTE_SAFE) for key, value in tags.items() if value}
    pairs = [f"{key}='{value}'" for key, value in sorted(quoted.items()) if "%" not in value]
    return f" /*{','.join(pairs)}*/" if pairs else ""


def comment_statements(engine: Engine) -> None:
    """Append the trace context and the request's handler and route to every statement of `engine`.
    After the statement, so that a leading routing hint (mes.db.PRIMARY_HINT) stays first."""

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _comment(conn, cursor, statement, parameters, context, executemany):
        parent = traceparent()
        if parent is None:
            return statement, parameters
        controller = route = None
        if has_request_context():
            controller = request.endpoint
            route = request.url_rule.rule if request.url_rule else None
        return statement + sql_comment(controller=controller, route=route, traceparent=parent), parameters
