"""The infrastructure code without hosts: lint, syntax, the inventory's topology, the rendered
templates (the deploy test in tests/deploy/ runs the playbooks against real systemd hosts)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent
PLAYBOOKS = ["site.yml", "deploy.yml", "switchover.yml", "add_replica.yml", "backup.yml"]


def run(*argv: str, cwd: Path = ANSIBLE, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1",
           "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_ansible_lint_production_profile_is_clean():
    r = run(str(BIN / "ansible-lint"), "--profile", "production", "--nocolor")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in r.stdout + r.stderr


def test_yamllint_is_clean():
    r = run(str(BIN / "yamllint"), "--strict", ".")
    assert r.returncode == 0, r.stdout[-4000:]


@pytest.mark.parametrize("inventory", ["vagrant"])
def test_playbooks_parse(inventory):
    r = run(str(BIN / "ansible-playbook"), "-i", f"inventories/{inventory}/hosts.yml", "--syntax-check",
            *PLAYBOOKS, "-e", "new_replica=db2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def inventory_topology() -> dict:
    r = run(str(BIN / "ansible"), "-i", "inventories/vagrant/hosts.yml", "lb1", "-m", "ansible.builtin.debug",
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
    assert topology["haproxy"]["public_port"] == 80
    # pgBackRest's repository on the backup host, reached over TLS
    assert (topology["backup"]["name"], topology["backup"]["host"], topology["backup"]["remote"]) == \
        ("mon1", "192.168.56.60", True)


def shape(value):
    """The keys of a structure, recursively (a list by its first item): what the templates can rely on."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__ if isinstance(value, bool) else "value"


def test_the_local_stack_and_the_inventory_build_the_same_shape(tmp_path):
    """Both are made by ansible/filter_plugins/mes_topology.py's assemble(); the VMs add alertmanager
    and the host of pgBackRest's repository (remote), the local stack the repository's own folder."""
    sys.path.insert(0, str(ROOT))
    try:
        from stack.topology import build
    finally:
        sys.path.remove(str(ROOT))
    local, vms = shape(build(tmp_path, "split")), shape(inventory_topology())
    vms.pop("alertmanager")
    local_backup, vm_backup = local.pop("backup"), vms.pop("backup")
    assert local_backup["remote"] == vm_backup["remote"] == "bool"
    assert set(local_backup) - {"dir"} == set(vm_backup) - {"host", "name", "port"}
    assert local.keys() == vms.keys()
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


def adhoc(hosts: str, module: str, args: str, *extra: str) -> subprocess.CompletedProcess:
    """An ad-hoc module run on this machine for inventory hosts of the vagrant inventory (group_vars loaded)."""
    return run(str(BIN / "ansible"), "-i", "inventories/vagrant/hosts.yml", hosts, "-c", "local", "-m", module,
               "-a", args, "-e", "ansible_become=false", *extra)


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
    assert clients["192.168.56.31"] == {"operator": 0, "public": 3 * 1}

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
    with pytest.raises(StackError, match="the public pool can hold 24 Pgpool-II clients"):
        dbtier.check_client_slots(ctx)
    r = adhoc("op1", "ansible.builtin.debug", "var=pgpool_budget_errors", "-e", "@roles/pgpool/vars/main.yml",
              "-e", json.dumps({"mes_pools": {**flood, "public": {**flood["public"], "workers": 40}}}))
    assert "the public pool can hold 40 Pgpool-II clients" in r.stdout, r.stdout
