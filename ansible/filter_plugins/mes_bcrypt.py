"""`mes_bcrypt`: the bcrypt hash of the monitoring password (mes_secrets.monitoring_password) that the
monitoring endpoints' files keep: Prometheus' and Alertmanager's web configuration
(monitoring/web.yml.j2) and the userlists of HAProxy's stats frontends (haproxy/*.cfg.j2).

One function for both places that need it: this filter (Ansible, on the controller) and the local
stack (stack/monauth.py loads this file as it is: plain Python, no Ansible import).
"""
from __future__ import annotations

import re

# A bcrypt hash as `bcrypt` writes it: $2b$<cost>$<22 characters of salt><31 of hash>.
_HASH = re.compile(r"\$2b\$(\d\d)\$[./A-Za-z0-9]{53}")


def bcrypt_hash(password: str, cost: int = 12, previous: str = "") -> str:
    """The bcrypt hash of `password` at `cost`. A hash at that cost found in `previous` (the file as it
    is now) that matches the password is returned instead of a new one: a new salt every run would
    change the file every run (a reload each time, and a second run that is not `changed=0`)."""
    import bcrypt  # here, not at the top: Ansible loads every filter plugin, used or not

    secret = str(password).encode()
    for found in _HASH.finditer(previous or ""):
        if int(found.group(1)) == int(cost) and bcrypt.checkpw(secret, found.group(0).encode()):
            return found.group(0)
    return bcrypt.hashpw(secret, bcrypt.gensalt(int(cost))).decode()


class FilterModule:
    def filters(self):
        return {"mes_bcrypt": bcrypt_hash}
