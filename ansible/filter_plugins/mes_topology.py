"""`mes_topology`: where each component of the MES runs (its shape: stack/CONTRACT.md).

One builder, `assemble()`, and the constructors of its parts make the structure; both places that
need it call them: the `mes_topology` filter below (from the inventory, on VMs) and the local
one-machine stack (stack/topology.py, from stack/local.yml). Plain Python, no Ansible import, so
that the local stack can load this file as it is.
"""
from __future__ import annotations

PG_DATA = "/var/lib/postgresql/{version}/main"     # Patroni's data directory on the VMs
PG_CONF = "/etc/postgresql/{version}/main"         # mes.conf, pg_hba.conf, Patroni's postgresql.conf


# --- the parts, each made in one place -------------------------------------------------------------

def pg_node(i: int, name: str, host: str, port: int, data_dir: str, conf_dir: str, exporter_port: int,
            patroni_port: int, socket_dir: str = "/var/run/postgresql") -> dict:
    return {"id": i, "name": name, "host": host, "port": port, "data_dir": data_dir, "conf_dir": conf_dir,
            "socket_dir": socket_dir, "exporter_port": exporter_port, "patroni_port": patroni_port}


def etcd_member(name: str, host: str, client_port: int, peer_port: int, folder: str) -> dict:
    return {"name": name, "host": host, "client_port": client_port, "peer_port": peer_port, "dir": folder}


def backup_repository(repo_path: str, log_dir: str, lock_dir: str, host: dict | None = None) -> dict:
    """pgBackRest's repository: a folder of its own locally; on VMs a folder of another host (`host`:
    name, address and port of its TLS server), which the database nodes reach over TLS."""
    repository = {"repo_path": repo_path, "log_dir": log_dir, "lock_dir": lock_dir, "remote": host is not None}
    if host is not None:
        repository.update(host=host["host"], name=host["name"], port=host["port"])
    return repository


def crm_db(name: str, host: str, port: int, data_dir: str, conf_dir: str, exporter_port: int,
           socket_dir: str = "/var/run/postgresql") -> dict:
    """The CRM's own PostgreSQL: one plain server (no Patroni, never a failover target) that subscribes to
    the MES's publication `crm` (mes/crm_contract.py)."""
    return {"name": name, "host": host, "port": port, "data_dir": data_dir, "conf_dir": conf_dir,
            "exporter_port": exporter_port, "socket_dir": socket_dir}


def app(name: str, host: str, port: int) -> dict:
    return {"name": name, "host": host, "port": port}


def instance(name: str, host: str) -> dict:
    """A host that runs a per-host component (the database endpoints, HAProxy): Prometheus scrapes it
    there."""
    return {"name": name, "host": host}


def assemble(*, single: bool, pg_bindir: str, pg_nodes: list[dict], etcd: list[dict], ports: dict, dirs: dict,
             app_operator: list[dict], app_public: list[dict], app_single: list[dict],
             node_exporters: list[dict], hosts: dict, db_endpoint_instances: list[dict],
             lb_instances: list[dict], vip: str | None = None, backup: dict | None = None,
             webhooks: list[dict] | None = None, crm: dict | None = None) -> dict:
    """The whole structure. `hosts`: component -> address (pgpool, redis, haproxy: what HAProxy's
    frontends bind, prometheus, alertmanager, db_endpoints); `ports`: mes_ports-like names; `dirs`:
    component -> folder; `lb_instances`: the hosts that run HAProxy (its peers, Prometheus's targets);
    `vip`: the virtual address keepalived moves between them (VMs only); `backup`: pgBackRest's
    repository (repo_path, log_dir, lock_dir; on VMs also the host it is on and its TLS server's port:
    `remote`); `webhooks`: the webhook delivery workers (name, host, port of their /metrics); `crm`: the
    CRM's database (crm_db()), when there is one: the MES then publishes to it (wal_level logical,
    Patroni's permanent slot `crm`)."""
    topology = {
        "single": single,
        "pg_bindir": pg_bindir,
        "pg_nodes": pg_nodes,
        "etcd": etcd,
        # exporter_port: its exporter (a postgres_exporter through it), where the database endpoints run
        "pgpool": {"host": hosts["pgpool"], "port": ports["pgpool"], "pcp_port": ports["pgpool_pcp"],
                   "exporter_port": ports["pgpool_exporter"], "dir": dirs["pgpool"]},
        "redis": {"host": hosts["redis"], "port": ports["redis"], "dir": dirs["redis"],
                  "exporter_port": ports["redis_exporter"]},
        "app_operator": app_operator,
        "app_public": app_public,
        "app_single": app_single,
        # public_port and operator_port speak TLS (certificate and key in one file: crt); http_port is
        # plain HTTP, which only redirects the operator UI and tells API clients to use HTTPS.
        "haproxy": {"bind": hosts["haproxy"], "public_port": ports["public"], "operator_port": ports["operator"],
                    "http_port": ports["http"], "stats_port": ports["haproxy_stats"],
                    "peers_port": ports["haproxy_peers"], "dir": dirs["haproxy"],
                    "crt": dirs["haproxy_tls"] + "/mes.pem", "instances": lb_instances},
        "prometheus": {"host": hosts["prometheus"], "port": ports["prometheus"], "dir": dirs["prometheus"]},
        "node_exporters": node_exporters,
        # mes deliver-webhooks: where each worker runs and serves its /metrics (Prometheus scrapes them)
        "webhooks": webhooks or [],
    }
    if vip:
        topology["haproxy"]["vip"] = vip
    if backup:
        topology["backup"] = backup
    if crm:
        topology["crm_db"] = crm
    if hosts.get("alertmanager"):
        topology["alertmanager"] = {"host": hosts["alertmanager"], "port": ports["alertmanager"]}
    if not single:
        topology["db_endpoints"] = {"host": hosts["db_endpoints"], "primary_port": ports["db_primary"],
                                    "replica_port": ports["db_replicas"], "stats_port": ports["db_stats"],
                                    "dir": dirs["db_endpoints"], "instances": db_endpoint_instances}
    return topology


