"""The local stack's log files are private to their service, like the journal on the VMs."""
from __future__ import annotations

import os
import pwd
import stat

from stack.base import Ctx, alive, wait_until


def _spawn_and_wait(ctx: Ctx, name: str, user: str | None) -> None:
    pid = ctx.spawn(name, ["sh", "-c", "echo started"], user=user)
    assert wait_until(lambda: not alive(pid), 10)


def test_a_service_log_is_0640_owned_by_the_service_user(tmp_path):
    ctx = Ctx(state=tmp_path)
    _spawn_and_wait(ctx, "svc", "postgres")
    info = ctx.logfile("svc").stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert stat.S_IMODE(ctx.path("logs").stat().st_mode) == 0o750
    if os.geteuid() == 0:  # only root can give a file away; the stack runs as root
        assert info.st_uid == pwd.getpwnam("postgres").pw_uid
    assert "started" in ctx.logfile("svc").read_text()


def test_a_log_made_world_readable_before_is_made_private_at_the_next_start(tmp_path):
    ctx = Ctx(state=tmp_path)
    ctx.path("logs").mkdir(mode=0o755)
    ctx.logfile("old").write_text("earlier run\n")
    ctx.logfile("old").chmod(0o644)
    _spawn_and_wait(ctx, "old", None)
    assert stat.S_IMODE(ctx.logfile("old").stat().st_mode) == 0o640
    assert stat.S_IMODE(ctx.path("logs").stat().st_mode) == 0o750
    assert ctx.logfile("old").read_text().splitlines() == ["earlier run", "started"]
