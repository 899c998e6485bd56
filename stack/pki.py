"""The local stack's certificate authority and certificates, in the state folder's pki/: made by the
same script as the Ansible role `pki` (ansible/roles/pki/files/pki.sh). Trust the CA with
`curl --cacert <state>/pki/ca.crt`."""
from __future__ import annotations

import subprocess
from pathlib import Path

from .base import ROOT, Ctx, chown

SCRIPT = ROOT / "ansible" / "roles" / "pki" / "files" / "pki.sh"
CA_NAME = "MES local stack CA"
CA_DAYS, CERT_DAYS = 3650, 825


def ca_file(ctx: Ctx) -> Path:
    return ctx.path("pki", "ca.crt")


def certificate(ctx: Ctx, name: str, sans: list[str], owner: str | None = None) -> tuple[Path, Path]:
    """The key and certificate `name` for the stack's host (CN: the host), signed by the stack's CA
    (made on first use); the key readable by `owner` only. Returns (certificate, key)."""
    folder = ctx.ensure_dir(ctx.path("pki"), mode=0o755)
    subprocess.run([str(SCRIPT), "ca", str(folder), CA_NAME, str(CA_DAYS)], check=True)
    host = ctx.vars["mes_topology"]["haproxy"]["bind"]
    subprocess.run([str(SCRIPT), "cert", str(folder), name, host, ",".join(sans), str(CERT_DAYS)], check=True)
    crt, key = folder / f"{name}.crt", folder / f"{name}.key"
    if owner:
        chown(key, owner)
    return crt, key


def bundle(ctx: Ctx, name: str, sans: list[str], dest: Path) -> Path:
    """Certificate and key `name` in one PEM file at `dest` (HAProxy's `crt`), private to its owner."""
    crt, key = certificate(ctx, name, sans)
    text = crt.read_text() + key.read_text()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.parent.chmod(0o700)
    if not dest.exists() or dest.read_text() != text:
        dest.write_text(text)
    dest.chmod(0o600)
    return dest
