"""On-call's questions against the running topology (its own stack, started as `make up` does): Pgpool-II's
series in Prometheus against SHOW POOL_NODES read directly, the standby's select count growing with the
API's reads, a flooding key attributed to its client in the app's metric and named by its id (never the
key) in HAProxy's log, and every Prometheus query of the on-call dashboard answering."""
from __future__ import annotations

import hashlib
import json
import re
import time

import pytest
import requests
from stack import dbtier
from stackutil import GROUP_VARS, ROOT, running_stack

pytestmark = pytest.mark.topology

DASHBOARD = ROOT / "monitoring" / "dashboards" / "mes-oncall.json"


@pytest.fixture(scope="module")
def stack():
    with running_stack() as running:
        yield running


def query(stack, expr: str) -> list[dict]:
    answer = requests.get(f"{stack.prometheus}/api/v1/query", params={"query": expr}, auth=stack.monitoring,
                          timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def by_node(result: list[dict]) -> dict[str, float]:
    return {r["metric"]["node_id"]: float(r["value"][1]) for r in result}


def wait_for(check, timeout: float = 60, every: float = 1):
    """Call `check` until it returns something true (returned) or the time is up (its last answer)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(every)


def key_id(headers: dict) -> str:
    return hashlib.sha256(headers["Authorization"].split()[1].encode()).hexdigest()[:8]


def test_pgpool_series_match_show_pool_nodes(stack):
    assert wait_for(lambda: query(stack, 'pgpool:backend_up{job="pgpool"}'), 90), "no pgpool series in Prometheus"
    assert float(query(stack, 'up{job="pgpool"}')[0]["value"][1]) == 1
    assert float(query(stack, 'pg_up{job="pgpool"}')[0]["value"][1]) == 1
    direct = {row["node_id"]: row for row in dbtier.pool_nodes(stack.ctx)}
    assert sorted(direct) == ["0", "1"]
    assert direct["0"]["role"] == "primary" and direct["1"]["role"] == "standby"

    # The states as labels, exactly as SHOW POOL_NODES shows them, and as 0/1 series.
    backends = query(stack, 'pgpool_backend_port{job="pgpool"}')
    assert {r["metric"]["node_id"]: (r["metric"]["role"], r["metric"]["status"], r["metric"]["pg_status"],
                                     r["metric"]["pg_role"], float(r["value"][1])) for r in backends} == \
        {n: (row["role"], row["status"], row["pg_status"], row["pg_role"], float(row["port"]))
         for n, row in direct.items()}
    assert by_node(query(stack, 'pgpool:backend_up')) == \
        {n: 1.0 if row["status"] in ("up", "waiting") else 0.0 for n, row in direct.items()}
    assert by_node(query(stack, 'pgpool_nodes_lb_weight{job="pgpool"}')) == \
        {n: float(row["lb_weight"]) for n, row in direct.items()}
    # Counters: what Prometheus scraped last is at most what Pgpool-II says now.
    scraped = by_node(query(stack, 'pgpool_nodes_select_cnt{job="pgpool"}'))
    now = {row["node_id"]: int(row["select_cnt"]) for row in dbtier.pool_nodes(stack.ctx)}
    for node in ("0", "1"):
        assert 0 <= scraped[node] <= now[node], (node, scraped, now)
    # Client slots: one series per child, num_init_children of them; the exporter holds one itself.
    assert float(query(stack, 'pgpool:slots')[0]["value"][1]) == GROUP_VARS["pgpool_num_init_children"]
    assert 1 <= float(query(stack, 'pgpool:slots_in_use')[0]["value"][1]) < GROUP_VARS["pgpool_num_init_children"]


def test_the_standby_select_count_grows_when_the_api_serves_reads(stack):
    partner = stack.new_key("pgpool-reads")
    standby = 'pgpool_nodes_select_cnt{job="pgpool", node_id="1", role="standby"}'
    wait_for(lambda: query(stack, standby), 30)
    before_prometheus = float(query(stack, standby)[0]["value"][1])
    before_direct = int(next(r for r in dbtier.pool_nodes(stack.ctx) if r["node_id"] == "1")["select_cnt"])
    with requests.Session() as s:
        for _ in range(40):
            assert s.get(f"{stack.public}/api/v1/orders?limit=5", headers=partner, timeout=10).status_code == 200
    after_direct = int(next(r for r in dbtier.pool_nodes(stack.ctx) if r["node_id"] == "1")["select_cnt"])
    assert after_direct - before_direct >= 40  # every list read of the public pool went to the standby
    grown = wait_for(lambda: float(query(stack, standby)[0]["value"][1]) - before_prometheus >= 40, 30)
    assert grown, (before_prometheus, query(stack, standby))
    share = wait_for(lambda: query(stack, 'sum(rate(pgpool_nodes_select_cnt{job="pgpool", role="standby"}[1m])) > 0'),
                     30)
    assert share


def test_a_flooding_key_is_named_by_its_client_in_the_metrics_and_by_its_id_in_haproxys_log(stack, one_rate_window):
    """The app counts what reaches it per client (its 200s and flask-limiter's 429s); HAProxy refuses
    the rest itself, and only its log knows them: there the key appears as its id, never itself."""
    flooder, calm = stack.new_key("pgpool-flood", tier="trial"), stack.new_key("pgpool-calm")
    kid, token = key_id(flooder), flooder["Authorization"].split()[1]
    app_limit = int(GROUP_VARS["mes_rate_limits"]["trial"].split("/")[0])
    with requests.Session() as s:
        app_answers = [s.get(f"{stack.public}/api/v1/orders?limit=1", headers=flooder, timeout=10).status_code
                       for _ in range(app_limit + 5)]
        assert s.get(f"{stack.public}/api/v1/orders?limit=1", headers=calm, timeout=10).status_code == 200
        # Past HAProxy's per-key rate on a path HAProxy answers itself (fast: no app worker involved).
        flood = [s.get(f"{stack.public}/not-an-api-path", headers=flooder, timeout=10).status_code
                 for _ in range(GROUP_VARS["haproxy_key_rate_limit"] + 10)]
        refused = s.get(f"{stack.public}/api/v1/orders?limit=1", headers=flooder, timeout=10)
    assert app_answers.count(200) == app_limit and app_answers.count(429) == 5, app_answers
    assert flood[-1] == 429 and refused.status_code == 429 and "RateLimit-Limit" not in refused.headers

    # The app's metric: the client by name and key id, 200s and 429s apart; the other client apart.
    series = 'sum by (client, key_id, status) (mes_api_client_requests_total{job="mes_public", client="pgpool-flood"})'
    def counts() -> dict[str, float]:  # both public instances' last scrapes, summed
        return {r["metric"]["status"]: float(r["value"][1]) for r in query(stack, series) if r["metric"]["key_id"] == kid}

    assert wait_for(lambda: counts() == {"200": app_limit, "429": 5}, 30), counts()
    calm = 'sum(mes_api_client_requests_total{job="mes_public", client="pgpool-calm"}) == 1'
    assert wait_for(lambda: query(stack, calm), 30)

    # HAProxy's log: its own 429s name the key id; the key itself is nowhere in it.
    log = stack.ctx.logfile("haproxy")
    def refusals():
        return [line for line in log.read_text(errors="replace").splitlines()
                if " 429 " in line and re.search(rf" key={kid}( |$)", line) and "why=key-rate" in line]
    assert wait_for(refusals, 10), log.read_text(errors="replace").splitlines()[-5:]
    assert token not in log.read_text(errors="replace")
    # ...and `mes list-clients --key-id` names the client from that id.
    listed = stack.mes("list-clients", "--key-id", kid).splitlines()
    assert len(listed) == 2 and listed[1].split("\t")[0] == "pgpool-flood" and listed[1].split("\t")[4] == kid


def test_every_prometheus_query_of_the_on_call_dashboard_answers(stack):
    """Traffic on both pools first (an operator's login and queue, partner reads), then every query of
    monitoring/dashboards/mes-oncall.json (the Loki panel aside: the local stack runs no Loki)."""
    partner = stack.new_key("oncall-dashboard")
    s = requests.Session()
    s.headers["Referer"] = f"{stack.operator}/operator/"
    token = s.get(f"{stack.operator}/operator/login", timeout=10).text \
        .split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    r = s.post(f"{stack.operator}/operator/login", data={"login": "demo", "password": "demo-pass",
                                                         "csrf_token": token}, timeout=10)
    assert r.status_code == 200 and "Orders queue" in r.text
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [t for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs = [t["expr"].replace("$__rate_interval", "1m") for t in targets if t["datasource"]["type"] == "prometheus"]
    assert len(exprs) >= 20 and any(t["datasource"]["type"] == "loki" for t in targets)
    missing = set(exprs)
    deadline = time.monotonic() + 120
    while missing and time.monotonic() < deadline:
        for _ in range(10):
            s.get(f"{stack.operator}/operator/", timeout=10)
            requests.get(f"{stack.public}/api/v1/orders?limit=5", headers=partner, timeout=10)
        for expr in list(missing):
            if query(stack, expr):
                missing.discard(expr)
        time.sleep(2)
    assert not missing, sorted(missing)
