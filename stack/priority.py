"""Operators first on this machine: the app pools' CPU priority, from the same group_vars as the VMs'
systemd slices (`mes_pools.<pool>.cpu_weight`, role mes_app).

Where the kernel's cpu controller is mounted and we may write to it, each pool gets a cgroup
<mount>/mes-<hash of the state folder>/<pool> with its weight (cgroup v2 `cpu.weight`; on a v1 hierarchy
`cpu.shares`, 1024 per 100, as systemd converts it). The parent keeps the default weight, like mes.slice
on the VMs: the pools together weigh like any other service, and inside it the operator pool comes first.
An instance starts inside its cgroup: a shell writes its own pid into the group and execs gunicorn, so
the master and every worker it forks are in it from their first instruction (moving the master after the
spawn would race with its first forks). Where cgroups cannot be written (a container without access),
the lower-weight pool runs niced instead, by the nice value of the same ratio (1.25x per step), and so
does its session's autogroup: with autogroups on, nice alone only ranks threads within one session.
"""
from __future__ import annotations

import errno
import hashlib
import math
from pathlib import Path

from .base import Ctx, StackError, wait_until

MOUNTS = Path("/proc/self/mounts")
# What creating or filling a cgroup answers where we may not: then the pools are niced instead.
NOT_HERE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EBUSY, errno.ENOENT, errno.EOPNOTSUPP, errno.ENOTSUP}


def cpu_hierarchy(mounts: Path = MOUNTS) -> tuple[int, Path] | None:
    """(cgroup version, mount point) of the hierarchy that has the cpu controller (v2 first), or None."""
    found = None
    for line in mounts.read_text().splitlines():
        _source, point, fstype, options = line.split()[:4]
        path = Path(point.replace("\\040", " "))
        if fstype == "cgroup2" and "cpu" in _read(path / "cgroup.controllers").split():
            return 2, path
        if fstype == "cgroup" and "cpu" in options.split(",") and found is None:
            found = (1, path)
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def parent(ctx: Ctx, mount: Path) -> Path:
    """This stack's cgroup: named after its state folder, so that two stacks never share one."""
    return mount / f"mes-{hashlib.sha256(str(ctx.state).encode()).hexdigest()[:12]}"


def weights(ctx: Ctx) -> dict[str, int]:
    return {name: int(pool["cpu_weight"]) for name, pool in ctx.vars["mes_pools"].items()}


def nice(ctx: Ctx, pool: str) -> int:
    """The nice value that puts `pool` about its weight's ratio below the heaviest pool."""
    w = weights(ctx)
    return min(19, max(0, round(math.log(max(w.values()) / w[pool], 1.25))))


def _enable_cpu(group: Path) -> None:
    """cgroup v2: let the children of `group` have a cpu weight."""
    if "cpu" not in _read(group / "cgroup.subtree_control").split():
        (group / "cgroup.subtree_control").write_text("+cpu\n")


def _make(version: int, top: Path, pools: dict[str, int]) -> None:
    if version == 2:
        _enable_cpu(top.parent)
    top.mkdir(exist_ok=True)
    if version == 2:
        _enable_cpu(top)
    for pool, weight in pools.items():
        (top / pool).mkdir(exist_ok=True)
        name, value = ("cpu.weight", weight) if version == 2 else ("cpu.shares", weight * 1024 // 100)
        (top / pool / name).write_text(f"{value}\n")


def ensure(ctx: Ctx) -> Path | None:
    """Make (or update the weights of) the pools' cgroups; their parent, or None where we cannot."""
    found = cpu_hierarchy()
    if found is None:
        return None
    version, mount = found
    top = parent(ctx, mount)
    try:
        _make(version, top, weights(ctx))
    except OSError as err:
        if err.errno not in NOT_HERE:
            raise StackError(f"cannot give the app pools their cpu weights in {top}: {err}") from err
        remove(ctx)
        return None
    return top


def launcher(ctx: Ctx, pool: str) -> list[str]:
    """The argv prefix that starts a process of `pool` at its priority (after `ensure`); empty for the
    single pool and for the heaviest pool where it is niced."""
    if pool not in ctx.vars["mes_pools"]:
        return []
    found = cpu_hierarchy()
    group = parent(ctx, found[1]) / pool if found else None
    if group is not None and group.is_dir():
        return ["sh", "-c", 'echo 0 > "$0" && exec "$@"', str(group / "cgroup.procs")]
    steps = nice(ctx, pool)
    if not steps:
        return []
    return ["sh", "-c", '{ echo "$0" > /proc/self/autogroup; } 2>/dev/null; exec nice -n "$0" "$@"', str(steps)]


def remove(ctx: Ctx) -> None:
    """Remove this stack's cgroups, each only once empty (the kernel refuses a group with processes;
    one that just exited may take a moment to leave)."""
    found = cpu_hierarchy()
    if found is None:
        return
    top = parent(ctx, found[1])
    for group in [*(top / pool for pool in ctx.vars["mes_pools"]), top]:
        wait_until(lambda g=group: _rmdir(g), 2)


def _rmdir(group: Path) -> bool:
    """True once `group` is gone (or never was); False while it is busy."""
    if not group.is_dir():
        return True
    try:
        group.rmdir()
    except FileNotFoundError:
        pass
    except OSError as err:
        if err.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise
    return True

