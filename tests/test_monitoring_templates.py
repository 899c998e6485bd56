"""The monitoring that runs only on VMs: Loki, Alloy, Grafana and Tempo's configuration, rendered by Ansible
with the Vagrant inventory and group_vars exactly as their roles render it on the monitoring host, and checked.

These are structural checks: none of the four programs can run here. They come from Grafana's apt repository,
which this machine does not reach, and PyPI has none of them; Debian's `loki` is 2.4, which refuses Loki 3's
settings (schema v13, structured metadata). On the hosts each role checks its file with the program before it
replaces the old one (`loki -verify-config`, `alloy fmt`, `tempo -config.verify`) and proves the service
answers. What is checked here is what those programs cannot know: that the files agree with each other, with
the inventory's ports and with the log lines the app and HAProxy really write. Tempo's validation tasks run
against a stand-in of its endpoints that decodes their span with OpenTelemetry's own OTLP messages.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jinja2
import pytest
import yaml
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider

from mes.logs import FORMAT, RedactingJsonFormatter
from stack.topology import make_ctx
from test_ansible import ANSIBLE, ROOT, adhoc

DASHBOARDS = ROOT / "monitoring" / "dashboards"
GROUP_VARS = yaml.safe_load((ANSIBLE / "group_vars" / "all" / "main.yml").read_text())
PORTS = yaml.safe_load((ANSIBLE / "group_vars" / "all" / "topology.yml").read_text())["mes_ports"]
INVENTORY = yaml.safe_load((ANSIBLE / "inventories" / "vagrant" / "hosts.yml").read_text())["all"]["children"]
MONITORING_HOST = INVENTORY["monitoring"]["hosts"]["mon1"]["ansible_host"]   # where Loki, Tempo, Grafana run
BUILT_IN_DATASOURCES = {"-- Grafana --"}   # Grafana's own (annotations), not provisioned
ROLES_WITH_DEFAULTS = ["loki", "alloy", "grafana", "tempo"]
# The lookups Ansible renders on mon1 (one ad-hoc run), and values of group_vars and the roles' defaults.
RENDERED = {
    "loki": "lookup('ansible.builtin.template', loki_config_template)",
    "alloy": "lookup('ansible.builtin.template', alloy_config_template)",
    "datasources": "lookup('ansible.builtin.template', grafana_datasources_template)",
    "dashboards": "lookup('ansible.builtin.template', grafana_dashboards_provider_template)",
    "tempo": "lookup('ansible.builtin.template', tempo_config_template)",
    "otlp_endpoint": "mes_otlp_endpoint",    # group_vars/all: what every app host's instance.env gets
    "tempo_url": "tempo_url",
    "loki_url": "loki_url",
    "grafana_dashboards_dir": "grafana_dashboards_dir",
}


@pytest.fixture(scope="module")
def rendered() -> dict:
    """The templates and values, rendered for mon1 with group_vars, the vault and the four roles' defaults."""
    msg = "{{ {" + ", ".join(f"'{key}': {expr}" for key, expr in RENDERED.items()) + "} }}"
    defaults = [arg for role in ROLES_WITH_DEFAULTS for arg in ("-e", f"@roles/{role}/defaults/main.yml")]
    r = adhoc("mon1", "ansible.builtin.debug", f"msg={msg}", *defaults)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout.split("=>", 1)[1])["msg"]


# --- real log lines: what Loki's derived fields and Alloy's parsing read ------------------------------------

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
KEY_ID = "1f2e3d4c"                          # the API key's id (8 hex digits of its SHA-256)
REQUEST_ID = "58d5c0de-9f1e-4c55-8d3a-3f2a1b0c9d8e"   # HAProxy's uuid(4), or the client's X-Request-ID


def app_log_line() -> tuple[str, str]:
    """A request line as src/mes/logs.py writes it (its formatter, its fields) during a span; its trace id."""
    tracer = TracerProvider().get_tracer("test")
    record = logging.getLogger("mes.request").makeRecord(
        "mes.request", logging.INFO, __file__, 1, "request", (), None,
        extra={"request_id": REQUEST_ID, "pool": "public", "method": "GET", "rule": "/api/v1/orders/<int:order_id>",
               "query": None, "status": 200, "duration_ms": 12.5, "client_id": 7, "operator_id": None,
               "remote_addr": "127.0.0.1"})
    with tracer.start_as_current_span("GET /api/v1/orders/<int:order_id>") as span:
        line = RedactingJsonFormatter(**FORMAT).format(record)
        return line, format(span.get_span_context().trace_id, "032x")


