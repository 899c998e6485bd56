"""Drive the deploy-test harness by hand (as root, from the repository's root):

  python -m tests.deploy verify        build the hosts, ansible ping, apt through the relay, a tiny play
                                       twice (the second changes nothing), timings; tear down; check that
                                       nothing is left
  python -m tests.deploy up            build the hosts and leave them running (then `down`)
  python -m tests.deploy playbook site.yml --skip-tags loki,tempo,alloy,grafana
  python -m tests.deploy ansible all -m ansible.builtin.ping
  python -m tests.deploy ssh db1 'systemctl status postgresql'
  python -m tests.deploy down          remove everything `up` made
  python -m tests.deploy status        what exists now
Every client runs inside the controller namespace mesdt-ctl.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .cluster import ANSIBLE_DIR, CTL_IP, INVENTORY, VAULT_ARGS, Cluster
from .network import CTL_NS
from .util import TIMINGS, log, timed

VERIFY_PLAY = """\
---
- name: Harness check - a package and a systemd service on two hosts
  hosts: "{hosts}"
  gather_facts: false
  handlers:
    - name: Restart the web service
      ansible.builtin.systemd_service:
        name: harness-web.service
        state: restarted
        daemon_reload: true
  tasks:
    - name: A Debian package, through the apt relay
      ansible.builtin.apt:
        name: cron
        state: present
        update_cache: true
        cache_valid_time: 3600
    - name: Its service runs
      ansible.builtin.systemd_service:
        name: cron.service
        state: started
        enabled: true
    - name: A folder to serve
      ansible.builtin.file:
        path: /srv/harness
        state: directory
        mode: "0755"
    - name: A page to serve
      ansible.builtin.copy:
        dest: /srv/harness/index.html
        content: "{{{{ inventory_hostname }}}}\\n"
        mode: "0644"
    - name: A systemd unit of our own
      ansible.builtin.copy:
        dest: /etc/systemd/system/harness-web.service
        mode: "0644"
        content: |
          [Unit]
          Description=deploy-test harness check
          [Service]
          ExecStart=/usr/bin/python3 -m http.server 8765 --bind {{{{ ansible_host }}}} --directory /srv/harness
          [Install]
          WantedBy=multi-user.target
      notify: Restart the web service
    - name: It runs
      ansible.builtin.systemd_service:
        name: harness-web.service
        state: started
        enabled: true
        daemon_reload: true
    - name: The controller reaches it
      ansible.builtin.uri:
        url: "http://{{{{ ansible_host }}}}:8765/"
        return_content: true
      delegate_to: localhost
      register: page
      until: page.status == 200
      retries: 20
      delay: 0.5
      failed_when: page.content | trim != inventory_hostname
"""


def verify(cluster: Cluster) -> int:
    started = time.monotonic()
    cluster.up()
    problems = []
    try:
        with timed("ansible -m ping all"):
            pings = cluster.adhoc("all", "ansible.builtin.ping")
        bad = sorted(h for h in cluster.hosts if pings.get(h, {}).get("ping") != "pong")
        log(f"ping: {len(pings) - len(bad)}/{len(cluster.hosts)} pong" + (f"; no pong from {bad}" if bad else ""))
        problems += [f"no pong from {h}" for h in bad]
        host = next(iter(cluster.hosts))
        with timed(f"apt-get update on {host} through the relay"):
            r = cluster.ssh(host, "apt-get update 2>&1 | tail -4", check=False)
        print(r.stdout, file=sys.stderr)
        if r.returncode != 0 or "Reading package lists" not in r.stdout:
            problems.append(f"apt-get update on {host} failed")
        two = ",".join(list(cluster.hosts)[1:3])
        with tempfile.TemporaryDirectory(prefix="mes-deploy-verify-") as tmp:
            play = Path(tmp) / "harness-check.yml"
            play.write_text(VERIFY_PLAY.format(hosts=two))
            for attempt in (1, 2):
                with timed(f"throwaway play on {two}, run {attempt}"):
                    result = cluster.playbook(str(play))
                if not result.ok:
                    problems.append(f"play run {attempt} failed:\n{result.tail(40)}")
                if attempt == 2 and result.changed:
                    problems.append(f"play run 2 changed {result.changed}: {result.changed_tasks}")
    finally:
        cluster.down()
    left = cluster.leftovers()
    log("left after teardown: " + ("nothing" if not left else "; ".join(left)))
    problems += [f"left over: {x}" for x in left]
    TIMINGS["verify total"] = round(time.monotonic() - started, 1)
    print(json.dumps({"timings_s": TIMINGS, "problems": problems}, indent=1))
    return 1 if problems else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["verify", "up", "down", "status", "playbook", "ansible", "ssh"])
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cluster = Cluster()
    if args.command == "verify":
        return verify(cluster)
    if args.command == "up":
        cluster.up()
        cluster.detach()
        log(f"hosts left running; controller namespace {CTL_NS} ({CTL_IP}); inventory {INVENTORY}. "
            "Remove them with: python -m tests.deploy down")
        return 0
    if args.command == "down":
        cluster.down(force=True)
        left = cluster.leftovers()
        log("left: " + ("nothing" if not left else "; ".join(left)))
        return 1 if left else 0
    if args.command == "status":
        print(json.dumps(cluster.state_snapshot(), indent=1))
        return 0
    if args.command == "ssh":
        host, *command = args.args
        cluster.attach()
        return subprocess.call(["ip", "netns", "exec", CTL_NS, "ssh", "-F", str(cluster.ssh_config),
                                cluster.hosts[host], *command])
    cluster.attach()
    tool = "ansible-playbook" if args.command == "playbook" else "ansible"
    extra = ["--playbook-dir", str(ANSIBLE_DIR)] if tool == "ansible" else []
    return subprocess.call(["ip", "netns", "exec", CTL_NS, str(cluster.settings.ansible_bin / tool),
                            "-i", str(INVENTORY), *VAULT_ARGS, *extra, *args.args], cwd=ANSIBLE_DIR,
                           env=cluster.ansible_env())


if __name__ == "__main__":
    sys.exit(main())
