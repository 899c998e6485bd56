"""The deploy-test harness: builds the hosts of ansible/inventories/test/hosts.yml as systemd-nspawn
containers on a private network, runs Ansible from the controller namespace, and removes everything it
made when it ends (normally, on an exception, on SIGINT/SIGTERM/SIGHUP, at exit; a run that was killed
outright is cleaned up by the next one, from its state file).

Order of `up`: blackhole route for the test subnet (root namespace) -> rootfs (cache or debootstrap) ->
one copy per host -> bridge and namespaces -> apt relay -> boot -> wait for sshd from the controller.
"""
from __future__ import annotations

import atexit
import fcntl
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from . import containers, network, relay, rootfs
from .util import TIMINGS, log, pid_cmdline, run, timed, wait_until

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
INVENTORY = ANSIBLE_DIR / "inventories" / "test" / "hosts.yml"
# Hosts booted with the others but left out of site.yml: add_replica.yml makes db3 a database node,
# restore.yml restores the database onto rest1.
SPARE_INVENTORIES = (ANSIBLE_DIR / "inventories" / "test" / "add_replica.yml",
                     ANSIBLE_DIR / "inventories" / "test" / "restore.yml")
# The test inventory runs with the throwaway vault (ansible.cfg names no password file; the inventory
# allows the throwaway vault: ansible/vault_check.yml).
VAULT_ARGS = ["--vault-password-file", str(ANSIBLE_DIR / "vault-password.throwaway")]
SUBNET = "10.213.0.0/24"          # must match the inventory; blackholed in the root namespace
CTL_IP = "10.213.0.2"
CLIENT2_IP = "10.213.0.3"         # a second address of the controller namespace: a client of its own
# Every container may configure its own network namespace (CAP_NET_ADMIN, which nspawn drops with
# --network-namespace-path): the firewall role loads nftables on every host, and keepalived adds and
# removes the virtual address (mes_vip) on the lb hosts.
REQUIRED_TOOLS = ["debootstrap", "systemd-nspawn", "socat", "ip", "ssh", "ssh-keygen", "tar"]
DEBIAN_TOOLS = "debootstrap systemd-container socat iproute2 openssh-client"
LOCK_FILE = "/run/mes-deploy-test.lock"


def _env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name) or default)


@dataclass
class Settings:
    cache_dir: Path = field(default_factory=lambda: _env_path("MES_DEPLOY_CACHE_DIR", "/var/cache/mes-deploy-test"))
    work_dir: Path = field(default_factory=lambda: _env_path("MES_DEPLOY_WORK_DIR", "/var/tmp/mes-deploy-test"))
    ansible_bin: Path = field(default_factory=lambda: find_ansible_bin())
    verbose: bool = field(default_factory=lambda: os.environ.get("MES_DEPLOY_VERBOSE", "") not in ("", "0"))
    keep_logs: str = field(default_factory=lambda: os.environ.get("MES_DEPLOY_KEEP_LOGS", ""))
    boot_timeout: float = 90


def find_ansible_bin() -> Path:
    """The folder of ansible-playbook: MES_DEPLOY_ANSIBLE_BIN, else next to this Python, else PATH."""
    if os.environ.get("MES_DEPLOY_ANSIBLE_BIN"):
        return Path(os.environ["MES_DEPLOY_ANSIBLE_BIN"])
    here = Path(sys.executable).parent
    if (here / "ansible-playbook").exists():
        return here
    found = shutil.which("ansible-playbook")
    return Path(found).parent if found else here


def read_inventory(*paths: Path) -> dict[str, str]:
    """host name -> address, from the test inventory files (default: hosts.yml and the spare hosts);
    every address must be in the test subnet."""
    paths = paths or (INVENTORY, *SPARE_INVENTORIES)
    hosts: dict[str, str] = {}
    for path in paths:
        hosts.update(_inventory_hosts(path))
    net = ipaddress.ip_network(SUBNET)
    for name, address in hosts.items():
        if ipaddress.ip_address(address) not in net or address in (CTL_IP, CLIENT2_IP):
            raise ValueError(f"{name} has {address}, outside {SUBNET} or the controller's address")
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,11}", name):
            raise ValueError(f"host name {name!r} is not usable as a short namespace name")
    if len(set(hosts.values())) != len(hosts):
        raise ValueError(f"two hosts of {', '.join(p.name for p in paths)} share an address")
    return hosts


