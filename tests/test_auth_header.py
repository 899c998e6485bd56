"""The Authorization forms the app accepts are exactly those HAProxy's per-key limit counts as the key."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import auth

from mes.api.auth import BEARER, bearer_token

ROOT = Path(__file__).resolve().parent.parent
KEY = "mes_0123abcd_Zx9-Qw_ErTyUiOpAsDfGhJkL"
ACCEPTED = [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f"BeArEr {KEY}", f"Bearer\t{KEY}",
            f"Bearer    {KEY}", f"Bearer \t {KEY}", f"Bearer {KEY}  ", f"Bearer {KEY}\t"]
REFUSED = ["", "Bearer", "Bearer ", f"Bearer{KEY}", f"Basic {KEY}", f"Token {KEY}", f"Bearer {KEY} extra",
           f"Bearer {KEY},Bearer other", f" Bearer {KEY}x\n", f"Bearer {KEY}\n", f"Bearer \"{KEY}\"",
           f"Bearer\u00a0{KEY}", f"Bearers {KEY}"]


@pytest.mark.parametrize("header", ACCEPTED)
def test_every_accepted_form_gives_the_same_key(header):
    assert bearer_token(header) == KEY


@pytest.mark.parametrize("header", REFUSED)
def test_other_forms_give_no_key(header):
    assert bearer_token(header) is None


def test_haproxy_reads_the_key_with_the_same_pattern():
    """haproxy.cfg.j2 spells the pattern in POSIX classes; it is the app's BEARER otherwise."""
    template = (ROOT / "haproxy" / "haproxy.cfg.j2").read_text()
    haproxy_regex = re.search(r"set bearer_regex = '([^']+)'", template).group(1)
    assert haproxy_regex == BEARER.pattern.replace("[ \\t]", "[[:blank:]]")
    assert f"-m reg {{{{ bearer_regex }}}}" in template and 'regsub("{{ bearer_regex }}","\\1")' in template


@pytest.mark.parametrize("scheme", ["Bearer ", "bearer ", "BEARER\t", "Bearer   ", "Bearer \t "])
def test_the_app_authenticates_every_accepted_form(client, accounts_, scheme):
    key = auth(accounts_.partner())["Authorization"].split()[1]
    r = client.get("/api/v1/orders?limit=1", headers={"Authorization": f"{scheme}{key}"})
    assert r.status_code == 200, r.get_json()


def test_the_app_refuses_a_key_glued_to_the_scheme(client, accounts_):
    key = auth(accounts_.partner())["Authorization"].split()[1]
    assert client.get("/api/v1/orders?limit=1", headers={"Authorization": f"Bearer{key}"}).status_code == 401