# One value for each field of HAProxy's log-format (a field added there must be added here).
HAPROXY_FIELDS = {
    "%ci": "10.0.0.5", "%cp": "41234", "%tr": "26/Nov/2026:07:05:26.105", "%ft": "public~", "%b": "public",
    "%s": "pub1", "%TR": "0", "%Tw": "0", "%Tc": "1", "%Tr": "12", "%Ta": "13", "%ST": "200", "%B": "396",
    "%tsc": "----", "%ac": "1", "%fc": "1", "%bc": "0", "%sc": "0", "%rc": "0", "%sq": "0", "%bq": "0",
    "%ID": REQUEST_ID, "%[var(txn.trace_id)]": TRACE_ID, "%[var(txn.why)]": "-", "%[var(txn.keyid)]": KEY_ID, "%HM": "GET",
    "%HPO": "/api/v1/orders/42", "%HV": "HTTP/1.1",
}


def haproxy_log_line() -> str:
    """A request line in the log-format of haproxy/haproxy.cfg.j2's HTTP frontends, field by field."""
    source = (ROOT / "haproxy" / "haproxy.cfg.j2").read_text()
    formats = re.findall(r'^\s*log-format "((?:[^"\\]|\\.)*)"', source, re.M)
    assert len(formats) == 1, formats
    fmt = formats[0].replace('\\"', '"')
    fields = re.findall(r"%\[[^\]]+\]|%[A-Za-z]+", fmt)
    assert set(fields) <= set(HAPROXY_FIELDS), f"a sample value for {set(fields) - set(HAPROXY_FIELDS)}"
    return re.sub(r"%\[[^\]]+\]|%[A-Za-z]+", lambda m: HAPROXY_FIELDS[m.group(0)], fmt)


# --- Tempo ------------------------------------------------------------------------------------------------

def test_tempo_receives_where_the_app_sends_and_answers_where_grafana_asks(rendered):
    config = yaml.safe_load(rendered["tempo"])
    endpoint = urllib.parse.urlsplit(rendered["otlp_endpoint"])
    assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", MONITORING_HOST, PORTS["tempo_otlp"])
    assert endpoint.path in ("", "/")   # the base URL: the app's OTLP/HTTP exporter adds /v1/traces
    receiver = config["distributor"]["receivers"]["otlp"]["protocols"]
    assert set(receiver) == {"http"}
    assert receiver["http"]["endpoint"] == f"{endpoint.hostname}:{endpoint.port}"
    assert (config["server"]["http_listen_address"], config["server"]["http_listen_port"]) == \
        (MONITORING_HOST, PORTS["tempo"])
    assert rendered["tempo_url"] == f"http://{MONITORING_HOST}:{PORTS['tempo']}"
    assert config["server"]["grpc_listen_address"] == "127.0.0.1"
    storage = config["storage"]["trace"]
    assert storage["backend"] == "local" and storage["wal"]["path"] != storage["local"]["path"]
    assert config["overrides"]["defaults"]["compaction"]["block_retention"] == \
        yaml.safe_load((ANSIBLE / "roles" / "tempo" / "defaults" / "main.yml").read_text())["tempo_retention"]
    # Tempo 3 refuses the 2.x-only blocks (it parses strictly); the file must suit both.
    assert not {"compactor", "ingester"} & set(config), sorted(config)