def group_hosts(group: str, path: Path = INVENTORY) -> list[str]:
    """The hosts of one group of an inventory file (directly in it)."""
    data = yaml.safe_load(path.read_text())
    found = (data["all"].get("children") or {}).get(group) or {}
    return list(found.get("hosts") or {})


def group_var(group: str, name: str, path: Path = INVENTORY):
    """A variable set on one group of an inventory file, or None."""
    data = yaml.safe_load(path.read_text())
    return (((data["all"].get("children") or {}).get(group) or {}).get("vars") or {}).get(name)


def _inventory_hosts(path: Path) -> dict[str, str]:
    data = yaml.safe_load(path.read_text())
    hosts: dict[str, str] = {}

    def walk(group: dict) -> None:
        for name, hv in ((group or {}).get("hosts") or {}).items():
            address = (hv or {}).get("ansible_host")
            if address:
                hosts.setdefault(name, address)
        for child in ((group or {}).get("children") or {}).values():
            walk(child)

    walk(data["all"])
    return hosts


@dataclass
class AnsibleRun:
    argv: list[str]
    returncode: int
    output: str
    log_path: Path
    recap: dict[str, dict[str, int]]
    changed_tasks: list[str]     # "TASK name => host" of every change, to explain a non-idempotent run

    @property
    def changed(self) -> int:
        return sum(r["changed"] for r in self.recap.values())

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.recap) and all(
            r["failed"] == 0 and r["unreachable"] == 0 for r in self.recap.values())

    @property
    def failed_hosts(self) -> list[str]:
        return [h for h, r in self.recap.items() if r["failed"] or r["unreachable"]]

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


RECAP_LINE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
                        r"\s+skipped=(\d+)\s+rescued=(\d+)\s+ignored=(\d+)")


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    recap, in_recap = {}, False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        match = RECAP_LINE.match(line.strip()) if in_recap else None
        if match:
            keys = ["ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored"]
            recap[match.group(1)] = dict(zip(keys, map(int, match.groups()[1:])))
    return recap


TIMED_HEADER = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?\| "
                          r"(?:(TASK|RUNNING HANDLER|PLAY) \[(.*)\]|PLAY RECAP) \*+$")


def slowest_tasks(timed_log: Path, count: int = 8) -> list[tuple[float, str]]:
    """The tasks that took longest in a run: (seconds, "TASK name"), from Ansible's own log (log_path
    stamps each line): a task lasts from its header to the next one, over all hosts of its batch, and
    a task of a serial play adds up over the batches."""
    seconds: dict[str, float] = {}
    current, began = None, None
    for line in timed_log.read_text(errors="replace").splitlines() if timed_log.exists() else ():
        match = TIMED_HEADER.match(line)
        if not match:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if current is not None:
            seconds[current] = seconds.get(current, 0.0) + at - began
        current = f"{match.group(2)} {match.group(3)}" if match.group(2) in ("TASK", "RUNNING HANDLER") else None
        began = at
    return sorted(((t, task) for task, t in seconds.items()), reverse=True)[:count]


def parse_changed_tasks(output: str) -> list[str]:
    changed, task = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line[6:line.rfind("]")]
        elif line.startswith("changed: ["):
            changed.append(f"{task} => {line[10:line.index(']')]}")
    return changed


