"""Basic auth of the monitoring endpoints in the local stack (Prometheus, HAProxy's stats frontends):
what a client sends, and the bcrypt hash the servers' files keep, made by the same function as on
the VMs (ansible/filter_plugins/mes_bcrypt.py, loaded as it is)."""
from __future__ import annotations

import base64
from functools import cache
from pathlib import Path

from .base import Ctx, shared_plugin


@cache
def _shared_hasher():
    return shared_plugin("mes_bcrypt").bcrypt_hash


def credentials(ctx: Ctx) -> tuple[str, str]:
    """The monitoring user (group_vars) and its password (the stack's secrets)."""
    return ctx.vars["monitoring_user"], ctx.vars["mes_secrets"]["monitoring_password"]


def headers(ctx: Ctx) -> dict[str, str]:
    token = base64.b64encode(":".join(credentials(ctx)).encode()).decode()
    return {"Authorization": f"Basic {token}"}


def password_hash(ctx: Ctx, cost_setting: str, rendered: Path) -> dict[str, str]:
    """The template variable monitoring_password_hash at the cost group_vars name `cost_setting`; the
    hash already in `rendered` is kept while it matches, so that a second `up` writes the same file."""
    previous = rendered.read_text() if rendered.exists() else ""
    hashed = _shared_hasher()(credentials(ctx)[1], int(ctx.vars[cost_setting]), previous)
    return {"monitoring_password_hash": hashed}
