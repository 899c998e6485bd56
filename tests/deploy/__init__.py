"""The deploy test: the Ansible playbooks against real Debian 12 hosts on this one machine.

Each host is a systemd-nspawn container (systemd as PID 1, sshd, apt) in its own network namespace on a
private bridge; Ansible, ssh and every test client run in a controller namespace on the same bridge.
See README.md in this folder; `python -m tests.deploy --help` drives the harness by hand.
"""
