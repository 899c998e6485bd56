"""The deploy test (`make test-deploy`) needs root, builds Debian hosts in systemd-nspawn containers and
takes 10-20 minutes, so `make test` does not collect this folder (pyproject: norecursedirs); it runs
only when named: `pytest tests/deploy`."""
from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line("markers", "deploy: the Ansible playbooks against Debian hosts in systemd-nspawn "
                                       "containers on this machine (root, make test-deploy)")
