"""The per-process API key cache on its own: expiry, the size bound, and off at 0."""
from __future__ import annotations

import time

from mes.domain.actors import Actor, Scope
from mes.key_cache import KeyCache
from mes.services.accounts import KeyHolder


def holder(i: int) -> KeyHolder:
    return KeyHolder(client_id=i, rate_tier="standard", actor=Actor("client", i, f"c{i}", scope=Scope.CRM))


def test_entries_expire_after_the_ttl():
    cache = KeyCache(ttl=0.2)
    cache.put("a", holder(1))
    assert cache.get("a") == holder(1)
    time.sleep(0.2)
    assert cache.get("a") is None


def test_the_least_recently_used_entry_goes_first_when_full():
    cache = KeyCache(ttl=60, max_entries=2)
    for i in (1, 2, 3):
        cache.put(f"k{i}", holder(i))
    assert cache.get("k1") is None and cache.get("k2") == holder(2) and cache.get("k3") == holder(3)


def test_a_ttl_of_zero_remembers_nothing():
    cache = KeyCache(ttl=0)
    cache.put("a", holder(1))
    assert cache.get("a") is None