class TempoStandIn:
    """Tempo's three endpoints that the role's validation uses, on a free loopback port: /ready, the OTLP/HTTP
    receiver (JSON only, decoded into OpenTelemetry's own protobuf message by OTLP/JSON's rules: unknown
    fields refused, ids in hex) and /api/traces/<trace id>, which answers what was received."""

    def __init__(self):
        self.spans: dict[str, list] = {}     # trace id -> OTLP spans
        self.reads: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def reply(self, status: int, body: dict | None = None):
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/ready":
                    return self.reply(200)
                trace_id = self.path.removeprefix("/api/traces/")
                stand_in.reads.append(trace_id)
                if trace_id in stand_in.spans:
                    return self.reply(200, {"batches": [{"scopeSpans": [{"spans": stand_in.spans[trace_id]}]}]})
                return self.reply(404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/traces" or self.headers["Content-Type"] != "application/json":
                    return self.reply(415)
                as_proto3 = json.loads(json.dumps(body))   # proto3's JSON has bytes in base64, OTLP's in hex
                for resource in as_proto3["resourceSpans"]:
                    for scope in resource["scopeSpans"]:
                        for span in scope["spans"]:
                            for key in ("traceId", "spanId"):
                                span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
                request = json_format.Parse(json.dumps(as_proto3), ExportTraceServiceRequest())
                for resource, raw in zip(request.resource_spans, body["resourceSpans"]):
                    for scope, raw_scope in zip(resource.scope_spans, raw["scopeSpans"]):
                        for span, raw_span in zip(scope.spans, raw_scope["spans"]):
                            assert len(span.trace_id) == 16 and len(span.span_id) == 8
                            stand_in.spans.setdefault(span.trace_id.hex(), []).append(raw_span)
                return self.reply(200)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_tempo_s_validation_pushes_one_otlp_json_span_and_reads_it_back_by_its_trace_id():
    """The role's validate.yml, run by Ansible (its templating, the uri module) against TempoStandIn: the span
    it pushes is a well-formed OTLP export request, and it asks for that span's trace id until it is there."""
    tempo = TempoStandIn()
    try:
        r = adhoc("mon1", "ansible.builtin.include_role", "name=tempo tasks_from=validate.yml", "--playbook-dir", ".",
                  "-e", json.dumps({"tempo_url": tempo.url, "tempo_otlp_url": tempo.url, "tempo_ready_retries": 2}))
    finally:
        tempo.close()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [(trace_id, [span])] = tempo.spans.items()
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and tempo.reads == [trace_id]
    assert span["name"].startswith("ansible validate ") and int(span["endTimeUnixNano"]) > int(span["startTimeUnixNano"])


def test_the_firewall_lets_the_app_hosts_reach_tempo_s_receiver():
    flows = yaml.safe_load((ANSIBLE / "roles" / "firewall" / "vars" / "main.yml").read_text())["firewall_flows"]
    to_tempo = [f for f in flows if "tempo_otlp" in (f.get("port") if isinstance(f.get("port"), list)
                                                     else [f.get("port")])]
    assert len(to_tempo) == 1 and to_tempo[0]["to"] == "monitoring", to_tempo
    assert set(to_tempo[0]["from"]) == {"app_operator", "app_public"}


# --- Grafana ----------------------------------------------------------------------------------------------

def datasource_refs(value) -> set[str]:
    """Every datasource uid a dashboard (or a part of one) names: {"datasource": {"uid": ...}} or a string."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "datasource":
                found.add(item["uid"] if isinstance(item, dict) else item)
            else:
                found |= datasource_refs(item)
    elif isinstance(value, list):
        for item in value:
            found |= datasource_refs(item)
    return found


def test_grafana_datasources_load_and_link_logs_and_traces_by_uids_that_exist(rendered):
    datasources = yaml.safe_load(rendered["datasources"])["datasources"]
    by_uid = {d["uid"]: d for d in datasources}
    assert len(by_uid) == len(datasources) and set(by_uid) == {"prometheus", "loki", "tempo"}
    assert by_uid["tempo"]["type"] == "tempo" and by_uid["tempo"]["url"] == rendered["tempo_url"]
    assert by_uid["loki"]["url"] == rendered["loki_url"]
    # Loki -> Tempo (a trace id in a line) and Loki -> Loki (a request id), Tempo -> Loki (a trace's lines)
    derived = {f["name"]: f for f in by_uid["loki"]["jsonData"]["derivedFields"]}
    assert derived["trace_id"]["datasourceUid"] == "tempo"
    assert {f["datasourceUid"] for f in derived.values()} <= set(by_uid)
    to_logs = by_uid["tempo"]["jsonData"]["tracesToLogsV2"]
    assert to_logs["datasourceUid"] == "loki" and "${__trace.traceId}" in to_logs["query"]
    assert by_uid["tempo"]["jsonData"]["lokiSearch"]["datasourceUid"] == "loki"


def test_loki_s_trace_id_link_finds_the_trace_in_the_app_s_and_haproxy_s_real_lines(rendered):
    """Grafana reads the first group of the regex (JavaScript; this one means the same in Python)."""
    loki = next(d for d in yaml.safe_load(rendered["datasources"])["datasources"] if d["uid"] == "loki")
    field = next(f for f in loki["jsonData"]["derivedFields"] if f["name"] == "trace_id")
    assert field["matcherType"] == "regex"
    matcher = re.compile(field["matcherRegex"])
    app_line, app_trace = app_log_line()
    assert json.loads(app_line)["trace_id"] == app_trace and json.loads(app_line)["request_id"] == REQUEST_ID
    for line, trace_id in ((app_line, app_trace), (haproxy_log_line(), TRACE_ID)):
        found = matcher.search(line)
        assert found and found.group(1) == trace_id, line
    # a line of no trace (HAProxy logs trace=- when the variable is empty) links nowhere
    assert not matcher.search(haproxy_log_line().replace(f"trace={TRACE_ID}", "trace=-"))
    assert not matcher.search(app_line.replace(app_trace, "-"))


def test_dashboards_load_and_use_only_provisioned_datasources(rendered):
    provider = yaml.safe_load(rendered["dashboards"])["providers"]
    assert [p["options"]["path"] for p in provider] == [rendered["grafana_dashboards_dir"]]
    uids = {d["uid"] for d in yaml.safe_load(rendered["datasources"])["datasources"]}
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files
    dashboard_uids = []
    for path in files:
        dashboard = json.loads(path.read_text())
        assert dashboard.get("uid") and dashboard.get("title"), path.name
        dashboard_uids.append(dashboard["uid"])
        unknown = datasource_refs(dashboard) - uids - BUILT_IN_DATASOURCES
        assert not unknown, (path.name, unknown)
    assert len(set(dashboard_uids)) == len(dashboard_uids), dashboard_uids
    assert yaml.safe_load((ANSIBLE / "roles" / "grafana" / "defaults" / "main.yml").read_text())[
        "grafana_home_dashboard"] in {p.name for p in files}


# --- Loki and Alloy ---------------------------------------------------------------------------------------

def test_loki_listens_where_alloy_pushes_and_keeps_structured_metadata(rendered):
    config = yaml.safe_load(rendered["loki"])
    assert (config["server"]["http_listen_address"], config["server"]["http_listen_port"]) == \
        (MONITORING_HOST, PORTS["loki"])
    assert config["limits_config"]["allow_structured_metadata"] is True
    assert {c["schema"] for c in config["schema_config"]["configs"]} == {"v13"}   # structured metadata needs it
    assert config["ruler"]["alertmanager_url"] == f"http://{MONITORING_HOST}:{PORTS['alertmanager']}"
    push = re.search(r'^\s*url = "([^"]+)"', rendered["alloy"], re.M).group(1)
    assert push == f"{rendered['loki_url']}/loki/api/v1/push"


def alloy_string(config: str, key: str) -> list[str]:
    """The values of `key = "..."` in an Alloy file (its string escapes are JSON's)."""
    return [json.loads(m) for m in re.findall(rf'^\s*{key}\s*=\s*("(?:[^"\\]|\\.)*")', config, re.M)]


def alloy_blocks(config: str, kind: str) -> list[str]:
    """The bodies of every `kind {...}` block (e.g. `stage.match`); braces inside strings come in pairs."""
    blocks = []
    for start in re.finditer(rf"(?m)^\s*{re.escape(kind)}(?: \"[^\"]*\")? \{{", config):
        depth = 0
        for j in range(start.end() - 1, len(config)):
            depth += {"{": 1, "}": -1}.get(config[j], 0)
            if depth == 0:
                blocks.append(config[start.end():j])
                break
        else:
            raise AssertionError(f"{kind}: unbalanced braces")
    return blocks


def empty_keys(block: str) -> set[str]:
    """The names of a `values`/`expressions` map whose values are "" (Alloy: take the field of that name)."""
    return set(re.findall(r'^\s*(\w+)\s*=\s*"",?$', block, re.M))


def role_services() -> set[str]:
    """Every unit a role runs: the values of the roles' `<name>_service` variables, with their Jinja
    resolved from the role's own defaults and vars and group_vars (the app's for each pool)."""
    units = set()
    for role in sorted((ANSIBLE / "roles").iterdir()):
        variables = dict(GROUP_VARS)
        for part in ("defaults", "vars"):
            path = role / part / "main.yml"
            if path.exists():
                variables.update(yaml.safe_load(path.read_text()) or {})
        for name, value in variables.items():
            if not (name.endswith("_service") and isinstance(value, str) and name.startswith(role.name)):
                continue
            for pool in GROUP_VARS["mes_pools"]:
                text = value
                while "{{" in text:
                    text = jinja2.Template(text, undefined=jinja2.StrictUndefined).render(
                        **{**variables, "mes_app_pool": pool})
                units.add(text)
    return units


def test_alloy_ships_the_journal_of_every_service_a_role_runs(rendered):
    config = rendered["alloy"]
    [keep] = [alloy_string(rule, "regex")[0] for rule in alloy_blocks(config, "rule")
              if alloy_string(rule, "action") == ["keep"]]
    services = role_services()
    assert {"mes-operator", "mes-public", "mes-scheduler", "haproxy", "patroni", "pgpool2", "redis-server"} <= services
    assert all(re.fullmatch(keep, f"{unit}.service") for unit in services), \
        sorted(u for u in services if not re.fullmatch(keep, f"{u}.service"))
    # and names no unit that no role runs
    alternatives = keep.removeprefix("(").removesuffix(")\\.service").split("|")
    assert all(any(re.fullmatch(a, unit) for unit in services) for a in alternatives), alternatives
    assert not re.fullmatch(keep, "ssh.service")


def test_alloy_parses_the_app_s_and_haproxy_s_real_lines(rendered):
    config = rendered["alloy"]
    app_line, app_trace = app_log_line()
    app = json.loads(app_line)
    matches = {alloy_string(block, "selector")[0]: block for block in alloy_blocks(config, "stage.match")}
    app_block = matches['{unit=~"mes-(operator|public|scheduler|webhooks|crm-guard)"}']
    [wanted] = [empty_keys(block) for block in alloy_blocks(app_block, "stage.json")]
    [metadata] = [empty_keys(block) for block in alloy_blocks(app_block, "stage.structured_metadata")]
    assert metadata <= wanted and {"request_id", "trace_id", "span_id"} <= metadata
    assert {"level", "request_id", "trace_id", "span_id", "status"} <= wanted <= set(app), wanted - set(app)
    assert app["trace_id"] == app_trace
    haproxy_block = matches['{unit="haproxy"}']
    expression = re.compile(alloy_string(haproxy_block, "expression")[0])
    found = expression.search(haproxy_log_line())
    assert found, haproxy_log_line()
    assert found.groupdict() == {"frontend": "public~", "backend": "public", "server": "pub1", "status": "200",
                                 "termination": "----", "request_id": REQUEST_ID, "trace_id": TRACE_ID, "why": "-",
                                 "key_id": KEY_ID}
    [metadata] = [empty_keys(block) for block in alloy_blocks(haproxy_block, "stage.structured_metadata")]
    assert metadata == set(found.groupdict())


def test_the_local_stack_exports_spans_only_where_mes_otlp_endpoint_says(tmp_path):
    """group_vars' endpoint is Tempo on the VMs' monitoring host (a Jinja expression): locally it never applies."""
    assert "{{" in GROUP_VARS["mes_otlp_endpoint"]
    assert make_ctx("split", {"MES_STACK_DIR": str(tmp_path)}).vars["mes_otlp_endpoint"] == ""
    ctx = make_ctx("split", {"MES_STACK_DIR": str(tmp_path), "MES_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert ctx.vars["mes_otlp_endpoint"] == "http://127.0.0.1:4318"
