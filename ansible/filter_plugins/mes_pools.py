"""How many of a Pgpool-II's client slots each app pool can hold, and whether the public pool stays out
of the operator pool's reserve (`pgpool_operator_reserve`, group_vars).

A Pgpool-II child serves one client connection at a time and the app keeps its connections open, so a
pool holds at most processes x (db_pool_size + db_max_overflow) slots. Every app host runs its own
Pgpool-II, used by the instances on that host; the local stack runs one for all of them, which also
share one address: instances are counted per address either way. Each host with operator instances runs
one scheduler with the operator pool's settings, each host with public instances one webhook delivery worker
with the public pool's settings (mes_topology's `webhooks`: they run there). Plain Python, no Ansible import: the role `pgpool`
asserts it and the local stack (stack/dbtier.py, before Pgpool-II starts) loads this file as it is.
"""
from __future__ import annotations

POOLS = ("operator", "public")
#: Clients of every Pgpool-II that are neither pool's: its exporter (monitoring/pgpool_exporter_queries.yml),
#: which holds one connection all the time. They come out of the public pool's share, never the reserve.
OTHER_CLIENTS = 1


def per_process(pool: dict) -> int:
    """The most connections one process of the pool holds (SQLAlchemy's pool size + overflow)."""
    return int(pool["db_pool_size"]) + int(pool["db_max_overflow"])


def pgpool_clients(topology: dict, pools: dict) -> dict[str, dict[str, int]]:
    """Per Pgpool-II (by the address of the instances that use it): the most client connections each
    pool can hold; the operator pool's count includes its scheduler, the public pool's the webhook worker."""
    hosts: dict[str, dict[str, int]] = {}
    for name in POOLS:
        for instance in topology[f"app_{name}"]:
            counts = hosts.setdefault(instance["host"], dict.fromkeys(POOLS, 0))
            counts[name] += int(pools[name]["workers"]) * per_process(pools[name])
    for counts in hosts.values():
        if counts["operator"]:
            counts["operator"] += per_process(pools["operator"])  # the scheduler
        if counts["public"]:
            counts["public"] += per_process(pools["public"])  # the webhook delivery worker
    return hosts


def pgpool_budget_errors(topology: dict, pools: dict, num_init_children: int, reserved_connections: int,
                         operator_reserve: int) -> list[str]:
    """What does not fit, per Pgpool-II; empty when the operator pool fits in its reserve and the public
    pool in the slots left beside it and the exporter (so that together they never exceed
    num_init_children - reserved_connections)."""
    slots = int(num_init_children) - int(reserved_connections)
    public_slots = slots - int(operator_reserve) - OTHER_CLIENTS
    errors = []
    for host, counts in pgpool_clients(topology, pools).items():
        if counts["public"] > public_slots:
            errors.append(f"{host}: the public pool can hold {counts['public']} Pgpool-II clients, more than the "
                          f"{public_slots} left beside the operator reserve and the exporter ({slots} slots - "
                          f"{operator_reserve} - {OTHER_CLIENTS})")
        if counts["operator"] > int(operator_reserve):
            errors.append(f"{host}: the operator pool and its scheduler can hold {counts['operator']} Pgpool-II "
                          f"clients, more than the operator reserve ({operator_reserve})")
    return errors


class FilterModule:
    def filters(self):
        return {"mes_pgpool_clients": pgpool_clients, "mes_pgpool_budget_errors": pgpool_budget_errors}