# --- from the inventory ----------------------------------------------------------------------------

def _address(hostvars: dict, host: str) -> str:
    hv = hostvars[host]
    return hv.get("mes_address") or hv.get("ansible_host") or host


def _vip(groups: dict, hostvars: dict) -> str | None:
    """`mes_vip` of the lb hosts (set on the group): one address for all of them, or none."""
    found = {str(hostvars[h]["mes_vip"]) for h in groups.get("lb", []) if hostvars[h].get("mes_vip")}
    if len(found) > 1:
        raise ValueError(f"the lb hosts disagree on mes_vip: {sorted(found)}")
    return found.pop() if found else None


def mes_topology(groups: dict, hostvars: dict, ports: dict, pg_version: int = 15) -> dict:
    """The structure from the inventory groups; `ports` is mes_ports (group_vars/all/topology.yml).
    Pgpool-II and the database endpoints (HAProxy) run on every app host and listen on loopback:
    each app server talks to its own; `dcs` holds the etcd members (three, on different hosts);
    pgBackRest's repository is on the first host of `backup` (not a database host). HAProxy runs on every
    host of `lb` and binds every address (0.0.0.0): its own, and the virtual one (`mes_vip`) whenever
    keepalived puts it there, with one configuration for all of them and no sysctl."""
    def first(group: str) -> str:
        members = groups.get(group) or []
        if not members:
            raise ValueError(f"the inventory has no host in group {group!r}")
        return members[0]

    pg_hosts = list(groups.get("db_primary", [])) + list(groups.get("db_replica", []))
    if set(groups.get("backup", [])) & set(pg_hosts):
        raise ValueError("the backup repository must be on another host than the database nodes")
    nodes = [pg_node(i, h, _address(hostvars, h), ports["postgresql"], PG_DATA.format(version=pg_version),
                     PG_CONF.format(version=pg_version), ports["postgres_exporter"], ports["patroni"])
             for i, h in enumerate(pg_hosts)]
    etcd = [etcd_member(h, _address(hostvars, h), ports["etcd"], ports["etcd_peer"], "/var/lib/etcd/mes")
            for h in groups.get("dcs", [])]

    def apps(group: str) -> list[dict]:
        return [app(h, _address(hostvars, h), ports["app"]) for h in groups.get(group, [])]

    app_hosts = list(groups.get("app_operator", [])) + list(groups.get("app_public", []))
    first("lb")                                     # at least one load balancer
    lb_hosts = [instance(h, _address(hostvars, h)) for h in groups["lb"]]
    mon = _address(hostvars, first("monitoring"))
    repo_host = first("backup")
    repository = backup_repository("/var/lib/pgbackrest", "/var/log/pgbackrest", "/tmp/pgbackrest",
                                   host={"name": repo_host, "host": _address(hostvars, repo_host),
                                         "port": ports["pgbackrest"]})
    crm_hosts = groups.get("crm_db") or []
    crm = crm_db(crm_hosts[0], _address(hostvars, crm_hosts[0]), ports["postgresql"],
                 PG_DATA.format(version=pg_version), PG_CONF.format(version=pg_version),
                 ports["postgres_exporter"]) if crm_hosts else None
    return assemble(
        single=False, pg_bindir=f"/usr/lib/postgresql/{pg_version}/bin", pg_nodes=nodes, etcd=etcd,
        ports=ports,
        dirs={"pgpool": "/var/lib/pgpool", "redis": "/var/lib/redis", "haproxy": "/var/lib/haproxy",
              "haproxy_tls": "/etc/haproxy/tls", "prometheus": "/var/lib/prometheus", "db_endpoints": "/run/haproxy-db"},
        app_operator=apps("app_operator"), app_public=apps("app_public"), app_single=[],
        node_exporters=[{"name": h, "host": _address(hostvars, h), "port": ports["node_exporter"]}
                        for h in sorted(hostvars) if h in groups.get("all", [])],
        hosts={"pgpool": "127.0.0.1", "db_endpoints": "127.0.0.1", "redis": _address(hostvars, first("redis")),
               "haproxy": "0.0.0.0", "prometheus": mon, "alertmanager": mon},
        db_endpoint_instances=[instance(h, _address(hostvars, h)) for h in app_hosts],
        lb_instances=lb_hosts, vip=_vip(groups, hostvars), backup=repository,
        # A delivery worker on every public host: it sends to partners, as the public pool answers them.
        webhooks=[app(h, _address(hostvars, h), ports["webhooks"]) for h in groups.get("app_public", [])],
        crm=crm)


class FilterModule:
    def filters(self):
        return {"mes_topology": mes_topology}