class Cluster:
    """The test hosts. `up()` builds and boots them; `down()` removes all that `up()` made."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.hosts = read_inventory()                  # every host the harness boots
        self.site_hosts = read_inventory(INVENTORY)    # the hosts site.yml builds (not the spares)
        self.work = self.settings.work_dir
        self.state_file = self.work / "state.json"
        self.logs = self.work / "logs"
        self.key = self.work / "id_ed25519"
        self.ssh_config = self.work / "ssh_config"
        self.control_dir = self.work / f"cp-{os.getpid()}"   # fresh per harness run (facts.md)
        self.state: dict = {}
        self._lock_fd: int | None = None
        self._ansible_runs = 0
        self._down_done = True

    # --- state -------------------------------------------------------------------------------------------
    def _save(self, **changes) -> None:
        self.state.update(changes)
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.state_file)

    def _lock(self) -> None:
        self._lock_fd = os.open(LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another deploy test holds {LOCK_FILE}; one at a time (fixed subnet)") from None

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            try:
                os.unlink(LOCK_FILE)
            except FileNotFoundError:
                pass

    # --- up ----------------------------------------------------------------------------------------------
    def up(self) -> "Cluster":
        if os.geteuid() != 0:
            raise RuntimeError("the deploy test needs root (namespaces, nspawn, debootstrap)")
        missing = [t for t in REQUIRED_TOOLS if not shutil.which(t)]
        if missing:
            raise RuntimeError(f"missing {missing}: apt-get install {DEBIAN_TOOLS}")
        self._lock()
        self._down_done = False
        self._install_cleanup_hooks()
        started = time.monotonic()
        try:
            self._clean_stale()
            network.check_subnet_is_free(SUBNET)
            network.add_blackhole(SUBNET)               # before any namespace or address exists
            self.work.mkdir(parents=True, exist_ok=True)
            self.logs.mkdir(exist_ok=True)
            self._save(subnet=SUBNET, blackhole=True, hosts=self.hosts, netns=[], nspawn={}, relays=[])
            sources = rootfs.debian_sources(rootfs.machine_apt_sources())
            base = rootfs.ensure_base(self.settings.cache_dir, self.work, rootfs.main_mirror(sources))
            self._make_ssh_key()
            relays, through_proxy = relay.plan(sources, self.work)
            with timed(f"host roots ({len(self.hosts)} copies)"):
                self._make_roots(base, relay.apt_conf(relays, through_proxy, CTL_IP), sources)
            shutil.rmtree(base)
            with timed("network (bridge, namespaces, veths)"):
                self._make_network()
            for r in relays:
                relay.start(r, CTL_IP, self.logs)
                self._save(relays=self.state["relays"] + [r.root_pid, r.ctl_pid])
            with timed(f"boot {len(self.hosts)} containers until sshd answers"):
                self._boot()
            TIMINGS["up total"] = round(time.monotonic() - started, 1)
            log(f"hosts are up: {', '.join(f'{h}={a}' for h, a in self.hosts.items())}")
        except BaseException:
            log("bringing the hosts up failed; tearing down")
            self.down()
            raise
        return self

    def _make_ssh_key(self) -> None:
        for f in (self.key, self.key.with_suffix(".pub")):
            if f.exists():
                f.unlink()
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mes-deploy-test", "-f", str(self.key)],
            quiet=True)
        self.ssh_config.write_text(
            "Host *\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n  ConnectTimeout 5\n"
            "  ServerAliveInterval 15\n".format(key=self.key))

    def _etc_hosts(self) -> str:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", f"{CTL_IP}\tctl"]
        lines += [f"{address}\t{name}" for name, address in self.hosts.items()]
        return "\n".join(lines) + "\n"

    def _make_roots(self, base: Path, apt_conf: str, sources) -> None:
        pub = self.key.with_suffix(".pub").read_text()
        with ThreadPoolExecutor(max_workers=3) as pool:      # copying is I/O; three at a time is enough
            for done in [pool.submit(rootfs.make_host_root, base, self.root_of(name), name, pub,
                                     self._etc_hosts(), apt_conf, sources) for name in self.hosts]:
                done.result()

    def root_of(self, host: str) -> Path:
        return self.work / "hosts" / host

    def _make_network(self) -> None:
        prefixlen = ipaddress.ip_network(SUBNET).prefixlen
        network.make_bridge()
        self._save(netns=[network.BRIDGE_NS])
        network.attach("ctl", network.CTL_NS, CTL_IP, prefixlen, extra=(CLIENT2_IP,))
        self._save(netns=self.state["netns"] + [network.CTL_NS])
        for name, address in self.hosts.items():
            network.attach(name, network.netns(name), address, prefixlen)
            self._save(netns=self.state["netns"] + [network.netns(name)])

    def start_container(self, name: str, log_name: str) -> int:
        """Boot one host's container (again); returns the pid of its systemd-nspawn."""
        return containers.start(name, self.root_of(name), network.netns(name), self.logs / log_name,
                                capabilities=("CAP_NET_ADMIN",))

    def _boot(self) -> None:
        for name in self.hosts:
            pid = self.start_container(name, f"console-{name}.log")
            self._save(nspawn={**self.state["nspawn"], name: pid})
        for name, address in self.hosts.items():
            def answers(name=name, address=address):
                if not containers.is_ours(self.state["nspawn"][name], name):
                    raise RuntimeError(f"{name}'s container exited while booting; see "
                                       f"{self.logs / f'console-{name}.log'}:\n{self.console_tail(name)}")
                return self.ssh(name, "true", check=False, timeout=10, quiet=True).returncode == 0
            wait_until(answers, self.settings.boot_timeout, interval=0.3, what=f"sshd on {name} ({address})")
            log(f"{name}: sshd answers")

    def console_tail(self, host: str, lines: int = 30) -> str:
        path = self.logs / f"console-{host}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # --- clients, all inside the controller namespace ---------------------------------------------------
    def in_ctl(self, argv: list[str], check: bool = True, timeout: float | None = 600, quiet: bool = False,
               **kwargs) -> subprocess.CompletedProcess:
        """Run a command inside the controller namespace (the only place test traffic starts from)."""
        return run(["ip", "netns", "exec", network.CTL_NS, *argv], check=check, timeout=timeout, quiet=quiet,
                   **kwargs)

    def ssh(self, host: str, command: str, check: bool = True, timeout: float = 120,
            quiet: bool = False) -> subprocess.CompletedProcess:
        return self.in_ctl(["ssh", "-F", str(self.ssh_config), self.hosts[host], command], check=check,
                           timeout=timeout, quiet=quiet)

    def ansible_env(self) -> dict[str, str]:
        self.control_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_INVENTORY": str(INVENTORY),
            "ANSIBLE_PRIVATE_KEY_FILE": str(self.key),
            "ANSIBLE_SSH_ARGS": f"-F {self.ssh_config} -o ControlMaster=auto -o ControlPersist=120s",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_dir),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_LOCAL_TEMP": str(self.work / "ansible-tmp"),
            "PATH": f"{self.settings.ansible_bin}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def playbook(self, playbook: str, *args: str, extra_vars: dict | None = None, with_spares: bool = False,
                 timeout: float = 1800) -> AnsibleRun:
        """ansible-playbook <ansible/playbook> from the controller namespace (inventory hosts.yml, and the
        spare hosts too when with_spares); output to a log file, with progress (plays, failures, the
        recap) on stderr, or every line with MES_DEPLOY_VERBOSE=1."""
        inventories = ["-i", str(INVENTORY)]
        for spare in SPARE_INVENTORIES if with_spares else ():
            inventories += ["-i", str(spare)]
        argv = [str(self.settings.ansible_bin / "ansible-playbook"), *inventories, *VAULT_ARGS, playbook, *args]
        if extra_vars:
            argv += ["-e", json.dumps(extra_vars)]
        return self._ansible(argv, Path(playbook).stem, timeout)

    def _ansible(self, argv: list[str], label: str, timeout: float) -> AnsibleRun:
        self._ansible_runs += 1
        log_path = self.logs / f"ansible-{self._ansible_runs:02d}-{label}.log"
        timed_log = self.logs / f"ansible-{self._ansible_runs:02d}-{label}.timed.log"
        full = ["ip", "netns", "exec", network.CTL_NS, *argv]
        log(f"$ {shlex.join(argv)}   (in {network.CTL_NS}; log {log_path})")
        lines: list[str] = []
        env = self.ansible_env()
        env["ANSIBLE_LOG_PATH"] = str(timed_log)  # each line with its time: where a run's minutes go
        with open(log_path, "w") as out:
            proc = subprocess.Popen(full, cwd=ANSIBLE_DIR, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            watchdog = threading.Timer(timeout, lambda: (log(f"{label}: no end after {timeout:.0f} s; killing it"),
                                                         proc.kill()))
            watchdog.daemon = True
            watchdog.start()
            in_recap = False
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    out.write(line)
                    lines.append(line.rstrip("\n"))
                    in_recap = in_recap or line.startswith("PLAY RECAP")
                    if self.settings.verbose or in_recap or line.startswith(("PLAY [", "fatal:", "ERROR", "[ERROR")) \
                            or "FAILED!" in line or "UNREACHABLE!" in line:
                        print(f"    {line.rstrip()}", file=sys.stderr, flush=True)
            except BaseException:          # interrupted (signal, Ctrl-C): ansible must not outlive us
                proc.kill()
                proc.wait()
                raise
            finally:
                watchdog.cancel()
            returncode = proc.wait()
        output = "\n".join(lines)
        result = AnsibleRun(argv, returncode, output, log_path, parse_recap(output), parse_changed_tasks(output))
        log(f"{label}: rc={returncode}, changed={result.changed}")
        for seconds, task in slowest_tasks(timed_log):
            log(f"{label}: {seconds:6.1f} s  {task}")
        return result

    def adhoc(self, pattern: str, module: str, args: str = "", *options: str, timeout: float = 600) -> dict:
        """An ad-hoc module run; returns host -> the module's result (rc, stdout, changed, ...)."""
        tree = self.work / f"adhoc-{time.monotonic_ns()}"
        argv = [str(self.settings.ansible_bin / "ansible"), "-i", str(INVENTORY), *VAULT_ARGS, "--playbook-dir",
                str(ANSIBLE_DIR), pattern, "-m", module]
        if args:
            argv += ["-a", args]
        argv += list(options)
        env = self.ansible_env()
        env.update({"ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_CALLBACKS_ENABLED": "tree",
                    "ANSIBLE_CALLBACK_TREE_DIR": str(tree)})
        log(f"$ {shlex.join(argv)}   (in {network.CTL_NS})")
        run(["ip", "netns", "exec", network.CTL_NS, *argv], check=False, timeout=timeout, quiet=True,
            cwd=ANSIBLE_DIR, env=env)
        results = {}
        if tree.exists():
            for f in tree.iterdir():
                results[f.name] = json.loads(f.read_text())
            shutil.rmtree(tree)
        return results

    def diagnose(self, hosts: list[str], lines: int = 25) -> str:
        """The failed systemd units of these hosts and the end of their journals, for a failure message."""
        script = ("systemctl --failed --no-legend --plain --no-pager; "
                  "for u in $(systemctl --failed --no-legend --plain | awk '{print $1}'); do "
                  f"echo \"--- journal of $u\"; journalctl -u \"$u\" -n {lines} --no-pager -o short; done")
        parts = []
        for host in hosts:
            if host in self.hosts:
                r = self.ssh(host, script, check=False, timeout=60, quiet=True)
                parts.append(f"=== {host}: failed units\n{r.stdout.strip() or '(none)'}")
        return "\n".join(parts)

    # --- down --------------------------------------------------------------------------------------------
    def _install_cleanup_hooks(self) -> None:
        atexit.register(self.down)

        def to_exception(signum, _frame):
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, to_exception)

    def detach(self) -> None:
        """Leave the hosts running when this process ends (`python -m tests.deploy up`)."""
        atexit.unregister(self.down)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        self._down_done = True
        self._unlock()

    def attach(self) -> "Cluster":
        """Use hosts that an earlier `up` left running."""
        self.state = self._load_state()
        if not self.state.get("nspawn"):
            raise SystemExit("no hosts are up (python -m tests.deploy up)")
        return self

    def state_snapshot(self) -> dict:
        return {"state": self._load_state(), "leftovers": self.leftovers()}

    def down(self, force: bool = False) -> None:
        """Remove everything `up` made (idempotent). Signals are held off until it is done."""
        if force:
            self._lock()
            self._down_done = False
        if self._down_done:
            return
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            with timed("teardown"):
                self._teardown(self.state or self._load_state())
            self._down_done = True
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
            self._unlock()

    def _load_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _clean_stale(self) -> None:
        """A run that was killed outright (no teardown) left its state file: clean up after it, and
        sweep our own names (mesdt-* namespaces, our cgroups, our blackhole)."""
        stale = self._load_state()
        ours = [ns for ns in network.existing_netns() if ns.startswith(network.PREFIX + "-")]
        if stale or ours:
            log(f"cleaning up after an earlier run that did not finish ({len(ours)} namespaces left)")
            self._teardown(stale)

    def _stop_control_masters(self) -> None:
        if network.CTL_NS not in network.existing_netns():
            return
        for sock_dir in self.work.glob("cp-*"):
            for sock in sock_dir.iterdir():
                self.in_ctl(["ssh", "-O", "exit", "-o", f"ControlPath={sock}", "deploy-test"], check=False,
                            timeout=10, quiet=True)

    def _teardown(self, state: dict) -> None:
        if self.work.exists():
            self._stop_control_masters()
        nspawn = {h: int(p) for h, p in (state.get("nspawn") or {}).items()}
        for host in set(self.hosts) | set(state.get("hosts") or {}):
            nspawn.setdefault(host, 0)
        containers.stop_all(nspawn)
        relay.stop([int(p) for p in state.get("relays") or []])
        namespaces = [ns for ns in network.existing_netns() if ns.startswith(network.PREFIX + "-")]
        for ns in namespaces:
            for pid in network.netns_pids(ns):
                log(f"ending pid {pid} left in {ns}: {pid_cmdline(pid)[:120]}")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for ns in sorted(namespaces, key=lambda n: n == network.BRIDGE_NS):   # the bridge last
            network.delete_netns(ns)
        network.del_blackhole(SUBNET)                     # only once no namespace is left
        self._remove_work_dir()

    def _remove_work_dir(self) -> None:
        if not self.work.exists():
            return
        if self.settings.keep_logs and self.logs.exists():
            dest = Path(self.settings.keep_logs)
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copytree(self.logs, dest / time.strftime("%Y%m%d-%H%M%S"), dirs_exist_ok=True)
        mounted = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                   if line.split()[1].startswith(str(self.work) + "/")]
        for mount in sorted(mounted, key=len, reverse=True):
            run(["umount", "-l", mount], check=False)
        hosts_dir = self.work / "hosts"
        if hosts_dir.exists():
            with ThreadPoolExecutor(max_workers=3) as pool:
                list(pool.map(lambda d: shutil.rmtree(d, ignore_errors=True), list(hosts_dir.iterdir())))
        shutil.rmtree(self.work, ignore_errors=True)
        log(f"removed {self.work} (host copies, keys, logs)")

    # --- checks ------------------------------------------------------------------------------------------
    def leftovers(self) -> list[str]:
        """What of ours still exists anywhere: must be empty after down()."""
        found = [f"network namespace {ns}" for ns in network.existing_netns()
                 if ns.startswith(network.PREFIX + "-")]
        if network.has_blackhole(SUBNET):
            found.append(f"blackhole route {SUBNET}")
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                cmd = pid_cmdline(int(entry))
                if f"--machine={network.PREFIX}-" in cmd or (self.work.as_posix() in cmd and "socat" in cmd):
                    found.append(f"process {entry}: {cmd[:100]}")
        for root in containers.cgroup_roots():
            if (root / containers.CGROUP_GROUP).exists():
                found.append(f"cgroup {root / containers.CGROUP_GROUP}")
        if self.work.exists():
            found.append(f"work folder {self.work}")
        return found

