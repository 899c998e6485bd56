"""The hosts: one systemd-nspawn container each (systemd as PID 1), booted in the host's own network
namespace, each started from a fresh cgroup of its own (two containers that share the launching cgroup
collide: status=219/CGROUP). The cgroup also tells which processes belong to a container, so that
teardown can end exactly those, by pid."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from .network import PREFIX
from .util import log, pid_alive, pid_cmdline

CGROUP_GROUP = PREFIX                 # /sys/fs/cgroup/<hierarchy>/mesdt/<host>
_children: dict[int, subprocess.Popen] = {}   # started here; reaped by stop_all(), so no zombie is left


def cgroup_roots() -> list[Path]:
    """The hierarchies to place the launcher in: the unified one (pure cgroup v2, or the `unified`
    mount of a hybrid setup) and systemd's named v1 hierarchy where it exists."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        return [base]
    return [p for p in (base / "unified", base / "systemd") if (p / "cgroup.procs").exists()]


def cgroup_dirs(host: str) -> list[Path]:
    return [root / CGROUP_GROUP / host for root in cgroup_roots()]


def machine_name(host: str) -> str:
    return f"{PREFIX}-{host}"


def start(host: str, root: Path, ns: str, log_path: Path, capabilities: tuple[str, ...] = ()) -> int:
    """Boot the container in the background; returns the pid of its systemd-nspawn. `capabilities`:
    more than nspawn's default set (which has CAP_NET_RAW, not CAP_NET_ADMIN: with
    --network-namespace-path nspawn does not add it as it does for a network it makes itself)."""
    dirs = cgroup_dirs(host)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    nspawn = ["systemd-nspawn", "--register=no", "--keep-unit", "--boot", f"--directory={root}",
              f"--network-namespace-path=/run/netns/{ns}", f"--machine={machine_name(host)}",
              "--console=read-only", "--resolv-conf=off", "--timezone=off", "--link-journal=no"]
    if capabilities:
        nspawn.append("--capability=" + ",".join(capabilities))
    # The launcher moves itself into the host's own cgroup(s), then becomes systemd-nspawn.
    script = "".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))} && " for d in dirs)
    script += "exec " + shlex.join(nspawn)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _children[proc.pid] = proc
    return proc.pid


def is_ours(pid: int, host: str) -> bool:
    cmd = pid_cmdline(pid)
    return "systemd-nspawn" in cmd and f"--machine={machine_name(host)}" in cmd


def cgroup_pids(host: str) -> list[int]:
    """Every process in the host's cgroups (the nspawn supervisor and the whole container)."""
    pids: set[int] = set()
    for d in cgroup_dirs(host):
        if not d.exists():
            continue
        for procs in d.rglob("cgroup.procs"):
            try:
                pids.update(int(p) for p in procs.read_text().split())
            except OSError:
                pass
    return sorted(pids)


def _reap(pid: int, timeout: float = 0.0) -> None:
    """Collect the exit status of a launcher started here, if it has ended within `timeout` s (0: only if
    it has ended already; a poll, so that waiting for many containers costs no time per container)."""
    proc = _children.get(pid)
    if proc is None:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return
    del _children[pid]


def stop_all(hosts: dict[str, int], timeout: float = 30) -> None:
    """Power the containers off (SIGTERM to systemd-nspawn makes it send SIGRTMIN+3, a clean poweroff,
    to the container's systemd); whatever still runs after `timeout` s is killed by pid."""
    for host, pid in hosts.items():
        if pid and pid_alive(pid) and is_ours(pid, host):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for host, pid in hosts.items():
        while pid and pid_alive(pid) and is_ours(pid, host) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        _reap(pid)
    for host in hosts:
        left = cgroup_pids(host)
        if left:
            log(f"{host}: killing {len(left)} process(es) left in its cgroup: {left}")
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    for pid in list(_children):   # every launcher is ended or killed by now
        _reap(pid, timeout=5)
    gone = time.monotonic() + 5   # killed processes leave their cgroups a moment later
    while any(cgroup_pids(host) for host in hosts) and time.monotonic() < gone:
        time.sleep(0.1)
    for host in hosts:
        remove_cgroups(host)


def remove_cgroups(host: str) -> None:
    for d in cgroup_dirs(host):
        if d.exists():
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                try:
                    sub.rmdir()
                except OSError:
                    pass
            try:
                d.rmdir()
            except OSError as err:
                log(f"could not remove cgroup {d}: {err}")
    for root in cgroup_roots():
        group = root / CGROUP_GROUP
        if group.exists() and not any(p.is_dir() for p in group.iterdir()):
            try:
                group.rmdir()
            except OSError:
                pass
