"""Operators first on this machine: the app pools' CPU priority, from the same group_vars as the VMs'
systemd slices (`mes_pools.<pool>.cpu_weight`, role mes_app).

A weight counts against an ordinary service (100, the kernel's and systemd's default): the operator pool
(1000) wins a busy CPU over everything else on the machine, HAProxy and the database tier included, and
the public pool (10) yields to all of them: a flooded public pool would otherwise take the CPU that the
operators' requests need in HAProxy, Pgpool-II and PostgreSQL, which no weight of the operator pool reaches. Where the kernel's cpu controller is mounted and we
may write to it, each pool gets a cgroup of its own at the top of that hierarchy, named after the stack's
state folder (mes-<hash>-<pool>), with its weight (cgroup v2 `cpu.weight`; on a v1 hierarchy `cpu.shares`,
1024 per 100, as systemd converts it). They are siblings, not children of one parent: under a common
parent the operator pool could never have more than the parent's share (measured: BENCHMARKS.md).
An instance starts inside its cgroup: a shell writes its own pid into the group and execs gunicorn, so
the master and every worker it forks are in it from their first instruction (moving the master after the
spawn would race with its first forks). Where cgroups cannot be written (a container without access),
each pool runs at the nice value of its weight (1.25x per step: 1000 is -10) and so does its session's
autogroup (with autogroups on, nice alone only ranks threads within one session); without the right to
lower a nice value, every pool is shifted up by the same steps, the operator pool to 0.
"""
from __future__ import annotations

import errno
import hashlib
import math
from pathlib import Path

from .base import Ctx, StackError, wait_until

MOUNTS = Path("/proc/self/mounts")
DEFAULT_WEIGHT = 100
CAP_SYS_NICE = 23
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


def groups(ctx: Ctx, mount: Path) -> dict[str, Path]:
    """Each pool's cgroup: named after the stack's state folder, so that two stacks never share one."""
    stem = f"mes-{hashlib.sha256(str(ctx.state).encode()).hexdigest()[:12]}"
    return {pool: mount / f"{stem}-{pool}" for pool in ctx.vars["mes_pools"]}


def weights(ctx: Ctx) -> dict[str, int]:
    return {name: int(pool["cpu_weight"]) for name, pool in ctx.vars["mes_pools"].items()}


def nice(ctx: Ctx, pool: str) -> int:
    """The nice value of the pool's weight; shifted so that none is below 0 where we may not lower one."""
    steps = {name: -round(math.log(w / DEFAULT_WEIGHT, 1.25)) for name, w in weights(ctx).items()}
    if not _may_lower_nice():
        floor = min(steps.values())
        steps = {name: s - min(floor, 0) for name, s in steps.items()}
    return min(19, max(-20, steps[pool]))


def _may_lower_nice() -> bool:
    """CAP_SYS_NICE in our effective capabilities (root has it, a container's root often not)."""
    for line in _read(Path("/proc/self/status")).splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_NICE & 1)
    return False


def _make(version: int, mount: Path, pools: dict[str, Path], weight: dict[str, int]) -> None:
    if version == 2 and "cpu" not in _read(mount / "cgroup.subtree_control").split():
        (mount / "cgroup.subtree_control").write_text("+cpu\n")  # the groups at the top get a cpu weight
    for pool, group in pools.items():
        group.mkdir(exist_ok=True)
        name, value = ("cpu.weight", weight[pool]) if version == 2 else ("cpu.shares", weight[pool] * 1024 // 100)
        (group / name).write_text(f"{value}\n")


def ensure(ctx: Ctx) -> bool:
    """Make (or update the weights of) the pools' cgroups; False where we cannot."""
    found = cpu_hierarchy()
    if found is None:
        return False
    version, mount = found
    try:
        _make(version, mount, groups(ctx, mount), weights(ctx))
    except OSError as err:
        if err.errno not in NOT_HERE:
            raise StackError(f"cannot give the app pools their cpu weights in {mount}: {err}") from err
        remove(ctx)
        return False
    return True


def launcher(ctx: Ctx, pool: str) -> list[str]:
    """The argv prefix that starts a process of `pool` at its priority (after `ensure`); empty for the
    single pool and where the pool's nice value is 0."""
    if pool not in ctx.vars["mes_pools"]:
        return []
    found = cpu_hierarchy()
    group = groups(ctx, found[1])[pool] if found else None
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
    for group in groups(ctx, found[1]).values():
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
