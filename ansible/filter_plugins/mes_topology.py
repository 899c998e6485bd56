"""`mes_topology` from the inventory: where each component of the MES runs on the VMs.

The templates under haproxy/, pgpool/, postgresql/, redis/ and monitoring/ read this structure;
the local one-machine stack builds the same structure from stack/local.yml (see stack/CONTRACT.md).
"""
from __future__ import annotations

PG_DATA = "/var/lib/postgresql/{version}/main"


def _address(hostvars: dict, host: str) -> str:
    hv = hostvars[host]
    return hv.get("mes_address") or hv.get("ansible_host") or host


def mes_topology(groups: dict, hostvars: dict, ports: dict, pg_version: int = 15) -> dict:
    """Build the topology dict from inventory groups; `ports` is mes_ports from group_vars."""
    def first(group: str) -> str:
        members = groups.get(group) or []
        if not members:
            raise ValueError(f"the inventory has no host in group {group!r}")
        return members[0]

    pg_hosts = list(groups.get("db_primary", [])) + list(groups.get("db_replica", []))
    nodes = [{"id": i, "name": h, "host": _address(hostvars, h), "port": ports["postgresql"],
              "data_dir": PG_DATA.format(version=pg_version), "exporter_port": ports["postgres_exporter"]}
             for i, h in enumerate(pg_hosts)]

    def apps(group: str) -> list[dict]:
        return [{"name": h, "host": _address(hostvars, h), "port": ports["app"]} for h in groups.get(group, [])]

    lb, pgpool, redis, mon = first("lb"), first("pgpool"), first("redis"), first("monitoring")
    return {
        "single": False,
        "pg_bindir": f"/usr/lib/postgresql/{pg_version}/bin",
        "pg_nodes": nodes,
        "pgpool": {"host": _address(hostvars, pgpool), "port": ports["pgpool"], "pcp_port": ports["pgpool_pcp"],
                   "dir": "/var/lib/pgpool"},
        "redis": {"host": _address(hostvars, redis), "port": ports["redis"], "dir": "/var/lib/redis",
                  "exporter_port": ports["redis_exporter"]},
        "app_operator": apps("app_operator"),
        "app_public": apps("app_public"),
        "app_single": [],
        "haproxy": {"bind": _address(hostvars, lb), "public_port": ports["public"],
                    "operator_port": ports["operator"], "stats_port": ports["haproxy_stats"],
                    "dir": "/var/lib/haproxy"},
        "prometheus": {"host": _address(hostvars, mon), "port": ports["prometheus"], "dir": "/var/lib/prometheus"},
        "alertmanager": {"host": _address(hostvars, mon), "port": ports["alertmanager"]},
        "node_exporters": [{"name": h, "host": _address(hostvars, h), "port": ports["node_exporter"]}
                           for h in sorted(hostvars) if h in groups.get("all", [])],
        "fence": "ssh",
    }


class FilterModule:
    def filters(self):
        return {"mes_topology": mes_topology}
