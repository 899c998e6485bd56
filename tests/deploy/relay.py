"""The hosts' one way out: an apt relay to this machine's own Debian mirror, and nothing else.

  host apt --HTTP proxy--> socat in the controller namespace (ctl_ip:port)
           --Unix socket--> socat in the root namespace --TCP--> the mirror host:port of this machine's apt
                                                             (or the HTTP proxy this machine's apt uses)

apt sends proxy-style requests (GET http://mirror/...), which a mirror's web server and a proxy both
answer. One relay per upstream; the hosts' apt gets `Acquire::http::Proxy` lines pointing at them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .network import CTL_NS
from .rootfs import AptSource, apt_config_value
from .util import log, pid_alive, pid_cmdline

FIRST_PORT = 3142


@dataclass
class Relay:
    upstream_host: str
    upstream_port: int
    listen_port: int
    socket: str
    root_pid: int = 0
    ctl_pid: int = 0


_children: dict[int, subprocess.Popen] = {}


def plan(sources: list[AptSource], sock_dir: Path) -> tuple[list[Relay], bool]:
    """The relays to run: one to this machine's apt proxy if it uses one (then every source goes through
    it), else one per mirror host. Returns (relays, through_proxy)."""
    proxy = apt_config_value("Acquire::http::Proxy")
    if proxy and proxy.upper() != "DIRECT":
        url = urlsplit(proxy)
        return [Relay(url.hostname, url.port or 80, FIRST_PORT, str(sock_dir / "relay-0.sock"))], True
    upstreams = list(dict.fromkeys((s.host, s.port) for s in sources))
    return [Relay(h, p, FIRST_PORT + i, str(sock_dir / f"relay-{i}.sock"))
            for i, (h, p) in enumerate(upstreams)], False


def apt_conf(relays: list[Relay], through_proxy: bool, ctl_ip: str) -> str:
    """apt.conf lines for the hosts: their proxy is the relay; apt's own checks as on this machine."""
    lines = ["// Written by the deploy-test harness: apt goes through the relay in the controller namespace."]
    lines.append(f'Acquire::http::Proxy "http://{ctl_ip}:{relays[0].listen_port}";')
    if not through_proxy:
        for r in relays:
            lines.append(f'Acquire::http::Proxy::{r.upstream_host} "http://{ctl_ip}:{r.listen_port}";')
    for name in ("Acquire::Check-Valid-Until", "Acquire::Check-Date"):
        value = apt_config_value(name)
        if value:
            lines.append(f'{name} "{value}";')
    lines += ['Acquire::Retries "3";', 'APT::Install-Recommends "false";']
    return "\n".join(lines) + "\n"


def _spawn(argv: list[str], log_path: Path) -> int:
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    _children[proc.pid] = proc
    return proc.pid


def start(relay: Relay, ctl_ip: str, log_dir: Path) -> None:
    """The root-namespace end first (it owns the socket), then the controller-namespace listener."""
    if os.path.exists(relay.socket):
        os.unlink(relay.socket)
    relay.root_pid = _spawn(["socat", f"UNIX-LISTEN:{relay.socket},fork,mode=600",
                             f"TCP:{relay.upstream_host}:{relay.upstream_port}"],
                            log_dir / f"relay-root-{relay.listen_port}.log")
    deadline = time.monotonic() + 10
    while not os.path.exists(relay.socket):
        if time.monotonic() > deadline or not pid_alive(relay.root_pid):
            raise RuntimeError(f"the relay's root end did not create {relay.socket}")
        time.sleep(0.05)
    relay.ctl_pid = _spawn(["ip", "netns", "exec", CTL_NS, "socat",
                            f"TCP-LISTEN:{relay.listen_port},bind={ctl_ip},fork,reuseaddr",
                            f"UNIX-CONNECT:{relay.socket}"],
                           log_dir / f"relay-ctl-{relay.listen_port}.log")
    log(f"apt relay {ctl_ip}:{relay.listen_port} -> {relay.upstream_host}:{relay.upstream_port} "
        f"(pids {relay.ctl_pid}, {relay.root_pid})")


def _children_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry))
    return found


def stop(relay_pids: list[int]) -> None:
    """End the relay processes (and the per-connection children socat forked), by pid."""
    for pid in relay_pids:
        if not pid or not pid_alive(pid) or "socat" not in pid_cmdline(pid):
            continue
        for child in _children_of(pid):
            if "socat" in pid_cmdline(child):
                os.kill(child, signal.SIGTERM)
        os.kill(pid, signal.SIGTERM)
    for pid in relay_pids:
        proc = _children.pop(pid, None)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
