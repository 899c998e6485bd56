"""The test network: a bridge in its own namespace, one namespace per host and one for the controller.

The subnet is blackholed in the root namespace before anything else is made, so that no packet for a
test address can leave this machine even by mistake (a root-namespace client gets "Invalid argument").
"""
from __future__ import annotations

import ipaddress
import json
import os

from .util import log, run

PREFIX = "mesdt"                     # every namespace, veth and machine name starts with it
BRIDGE_NS = f"{PREFIX}-br"
CTL_NS = f"{PREFIX}-ctl"
BRIDGE = "br0"


def netns(host: str) -> str:
    return f"{PREFIX}-{host}"


def veth(host: str) -> str:
    return f"v-{host}"[:15]          # the bridge side; the host side is eth0 in the host's namespace


def existing_netns() -> list[str]:
    out = run(["ip", "netns", "list"], quiet=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def check_subnet_is_free(subnet: str) -> None:
    """Refuse to start when the root namespace already routes the test subnet somewhere (other than to
    our own blackhole of an earlier run): the test would shadow a real network."""
    net = ipaddress.ip_network(subnet)
    routes = json.loads(run(["ip", "-4", "-j", "route", "show", "table", "all"], quiet=True).stdout or "[]")
    for route in routes:
        dst = route.get("dst", "default")
        if dst == "default" or (route.get("type") == "blackhole" and dst == subnet):
            continue
        if ipaddress.ip_network(dst, strict=False).overlaps(net):
            raise RuntimeError(f"the root namespace already has a route for {dst} ({route}): it overlaps "
                               f"the test subnet {subnet}; refusing to start")


def add_blackhole(subnet: str) -> None:
    if has_blackhole(subnet):
        return
    run(["ip", "route", "add", "blackhole", subnet])


def has_blackhole(subnet: str) -> bool:
    out = run(["ip", "route", "show", "type", "blackhole"], quiet=True).stdout
    return any(line.split()[1:2] == [subnet] for line in out.splitlines())


def del_blackhole(subnet: str) -> None:
    if has_blackhole(subnet):
        run(["ip", "route", "del", "blackhole", subnet])


def make_bridge() -> None:
    run(["ip", "netns", "add", BRIDGE_NS])
    run(["ip", "-n", BRIDGE_NS, "link", "set", "lo", "up"], quiet=True)
    run(["ip", "-n", BRIDGE_NS, "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "-n", BRIDGE_NS, "link", "set", BRIDGE, "up"], quiet=True)


def attach(name: str, ns: str, address: str, prefixlen: int, extra: tuple[str, ...] = ()) -> None:
    """A namespace with eth0 = address (and the `extra` addresses), cabled to the bridge. No default
    route: the subnet is all."""
    run(["ip", "netns", "add", ns])
    run(["ip", "-n", ns, "link", "set", "lo", "up"], quiet=True)
    run(["ip", "link", "add", veth(name), "netns", BRIDGE_NS, "type", "veth", "peer", "name", "eth0",
         "netns", ns])
    run(["ip", "-n", BRIDGE_NS, "link", "set", veth(name), "master", BRIDGE, "up"], quiet=True)
    for each in (address, *extra):
        run(["ip", "-n", ns, "addr", "add", f"{each}/{prefixlen}", "dev", "eth0"], quiet=True)
    run(["ip", "-n", ns, "link", "set", "eth0", "up"], quiet=True)


def cable(name: str, connected: bool) -> None:
    """Plug or pull the host's cable: its veth on the bridge up or down (a lost host sends nothing more)."""
    run(["ip", "-n", BRIDGE_NS, "link", "set", veth(name), "up" if connected else "down"], quiet=True)


def netns_pids(ns: str) -> list[int]:
    result = run(["ip", "netns", "pids", ns], check=False, quiet=True)
    return [int(p) for p in result.stdout.split() if p.isdigit() and int(p) != os.getpid()]


def delete_netns(ns: str) -> None:
    """Delete a namespace of ours (its veth goes with it)."""
    if ns in existing_netns():
        run(["ip", "netns", "del", ns], check=False)
    log(f"deleted network namespace {ns}")
