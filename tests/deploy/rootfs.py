"""The hosts' root file systems: one debootstrap of Debian (cached as a tarball), one copy per host.

The mirror is the one this machine's own apt configuration names (read at run time, never written down
here); the hosts reach it through the apt relay (relay.py), since their network has no route out.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .util import log, run, timed

SUITE = "bookworm"
VARIANT = "minbase"
# What a bare Debian 12 server has, and what Ansible needs to manage it. The roles install the rest.
PACKAGES = sorted([
    "ca-certificates", "dbus", "iproute2", "less", "netbase", "openssh-server", "procps", "python3",
    "python3-apt", "sudo", "systemd", "systemd-sysv",
])
# Bump when the post-processing of the base changes, so that an old cached tarball is not used.
ROOTFS_LAYOUT_VERSION = 1
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@dataclass(frozen=True)
class AptSource:
    uri: str            # e.g. http://mirror.example/debian
    suites: tuple[str, ...]
    components: tuple[str, ...]

    @property
    def host(self) -> str:
        return urlsplit(self.uri).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.uri).port or 80


# --- the machine's apt configuration ------------------------------------------------------------------

def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas, current, key = [], {}, None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
        elif line[0] in " \t" and key:
            current[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _one_line_sources(text: str) -> list[AptSource]:
    found = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^]]*\]", " ", line[4:])
        parts = line.split()
        if len(parts) >= 2:
            found.append(AptSource(parts[0], (parts[1],), tuple(parts[2:]) or ("main",)))
    return found


def machine_apt_sources(root: str = "/") -> list[AptSource]:
    """The enabled `deb` sources of this machine's apt configuration, in apt's reading order."""
    etc = Path(root, "etc/apt")
    found: list[AptSource] = []
    if (etc / "sources.list").exists():
        found += _one_line_sources((etc / "sources.list").read_text())
    for path in sorted(glob.glob(str(etc / "sources.list.d" / "*"))):
        if path.endswith(".list"):
            found += _one_line_sources(Path(path).read_text())
        elif path.endswith(".sources"):
            for st in _deb822_stanzas(Path(path).read_text()):
                if st.get("enabled", "yes").lower() == "no" or "deb" not in st.get("types", "").split():
                    continue
                for uri in st.get("uris", "").split():
                    found.append(AptSource(uri, tuple(st.get("suites", "").split()),
                                           tuple(st.get("components", "main").split())))
    return found


def debian_sources(sources: list[AptSource]) -> list[AptSource]:
    """The machine's sources of our suite (bookworm, bookworm-updates, bookworm-security) over http."""
    picked = []
    for src in sources:
        suites = tuple(s for s in src.suites if s == SUITE or s.startswith(SUITE + "-"))
        if suites and urlsplit(src.uri).scheme == "http":
            picked.append(AptSource(src.uri, suites, src.components))
    if not any(SUITE in s.suites for s in picked):
        raise RuntimeError(f"this machine's apt configuration names no http:// mirror of Debian {SUITE}; "
                           "the deploy test needs one (its hosts' apt goes through a relay to it)")
    return picked


def main_mirror(sources: list[AptSource]) -> str:
    """The URI debootstrap uses: the first source that carries the suite itself."""
    return next(s.uri for s in sources if SUITE in s.suites)


def apt_config_value(name: str) -> str:
    """A setting of this machine's apt (empty when unset), e.g. Acquire::http::Proxy."""
    result = subprocess.run(["apt-config", "shell", "V", name], capture_output=True, text=True)
    match = re.match(r"V='(.*)'", result.stdout.strip())
    return match.group(1) if match else ""


# --- the base root file system --------------------------------------------------------------------------

