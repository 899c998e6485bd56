"""`mes_firewall_rules`: the inbound rules of one host, from the flow table of the firewall role.

A flow (roles/firewall/vars/main.yml) says who may open connections to whom, on which ports:
    {name: "...", from: <sources>, to: <groups>, port: <port name(s) or number(s)>, proto: tcp|udp|vrrp}
`from` holds group names, named sources (`any`, `admin`, `controller`, ... given by the caller) or
literal addresses and networks; `to` holds group names (`all`: every host). A port name is a key of
the ports mapping (mes_ports with the role's defaults); an unknown name is an error, not a silent skip.
The result is what templates/nftables.conf.j2 turns into nft rules: for every flow that reaches this
host, the source networks per family (the host's own address left out: it talks to itself over
loopback) and the ports. Plain Python, no Ansible import, so that the tests can load this file as it is.
"""
from __future__ import annotations

import importlib.util
import ipaddress
from pathlib import Path

PROTOCOLS = ("tcp", "udp", "vrrp")     # vrrp: IP protocol 112 (keepalived), no port


def _topology_address():
    """mes_topology.py's rule for a host's address (mes_address, ansible_host, else the name): one place."""
    spec = importlib.util.spec_from_file_location("mes_topology_address", Path(__file__).with_name("mes_topology.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._address


_ADDRESS = _topology_address()


def host_address(hostvars, host: str) -> str:
    """The address the other hosts use for `host`, as mes_topology has it; it must be an IP address,
    since nft matches addresses, not names."""
    address = str(_ADDRESS(hostvars, host))
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"firewall: host {host!r} has the address {address!r}, which is not an IP address; "
                         "set mes_address (or ansible_host) to its IP address") from None
    return address


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _network(value: str):
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return None


def _ports(flow: dict, ports: dict) -> list[int]:
    resolved = []
    for port in _as_list(flow.get("port")):
        if isinstance(port, int) or str(port).isdigit():
            resolved.append(int(port))
        elif port in ports:
            resolved.append(int(ports[port]))
        else:
            raise ValueError(f"firewall: flow {flow.get('name')!r} names the port {port!r}, which is neither a "
                             f"number nor a key of the ports ({', '.join(sorted(ports))})")
    return sorted(set(resolved))


def _members(groups: dict, names) -> set[str]:
    hosts: set[str] = set()
    for name in _as_list(names):
        hosts.update(groups.get(name) or [])
    return hosts


def _sources(flow: dict, groups: dict, hostvars, named: dict, own: str):
    """(anyone, [networks]) of a flow: named sources, literal networks, else the hosts of a group."""
    networks = []
    for source in _as_list(flow.get("from")):
        if source == "any":
            return True, []
        if source in named:
            literal = [_network(a) for a in _as_list(named[source])]
            if None in literal:
                raise ValueError(f"firewall: the source {source!r} holds something that is not an address or "
                                 f"network: {named[source]!r}")
            networks += literal
        elif _network(source) is not None:
            networks.append(_network(source))
        else:
            networks += [_network(host_address(hostvars, h)) for h in sorted(groups.get(source) or [])]
    own_net = _network(own)
    networks = [n for n in networks if n != own_net]
    return False, networks


def _rule(flow: dict, anyone: bool, networks: list, ports: list[int]) -> dict:
    proto = flow.get("proto", "tcp")
    if proto not in PROTOCOLS:
        raise ValueError(f"firewall: flow {flow.get('name')!r} has proto {proto!r}; one of {PROTOCOLS}")
    if proto != "vrrp" and not ports:
        raise ValueError(f"firewall: flow {flow.get('name')!r} ({proto}) has no port")

    def family(version: int) -> list[str]:
        chosen = [n for n in networks if n.version == version]
        return [str(n.network_address) if n.num_addresses == 1 else str(n)
                for n in ipaddress.collapse_addresses(chosen)]

    return {"name": str(flow.get("name") or ""), "proto": proto, "ports": ports if proto != "vrrp" else [],
            "any": anyone, "ip": family(4), "ip6": family(6)}


def mes_firewall_rules(flows, host: str, groups: dict, hostvars, ports: dict, named_sources: dict | None = None
                       ) -> list[dict]:
    """The rules for `host`: one per flow whose `to` groups hold it and that has a source, in the order
    of the table. named_sources: name -> addresses or networks (`admin`, `controller`, ...)."""
    named = dict(named_sources or {})
    own = host_address(hostvars, host)
    rules = []
    for flow in flows or []:
        if host not in _members(groups, flow.get("to")):
            continue
        anyone, networks = _sources(flow, groups, hostvars, named, own)
        rule = _rule(flow, anyone, networks, _ports(flow, ports))
        if rule["any"] or rule["ip"] or rule["ip6"]:
            rules.append(rule)
    return rules


class FilterModule:
    def filters(self):
        return {"mes_firewall_rules": mes_firewall_rules}
