"""Backups of the one-machine stack with pgBackRest (pgbackrest/pgbackrest.conf.j2), the same tool and
template as on VMs; the repository is a folder of its own here (another host there).

- `PgBackRest()`: a component (not a process): renders each node's configuration (archive-push,
  restores) and the repository's (backups), creates the stanza once the cluster runs, and checks that
  WAL reaches the repository (`pgbackrest check`).
- `backup(ctx, kind)`: a full, differential or incremental backup of the running primary.
- `restore_to_point_in_time(ctx, dest, target)`: the database as it was at `target`, restored into a
  new folder `dest` (a fresh "host"): the newest backup before it plus the archived WAL up to it.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import dbtier
from .base import Ctx, StackError

PG_USER = dbtier.PG_USER


def _b(ctx: Ctx) -> dict:
    return ctx.vars["mes_topology"]["backup"]


def repository_config(ctx: Ctx) -> Path:
    return Path(_b(ctx)["dir"]) / "pgbackrest.conf"


def _pgbackrest(ctx: Ctx, *args: str, config: Path | None = None, timeout: float = 1800) -> str:
    argv = ["pgbackrest", f"--config={config or repository_config(ctx)}",
            f"--stanza={ctx.vars['pgbackrest_stanza']}", *args]
    return ctx.run(argv, user=PG_USER, timeout=timeout).stdout


def backup(ctx: Ctx, kind: str = "full") -> dict:
    """A backup of the running primary; returns pgBackRest's record of it."""
    if kind not in ("full", "diff", "incr"):
        raise StackError(f"backup kind must be full, diff or incr, not {kind!r}")
    _pgbackrest(ctx, f"--type={kind}", "backup")
    return info(ctx)["backup"][-1]


def info(ctx: Ctx) -> dict:
    """pgBackRest's view of the stanza: backups (label, type, timestamps) and the archive's range."""
    return json.loads(_pgbackrest(ctx, "--output=json", "info"))[0]


def info_text(ctx: Ctx) -> str:
    return _pgbackrest(ctx, "info")


def restore_to_point_in_time(ctx: Ctx, dest: Path, target: str) -> None:
    """Restore into `dest` (must not exist) the database as of `target` ('YYYY-MM-DD HH:MM:SS.ffffff+00'):
    promoted at the target, so that it can be started as a server of its own."""
    if dest.exists():
        raise StackError(f"{dest} exists: a restore goes into a new folder")
    ctx.ensure_dir(dest, owner=PG_USER, mode=0o700)
    _pgbackrest(ctx, f"--pg1-path={dest}", "--type=time", f"--target={target}", "--target-action=promote",
                "--archive-mode=off", "restore")


class PgBackRest:
    """The stanza of the stack's database in the repository."""

    name = "pgbackrest"

    def up(self, ctx: Ctx) -> None:
        b = _b(ctx)
        for folder in ("log", "lock", "repo"):
            ctx.ensure_dir(Path(b["dir"]) / folder, owner=PG_USER, mode=0o750)
        ctx.ensure_dir(Path(b["dir"]), owner=PG_USER, mode=0o750)
        # Each node's own configuration (archive-push, restores) is rendered with patroni.yml.
        dbtier._render(ctx, "pgbackrest/pgbackrest.conf.j2", repository_config(ctx), mode=0o600,
                       extra={"pgbackrest_for_repository": True})
        _pgbackrest(ctx, "stanza-create", timeout=120)
        _pgbackrest(ctx, "check", timeout=120)

    def down(self, ctx: Ctx) -> None:
        pass

    def status(self, ctx: Ctx) -> tuple[bool, str]:
        try:
            stanza = info(ctx)
        except StackError as err:
            return False, str(err).splitlines()[0]
        backups = stanza.get("backup", [])
        archive = (stanza.get("archive") or [{}])[0]
        last = backups[-1] if backups else None
        detail = (f"{len(backups)} backups" + (f", last {last['type']} {last['label']}" if last else ", none yet")
                  + f"; WAL {archive.get('min', '-')} .. {archive.get('max', '-')}")
        return stanza.get("status", {}).get("code") in (0, 2), detail  # 2: no backup yet