def cache_key(mirror: str) -> str:
    spec = {"suite": SUITE, "variant": VARIANT, "packages": PACKAGES, "mirror": mirror,
            "layout": ROOTFS_LAYOUT_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _debootstrap(target: Path, mirror: str) -> None:
    run(["debootstrap", f"--variant={VARIANT}", "--include=" + ",".join(PACKAGES), SUITE, str(target), mirror],
        timeout=1200, quiet=False)


def _generalize(root: Path) -> None:
    """Make the fresh rootfs a template: no host identity, no host keys, no downloaded packages."""
    for key in root.glob("etc/ssh/ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_symlink() or dbus_id.exists():
        dbus_id.unlink()
    (root / "etc/hostname").write_text("localhost\n")
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    for f in (root / "var/lib/apt/lists").glob("*_*"):
        f.unlink()
    for f in (root / "var/cache/apt").glob("*.bin"):
        f.unlink()
    # debootstrap copied this machine's resolver; the test network has no DNS server.
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("# The deploy-test network has no DNS server; hosts are in /etc/hosts.\n")


def ensure_base(cache_dir: Path, work_dir: Path, mirror: str) -> Path:
    """work_dir/base: extracted from the cached tarball, or debootstrapped (and then cached)."""
    base = work_dir / "base"
    tarball = cache_dir / f"rootfs-{SUITE}-{cache_key(mirror)}.tar"
    if base.exists():
        shutil.rmtree(base)
    if tarball.exists():
        with timed(f"rootfs from cache {tarball.name}"):
            base.mkdir(parents=True)
            run(["tar", "-C", str(base), "--numeric-owner", "-xpf", str(tarball)], quiet=True)
        return base
    with timed(f"rootfs: debootstrap {SUITE} ({len(PACKAGES)} packages) from {mirror}"):
        building = work_dir / "base.building"
        shutil.rmtree(building, ignore_errors=True)
        _debootstrap(building, mirror)
        _generalize(building)
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(f".tar.{os.getpid()}.partial")
        run(["tar", "-C", str(building), "--numeric-owner", "--xattrs", "-cpf", str(partial), "."], quiet=True)
        partial.rename(tarball)
        for old in cache_dir.glob(f"rootfs-{SUITE}-*.tar"):
            if old != tarball:
                log(f"removing the outdated cached rootfs {old.name}")
                old.unlink()
        building.rename(base)
    return base


# --- one host -------------------------------------------------------------------------------------------

def make_host_root(base: Path, root: Path, hostname: str, authorized_key: str, etc_hosts: str,
                   apt_proxy_conf: str, apt_sources: list[AptSource]) -> None:
    """A copy of the base with its own name, machine id (empty: made at first boot), ssh host keys,
    the controller's key for root, /etc/hosts of the test network and apt pointed at the relay."""
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--reflink=auto", str(base), str(root)], quiet=True)
    (root / "etc/hostname").write_text(hostname + "\n")
    (root / "etc/machine-id").write_text("")
    (root / "etc/hosts").write_text(etc_hosts)
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(authorized_key)
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    run(["ssh-keygen", "-q", "-A", "-f", str(root)], quiet=True)
    (root / "etc/apt/apt.conf.d/00mes-deploy-test").write_text(apt_proxy_conf)
    # No package lists yet, and an old date on their folder: `apt: update_cache: true, cache_valid_time: N`
    # must fetch them (Ansible takes that folder's mtime as the last update).
    os.utime(root / "var/lib/apt/lists", (946684800, 946684800))
    sources_list = root / "etc/apt/sources.list"
    if sources_list.exists():
        sources_list.unlink()
    stanzas = [f"Types: deb\nURIs: {s.uri}\nSuites: {' '.join(s.suites)}\nComponents: {' '.join(s.components)}\n"
               f"Signed-By: {KEYRING}\n" for s in apt_sources]
    (root / "etc/apt/sources.list.d/debian.sources").write_text("\n".join(stanzas))
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "ssh.service"
    if not link.exists() and not link.is_symlink():
        link.symlink_to("/lib/systemd/system/ssh.service")
