"""Tracing (mes.tracing) in one app process on a real PostgreSQL, exporting over OTLP/HTTP to a receiver
the test starts: spans, their parents, the log lines' ids and the SQL comments. The path through
HAProxy, PostgreSQL's log and Redis is tests/test_topology.py's."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mes.tracing import sql_comment
from mes.testing.otlp import OtlpReceiver

SRC = Path(__file__).resolve().parents[1] / "src"
SERVER, CLIENT = 2, 3  # OTLP span kinds

# One app process, as a gunicorn worker runs it: the requests, then the provider flushes at exit.
SCRIPT = textwrap.dedent("""
    import json, sys
    from sqlalchemy import event
    from mes import create_app
    from mes.config import Settings
    from mes.services import accounts

    app = create_app(Settings(database_url=sys.argv[1], secret_key="x", pools=("public",)))
    with app.extensions["mes_sessionmaker"]() as session:
        issued = accounts.create_client(session, "tracing-test", scope="crm", rate_tier="crm")
        session.commit()
    sent = []
    event.listen(app.extensions["mes_engine"], "after_cursor_execute",
                 lambda conn, cursor, statement, *rest: sent.append(statement))
    client = app.test_client()
    for parent in json.loads(sys.argv[2]):
        headers = {"Authorization": f"Bearer {issued.key}", "X-Request-ID": parent["rid"]}
        if parent["traceparent"]:
            headers["traceparent"] = parent["traceparent"]
        before = len(sent)
        status = client.get("/api/v1/orders?limit=5", headers=headers).status_code
        print(json.dumps({"rid": parent["rid"], "status": status, "sql": sent[before:],
                          "client_id": issued.client.id}), flush=True)
""")


def run_app(backend, receiver: OtlpReceiver | None, requests: list[dict], ratio: str = "1.0") -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}"
    if receiver is not None:
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                   OTEL_TRACES_SAMPLER_ARG=ratio, OTEL_BSP_SCHEDULE_DELAY="200")
    done = subprocess.run([sys.executable, "-c", SCRIPT, backend.app_url, json.dumps(requests)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert not [line for line in lines if line.get("level") in ("WARNING", "ERROR")], lines
    return lines


def new_parent(flags: str) -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent_id, f"00-{trace_id}-{parent_id}-{flags}"


@pytest.fixture
def receiver():
    with OtlpReceiver() as running:
        yield running


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_sampled_request_is_one_trace_of_server_and_sql_spans_with_its_ids_in_logs_and_sql(backend, receiver):
    sampled_trace, sampled_parent, sampled = new_parent("01")
    dropped_trace, _, dropped = new_parent("00")
    try:
        lines = run_app(backend, receiver, [{"rid": "sampled-1", "traceparent": sampled},
                                            {"rid": "dropped-1", "traceparent": dropped},
                                            {"rid": "malformed-1", "traceparent": "00-xyz-01"}])
    finally:
        backend.reset()
    results = {line["rid"]: line for line in lines if "sql" in line}
    logged = {line["request_id"]: line for line in lines if line.get("message") == "request"}
    assert all(r["status"] == 200 for r in results.values()), results

    spans = receiver.wait_for_trace(sampled_trace, lambda s: any(x.kind == SERVER for x in s))
    server = [s for s in spans if s.kind == SERVER]
    assert len(server) == 1, spans
    server = server[0]
    assert server.parent_id == sampled_parent and server.service == "mes-public"
    assert server.attributes["http.route"] == "/api/v1/orders"
    assert server.attributes["mes.pool"] == "public"
    assert server.attributes["mes.client_id"] == results["sampled-1"]["client_id"]
    assert server.attributes["mes.request_id"] == "sampled-1"
    statements = [s for s in spans if s.kind == CLIENT]
    assert statements and all(s.parent_id == server.span_id for s in statements), spans
    assert any("orders" in str(s.attributes.get("db.statement", "")) for s in statements), statements

    # The log line of the request names the trace and the server span.
    assert logged["sampled-1"]["trace_id"] == sampled_trace
    assert logged["sampled-1"]["span_id"] == server.span_id
    # Every statement of the request carries the trace context and the handler (sqlcommenter).
    for statement in results["sampled-1"]["sql"]:
        assert statement.endswith(f"traceparent='00-{sampled_trace}-{server.span_id}-01'*/"), statement
        assert "controller='api.list_orders',route='/api/v1/orders'," in statement, statement

    # Not sampled by its parent: nothing exported, and the ids still reach the log and the SQL.
    assert logged["dropped-1"]["trace_id"] == dropped_trace
    assert all(f"traceparent='00-{dropped_trace}-" in s and s.endswith("-00'*/") for s in results["dropped-1"]["sql"])
    # A malformed traceparent starts a new trace (sampled here at ratio 1).
    fresh = logged["malformed-1"]["trace_id"]
    assert fresh not in (sampled_trace, dropped_trace) and len(fresh) == 32
    assert receiver.wait_for_trace(fresh, lambda s: any(x.kind == SERVER for x in s))
    assert not receiver.trace(dropped_trace)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_without_an_endpoint_nothing_is_exported_and_the_ids_still_reach_logs_and_sql(backend, receiver):
    trace_id, parent_id, parent = new_parent("01")
    try:
        lines = run_app(backend, None, [{"rid": "off-1", "traceparent": parent}])
    finally:
        backend.reset()
    logged = next(line for line in lines if line.get("request_id") == "off-1")
    assert logged["trace_id"] == trace_id and logged["span_id"] != parent_id
    result = next(line for line in lines if line.get("rid") == "off-1")
    assert result["sql"] and all(f"traceparent='00-{trace_id}-{logged['span_id']}-00'*/" in s for s in result["sql"])
    assert receiver.requests == 0


def test_the_sql_comment_is_sqlcommenters_format_and_never_holds_a_placeholder():
    assert sql_comment(traceparent="00-ab-cd-01", controller="api.get_order", route="/orders/<id:order_id>") == (
        " /*controller='api.get_order',route='/orders/<id:order_id>',traceparent='00-ab-cd-01'*/")
    assert sql_comment(route=None, traceparent=None) == ""
    # Values that would need a '%' escape (a psycopg2 placeholder) or hold a quote are left out.
    assert sql_comment(controller="a b", route="/x'y", traceparent="00-ab-cd-01") == " /*traceparent='00-ab-cd-01'*/"
