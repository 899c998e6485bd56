"""The infrastructure code without hosts: lint, syntax, the inventory's topology, the rendered
templates (the deploy test in tests/deploy/ runs the playbooks against real systemd hosts)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent
PLAYBOOKS = ["site.yml", "deploy.yml", "switchover.yml", "add_replica.yml", "backup.yml"]
# ansible.cfg names no vault password file: the test and Vagrant inventories run with the throwaway one.
VAULT = ["--vault-password-file", "vault-password.throwaway"]
NFT = shutil.which("nft") or "/usr/sbin/nft"


def run(*argv: str, cwd: Path = ANSIBLE, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1",
           "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# The linters run in a network namespace of their own with nothing but loopback: they reach nothing
# (ansible-lint would look for a newer version of itself, and for collections).
OFFLINE = ["unshare", "--net", "--"]


def test_ansible_lint_production_profile_is_clean():
    r = run(*OFFLINE, str(BIN / "ansible-lint"), "--offline", "--profile", "production", "--nocolor")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in r.stdout + r.stderr


def test_yamllint_is_clean():
    r = run(*OFFLINE, str(BIN / "yamllint"), "--strict", "-f", "parsable", ".")
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout[-4000:]


@pytest.mark.parametrize("inventory", ["vagrant"])
def test_playbooks_parse(inventory):
    r = run(str(BIN / "ansible-playbook"), "-i", f"inventories/{inventory}/hosts.yml", *VAULT, "--syntax-check",
            *PLAYBOOKS, "-e", "new_replica=db2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def inventory_topology() -> dict:
    r = run(str(BIN / "ansible"), "-i", "inventories/vagrant/hosts.yml", *VAULT, "lb1", "-m", "ansible.builtin.debug",
            "-a", "var=mes_topology", "-c", "local")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.split("=>", 1)[1])["mes_topology"]


def test_the_inventory_yields_the_topology_the_templates_expect():
    topology = inventory_topology()
    assert [n["name"] for n in topology["pg_nodes"]] == ["db1", "db2"]
    assert {n["conf_dir"] for n in topology["pg_nodes"]} == {"/etc/postgresql/15/main"}
    assert {n["patroni_port"] for n in topology["pg_nodes"]} == {8008}
    assert [m["name"] for m in topology["etcd"]] == ["db1", "db2", "mon1"]
    # Pgpool-II and the database endpoints run beside the app on every app host, on loopback
    assert topology["pgpool"]["host"] == topology["db_endpoints"]["host"] == "127.0.0.1"
    assert [i["name"] for i in topology["db_endpoints"]["instances"]] == ["op1", "op2", "pub1", "pub2"]
    assert topology["redis"]["host"] == "192.168.56.50"
    assert [a["name"] for a in topology["app_public"]] == ["pub1", "pub2"]
    # a webhook delivery worker on every public host, its /metrics on the host's address
    assert topology["webhooks"] == [{"name": "pub1", "host": "192.168.56.31", "port": 8401},
                                    {"name": "pub2", "host": "192.168.56.32", "port": 8401}]
    assert (topology["haproxy"]["public_port"], topology["haproxy"]["http_port"]) == (443, 80)
    assert topology["haproxy"]["crt"] == "/etc/haproxy/tls/mes.pem"
    # HAProxy on both lb hosts, bound to every address (theirs and the virtual one keepalived moves)
    assert [i["name"] for i in topology["haproxy"]["instances"]] == ["lb1", "lb2"]
    assert (topology["haproxy"]["bind"], topology["haproxy"]["vip"]) == ("0.0.0.0", "192.168.56.100")
    # pgBackRest's repository on the backup host, reached over TLS
    assert (topology["backup"]["name"], topology["backup"]["host"], topology["backup"]["remote"]) == \
        ("mon1", "192.168.56.60", True)
    # The CRM's own server (group crm_db): the MES nodes publish to it (patroni.yml's slot, pg_hba's line)
    assert (topology["crm_db"]["name"], topology["crm_db"]["host"], topology["crm_db"]["port"]) == \
        ("crmdb1", "192.168.56.70", 5432)


def shape(value):
    """The keys of a structure, recursively (a list by its first item): what the templates can rely on."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__ if isinstance(value, bool) else "value"


def test_the_local_stack_and_the_inventory_build_the_same_shape(tmp_path):
    """Both are made by ansible/filter_plugins/mes_topology.py's assemble(); the VMs add the load
    balancers' virtual address and the host of pgBackRest's repository (remote), the local
    stack the repository's own folder."""
    sys.path.insert(0, str(ROOT))
    try:
        from stack.topology import build
    finally:
        sys.path.remove(str(ROOT))
    local, vms = shape(build(tmp_path, "split")), shape(inventory_topology())
    assert vms["haproxy"].pop("vip") == "value" and "vip" not in local["haproxy"]
    local_backup, vm_backup = local.pop("backup"), vms.pop("backup")
    assert local_backup["remote"] == vm_backup["remote"] == "bool"
    assert set(local_backup) - {"dir"} == set(vm_backup) - {"host", "name", "port"}
    assert local.keys() == vms.keys()
    assert "crm_db" in local and local["crm_db"] == vms["crm_db"]  # both have the CRM's database, alike
    for key in local:
        if local[key] and vms[key]:          # app_single is empty in both split topologies
            assert local[key] == vms[key], key


def test_monitoring_config_rules_and_rule_tests(tmp_path):
    """promtool check config/rules and `promtool test rules` (a wrong expectation fails them)."""
    r = subprocess.run([sys.executable, str(ROOT / "monitoring" / "check.py")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_vagrantfile_validates(tmp_path):
    assert shutil.which("vagrant"), "make test installs vagrant"
    r = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "VAGRANT_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr


# --- the firewall role: the rules of the test inventory, checked and loaded in network namespaces ----------

TEST_INVENTORY = ANSIBLE / "inventories" / "test" / "hosts.yml"
PROBE = ROOT / "tests" / "firewall_probe.py"
CTL, STRANGER = "10.213.0.2", "10.213.0.99"      # the test inventory's controller; an address of nobody's
# One more load balancer and the CRM's server, as the inventory will have them (keepalived's pair, crm_db).
EXTRA_INVENTORY = {"all": {"children": {"lb": {"hosts": {"lb2": {"ansible_host": "10.213.0.11"}}},
                                         "crm_db": {"hosts": {"crmdb1": {"ansible_host": "10.213.0.70"}}}}}}
# target host -> (source host, port, let in?): the flows of the topology, and some it must not have.
FLOWS = {
    "op1": [("lb1", 8000, True), ("mon1", 8000, True), ("mon1", 9100, True), ("mon1", 8405, True), ("ctl", 8405, True),
            ("ctl", 22, True),
            ("lb1", 5432, False), ("lb1", 22, False), ("stranger", 8000, False), ("pub1", 8000, False),
            ("db1", 8000, False), ("op2", 9999, False)],
    "pool1": [("op1", 6379, True), ("pub2", 6379, True), ("mon1", 9121, True),
              ("lb1", 6379, False), ("lb1", 9121, False), ("stranger", 6379, False), ("db1", 6379, False)],
    "db1": [("op2", 5432, True), ("pub1", 8008, True), ("crmdb1", 5432, True), ("crmdb1", 8008, False), ("db2", 5432, True), ("db2", 8008, True), ("db2", 2379, True),
            ("mon1", 2379, True), ("mon1", 2380, True), ("mon1", 8432, True), ("mon1", 9187, True), ("ctl", 8008, True), ("ctl", 22, True),
            ("lb1", 5432, False), ("lb1", 8008, False), ("pool1", 5432, False), ("op1", 2379, False),
            ("ctl", 5432, False), ("stranger", 8008, False), ("op1", 9187, False), ("op1", 8432, False)],
    "mon1": [("ctl", 9090, True), ("ctl", 3000, True), ("ctl", 9093, True), ("lb1", 3100, True), ("pool1", 3100, True),
             ("db1", 8432, True), ("db2", 2379, True), ("db2", 2380, True),
             ("pub1", 4318, True), ("op2", 4318, True),
             ("stranger", 9090, False), ("op1", 9090, False), ("op1", 3000, False), ("stranger", 3100, False),
             ("op1", 8432, False), ("op1", 2379, False), ("lb1", 4318, False), ("db1", 4318, False),
             ("stranger", 4318, False), ("op1", 3200, False), ("ctl", 3200, False)],
    "lb1": [("stranger", 80, True), ("stranger", 443, True), ("stranger", 8443, True), ("stranger", 8081, False), ("mon1", 8404, True), ("ctl", 8404, True),
            ("lb2", 10000, True), ("lb2", 8404, True), ("ctl", 22, True),
            ("stranger", 8404, False), ("stranger", 10000, False), ("lb2", 22, False), ("stranger", 22, False),
            ("op1", 8404, False)],
    "pub1": [("lb1", 8000, True), ("mon1", 8401, True),
             ("stranger", 8401, False), ("op1", 8401, False), ("lb1", 8401, False)],
    # The CRM's server: its exporter for Prometheus; nobody of the MES connects to it (it connects to them).
    "crmdb1": [("mon1", 9187, True), ("op1", 5432, False), ("pub2", 5432, False),
               ("lb1", 5432, False), ("stranger", 5432, False), ("db1", 5432, False)],
}


def ip(*argv: str) -> None:
    r = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (argv, r.stderr)


def in_netns(ns: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def netns_pair():
    """Two fresh network namespaces joined by a veth pair, nothing else: the host under test (server)
    and every other host (client, which holds all their addresses). Removed afterwards, with the
    listeners started in them."""
    server, client = f"mesfw-s{os.getpid()}", f"mesfw-c{os.getpid()}"
    started: list[subprocess.Popen] = []
    ip("netns", "add", server)
    try:
        ip("netns", "add", client)
        ip("-n", client, "link", "add", "veth-c", "type", "veth", "peer", "name", "veth-s", "netns", server)
        for ns, dev in ((server, "veth-s"), (client, "veth-c")):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
        yield server, client, started
    finally:
        for proc in started:
            proc.terminate()
            proc.wait(timeout=10)
        for ns in (server, client):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def start_listener(ns: str, ports, started: list) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(PROBE), "listen", *map(str, sorted(ports))],
                            stdout=subprocess.PIPE, text=True)
    started.append(proc)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def probe(ns: str, checks: list[dict]) -> list[str]:
    r = in_netns(ns, sys.executable, str(PROBE), "probe", json.dumps(checks))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def render_rules(tmp_path: Path, ns: str) -> dict[str, Path]:
    """The role's rules task for every host of the test inventory (plus EXTRA_INVENTORY), run inside the
    network namespace `ns`: the template's own check (`nft -c -f`) runs there. host -> rendered file."""
    extra = tmp_path / "extra.yml"
    extra.write_text(json.dumps(EXTRA_INVENTORY))
    out = tmp_path / "rules"
    out.mkdir()
    r = run("ip", "netns", "exec", ns, str(BIN / "ansible"), "-i", str(TEST_INVENTORY), "-i", str(extra), *VAULT,
            "--playbook-dir", ".", "all", "-c", "local", "-m", "ansible.builtin.include_role",
            "-a", "name=firewall tasks_from=rules.yml", "-e", f"ansible_python_interpreter={sys.executable}",
            "-e", f"firewall_config_file={out}/{{{{ inventory_hostname }}}}.nft")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return {p.stem: p for p in out.glob("*.nft")}


def addresses() -> dict[str, str]:
    hosts = {"ctl": CTL, "stranger": STRANGER}
    for inventory in (yaml.safe_load(TEST_INVENTORY.read_text()), EXTRA_INVENTORY):
        for group in inventory["all"]["children"].values():
            hosts.update({h: v["ansible_host"] for h, v in ((group or {}).get("hosts") or {}).items()
                          if v and v.get("ansible_host")})
    return hosts


def become(server: str, client: str, target: str, hosts: dict[str, str], rules: Path) -> None:
    """The server namespace is now `target` (its address, its rules); the client holds every other address."""
    ip("-n", server, "addr", "flush", "dev", "veth-s")
    ip("-n", client, "addr", "flush", "dev", "veth-c")
    ip("-n", server, "addr", "add", f"{hosts[target]}/24", "dev", "veth-s")
    ip("-n", server, "addr", "add", "fd00:213::1/64", "dev", "veth-s", "nodad")
    for name, address in hosts.items():
        if name != target:
            ip("-n", client, "addr", "add", f"{address}/24", "dev", "veth-c")
    ip("-n", client, "addr", "add", "fd00:213::99/64", "dev", "veth-c", "nodad")
    loaded = in_netns(server, NFT, "-f", str(rules))
    assert loaded.returncode == 0, loaded.stderr


def test_firewall_rules_of_the_test_inventory_let_in_only_the_topology_s_flows(tmp_path, netns_pair):
    """Rendered by the role for every host (checked by `nft -c` in a fresh namespace), then loaded into a
    namespace that takes each host's address in turn, and probed with real packets from the others'
    addresses: the topology's flows connect, everything else is dropped."""
    server, client, started = netns_pair
    rules = render_rules(tmp_path, server)
    assert set(FLOWS) <= set(rules) and "lb2" in rules, sorted(rules)
    for path in rules.values():
        checked = in_netns(server, NFT, "-c", "-f", str(path))
        assert checked.returncode == 0, (path.name, checked.stderr)
    hosts = addresses()
    listener = start_listener(server, {port for flows in FLOWS.values() for _, port, _ in flows}, started)
    start_listener(client, [6379], started)           # pool1's Redis, for the op1 -> Redis reply below
    for target, flows in FLOWS.items():
        become(server, client, target, hosts, rules[target])
        checks = [{"src": hosts[src], "dst": hosts[target], "port": port, "proto": "tcp"} for src, port, _ in flows]
        outcomes = probe(client, checks)
        wrong = [(src, port, got) for (src, port, allowed), got in zip(flows, outcomes)
                 if got != ("open" if allowed else "filtered")]
        assert not wrong, f"{target}: {wrong}"
    # op1 again: ping gets in, IPv6 is filtered as well (neighbour discovery works), replies to its own
    # connections get in
    become(server, client, "op1", hosts, rules["op1"])
    assert probe(client, [{"src": STRANGER, "dst": hosts["op1"], "proto": "icmp"},
                          {"src": "fd00:213::99", "dst": "fd00:213::1", "proto": "icmp"},
                          {"src": "fd00:213::99", "dst": "fd00:213::1", "port": 8000, "proto": "tcp"}]) == \
        ["open", "open", "filtered"]
    assert probe(server, [{"src": hosts["op1"], "dst": hosts["pool1"], "port": 6379, "proto": "tcp"}]) == ["open"]
    # VRRP reaches lb1 from the other load balancer only
    become(server, client, "lb1", hosts, rules["lb1"])
    probe(client, [{"src": hosts["lb2"], "dst": hosts["lb1"], "proto": "vrrp"},
                   {"src": STRANGER, "dst": hosts["lb1"], "proto": "vrrp"}])
    time.sleep(0.5)
    listener.terminate()
    received = listener.communicate(timeout=10)[0].split()
    assert "vrrp" in received and hosts["lb2"] in received and STRANGER not in received, received


def firewall_filter():
    spec = importlib.util.spec_from_file_location("mes_firewall", ANSIBLE / "filter_plugins" / "mes_firewall.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.mes_firewall_rules


def test_firewall_flow_table_reads_ports_by_name_and_refuses_what_it_cannot_match():
    """Ports by their mes_ports name (so the public ports follow mes_ports once TLS moves them); IPv6
    admin networks get ip6 rules; an unknown port name or a host without an IP address is an error."""
    rules_of = firewall_filter()
    groups = {"all": ["lb1", "lb2", "mon1"], "lb": ["lb1", "lb2"], "monitoring": ["mon1"]}
    hostvars = {"lb1": {"ansible_host": "10.0.0.1"}, "lb2": {"ansible_host": "10.0.0.2"},
                "mon1": {"ansible_host": "10.0.0.9", "mes_address": "fd00::9"}}
    flows = [{"name": "public", "from": "any", "to": "lb", "port": ["http", "public", "operator"]},
             {"name": "vrrp", "from": "lb", "to": "lb", "proto": "vrrp"},
             {"name": "stats", "from": ["monitoring", "admin"], "to": "lb", "port": "haproxy_stats"}]
    named = {"admin": ["192.0.2.0/24", "2001:db8::/32", "192.0.2.7"]}
    rules = rules_of(flows, "lb1", groups, hostvars, {"http": 80, "public": 443, "operator": 8443,
                                                       "haproxy_stats": 8404}, named)
    assert rules == [
        {"name": "public", "proto": "tcp", "ports": [80, 443, 8443], "any": True, "ip": [], "ip6": []},
        {"name": "vrrp", "proto": "vrrp", "ports": [], "any": False, "ip": ["10.0.0.2"], "ip6": []},
        {"name": "stats", "proto": "tcp", "ports": [8404], "any": False, "ip": ["192.0.2.0/24"],
         "ip6": ["2001:db8::/32", "fd00::9"]}]
    assert rules_of(flows, "mon1", groups, hostvars, {}, named) == []        # no flow leads to it
    with pytest.raises(ValueError, match="names the port 'public'"):
        rules_of(flows, "lb1", groups, hostvars, {"http": 80}, named)
    with pytest.raises(ValueError, match="not an IP address"):
        rules_of(flows, "lb1", groups, {**hostvars, "lb2": {"ansible_host": "lb2.example"}}, {"http": 80, "public": 1,
                                                                                             "operator": 2}, named)


# --- the throwaway vault --------------------------------------------------------------------------------------

def test_the_throwaway_vault_runs_only_where_the_inventory_allows_it(tmp_path):
    """site.yml against an inventory of its own (no mes_throwaway_vault_allowed) with the throwaway
    password stops at the check, before any play reaches a host; the test and Vagrant inventories pass."""
    inventory = tmp_path / "hosts.yml"
    # should the check let it through, the next play fails at once on loopback's closed port 1
    inventory.write_text(json.dumps({"all": {"vars": {"ansible_host": "127.0.0.1", "ansible_port": 1},
                                             "children": {"lb": {"hosts": {"prod1": {}}}}}}))
    r = run(str(BIN / "ansible-playbook"), "-i", str(inventory), *VAULT, "site.yml")
    assert r.returncode != 0
    assert "Refusing to run: group_vars/all/vault.yml is the THROWAWAY vault" in r.stdout, r.stdout[-3000:]
    assert "PLAY [Base of every host]" not in r.stdout, r.stdout[-3000:]
    for allowed in ("test", "vagrant"):
        r = run(str(BIN / "ansible-playbook"), "-i", f"inventories/{allowed}/hosts.yml", *VAULT, "vault_check.yml")
        assert r.returncode == 0 and "failed=0" in r.stdout, r.stdout[-3000:]


def adhoc(hosts: str, module: str, args: str, *extra: str) -> subprocess.CompletedProcess:
    """An ad-hoc module run on this machine for inventory hosts of the vagrant inventory (group_vars loaded)."""
    return run(str(BIN / "ansible"), "-i", "inventories/vagrant/hosts.yml", hosts, "-c", "local", "-m", module,
               "-a", args, "-e", "ansible_become=false", *VAULT, *extra)


def test_each_pool_runs_in_its_slice_with_its_cpu_weight(tmp_path):
    """The role mes_app's slice and unit as Ansible renders them for an operator and a public host:
    mes_<pool>.slice (top-level) with the pool's cpu_weight from group_vars, the unit in it."""
    for template in ("mes.slice", "mes.service"):
        r = adhoc("op1,pub1", "ansible.builtin.template",
                  f"src=roles/mes_app/templates/{template}.j2 dest={tmp_path}/{{{{ inventory_hostname }}}}.{template}",
                  "-e", "@roles/mes_app/defaults/main.yml")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    pools = yaml.safe_load((ANSIBLE / "group_vars" / "all" / "main.yml").read_text())["mes_pools"]
    assert pools["operator"]["cpu_weight"] > pools["public"]["cpu_weight"]
    for host, pool in (("op1", "operator"), ("pub1", "public")):
        assert f"\nCPUWeight={pools[pool]['cpu_weight']}\n" in (tmp_path / f"{host}.mes.slice").read_text()
        assert f"\nSlice=mes_{pool}.slice\n" in (tmp_path / f"{host}.mes.service").read_text()


def test_the_webhook_worker_runs_on_the_public_hosts_in_the_public_pool_s_slice(tmp_path):
    """mes-webhooks.service as Ansible renders it for a public host: in mes_public.slice, with the public
    pool's environment file, its metrics on the host's address and mes_ports.webhooks; no worker on an
    operator host."""
    for host, runs in (("op1", False), ("pub1", True)):
        r = adhoc(host, "ansible.builtin.debug", "msg={{ mes_app_webhooks | bool }}", "-e", "@roles/mes_app/defaults/main.yml")
        assert r.returncode == 0 and json.loads(r.stdout.split("=>", 1)[1])["msg"] is runs, r.stdout[-3000:]
    r = adhoc("pub1", "ansible.builtin.template",
              f"src=roles/mes_app/templates/mes-webhooks.service.j2 dest={tmp_path}/mes-webhooks.service",
              "-e", "@roles/mes_app/defaults/main.yml")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    unit = (tmp_path / "mes-webhooks.service").read_text()
    assert "\nSlice=mes_public.slice\n" in unit and "\nEnvironmentFile=/etc/mes/public.env\n" in unit
    assert "\nExecStart=/opt/mes/current/venv/bin/mes deliver-webhooks --metrics-host 192.168.56.31 " \
           "--metrics-port 8401\n" in unit


def webhook_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line.startswith("MES_WEBHOOK_"))


def test_webhook_settings_come_from_group_vars_with_each_site_s_own_over_them(tmp_path):
    """One source: group_vars' mes_webhooks (production: https only, no private address) reach the app's
    environment file as Ansible renders it; the test inventory's mes_webhooks_site allows its own network over
    http, the local stack loopback; every other setting stays group_vars'."""
    group = yaml.safe_load((ANSIBLE / "group_vars" / "all" / "main.yml").read_text())["mes_webhooks"]
    assert group["allow_http"] is False and group["allowed_networks"] == [] and group["retry_hours"] >= 72
    extra = json.dumps({"pool": "public", "instance": {"name": "pub1", "host": "h", "port": 1}, "database_url": "d",
                        "redis_url": "r", "metrics_dir": "m"})
    rendered = {}
    for inventory in ("vagrant", "test"):
        r = run(str(BIN / "ansible"), "-i", f"inventories/{inventory}/hosts.yml", "pub1", "-c", "local", "-m",
                "ansible.builtin.template", "-a", f"src=../src/mes/gunicorn/instance.env.j2 dest={tmp_path}/{inventory}.env",
                "-e", "ansible_become=false", "-e", extra, *VAULT)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        rendered[inventory] = webhook_env((tmp_path / f"{inventory}.env").read_text())
    sys.path.insert(0, str(ROOT))
    try:
        from stack.topology import make_ctx
    finally:
        sys.path.remove(str(ROOT))
    ctx = make_ctx("split", {"MES_STACK_DIR": str(tmp_path / "stack")})
    ctx.render("src/mes/gunicorn/instance.env.j2", tmp_path / "local.env", extra=json.loads(extra))
    rendered["local"] = webhook_env((tmp_path / "local.env").read_text())
    same = {f"MES_WEBHOOK_{key.upper()}": str(value) for key, value in group.items()
            if key not in ("allow_http", "allowed_networks")}
    for name, env in rendered.items():
        assert {k: v for k, v in env.items() if k in same} == same, name
    assert (rendered["vagrant"]["MES_WEBHOOK_ALLOW_HTTP"], rendered["vagrant"]["MES_WEBHOOK_ALLOWED_NETWORKS"]) == ("0", "")
    assert (rendered["test"]["MES_WEBHOOK_ALLOW_HTTP"], rendered["test"]["MES_WEBHOOK_ALLOWED_NETWORKS"]) == \
        ("1", "10.213.0.0/24")
    assert (rendered["local"]["MES_WEBHOOK_ALLOW_HTTP"], rendered["local"]["MES_WEBHOOK_ALLOWED_NETWORKS"]) == \
        ("1", "127.0.0.0/8,::1/128")


def test_the_public_pool_can_never_fill_pgpools_client_slots(tmp_path):
    """Per Pgpool-II, the operator pool and its scheduler fit in pgpool_operator_reserve and the public
    pool in the slots left: as the role pgpool's assert computes it for the inventory (one Pgpool-II per
    app host), and as `make up` checks it (one for all instances). A public pool that could take the
    reserve is refused by both."""
    r = adhoc("op1", "ansible.builtin.debug", "var=pgpool_budget_errors", "-e", "@roles/pgpool/vars/main.yml")
    assert r.returncode == 0 and json.loads(r.stdout.split("=>", 1)[1])["pgpool_budget_errors"] == [], r.stdout
    r = adhoc("op1", "ansible.builtin.debug", "msg={{ mes_topology | mes_pgpool_clients(mes_pools) }}")
    clients = json.loads(r.stdout.split("=>", 1)[1])["msg"]
    assert clients["192.168.56.21"] == {"operator": 3 * 2 + 2, "public": 0}  # 3 workers x (1 + 1), the scheduler
    assert clients["192.168.56.31"] == {"operator": 0, "public": 3 * 1 + 1}  # 3 workers x 1, the webhook worker

    sys.path.insert(0, str(ROOT))
    try:
        from stack import dbtier
        from stack.base import StackError
        from stack.topology import make_ctx
    finally:
        sys.path.remove(str(ROOT))
    ctx = make_ctx("split", {"MES_STACK_DIR": str(tmp_path)})
    dbtier.check_client_slots(ctx)
    flood = {**ctx.vars["mes_pools"], "public": {**ctx.vars["mes_pools"]["public"], "workers": 12}}
    ctx.vars["mes_pools"] = flood
    with pytest.raises(StackError, match="the public pool can hold 25 Pgpool-II clients"):  # 2 x 12, the worker
        dbtier.check_client_slots(ctx)
    r = adhoc("op1", "ansible.builtin.debug", "var=pgpool_budget_errors", "-e", "@roles/pgpool/vars/main.yml",
              "-e", json.dumps({"mes_pools": {**flood, "public": {**flood["public"], "workers": 40}}}))
    assert "the public pool can hold 41 Pgpool-II clients" in r.stdout, r.stdout  # 40 workers, the webhook worker
