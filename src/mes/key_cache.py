"""A short per-process memory of API key -> client, so that a busy client's requests do not each
pay a database round trip (through Pgpool-II) just to find out who they are.

The price is bounded and documented: a revoked or replaced key keeps working in a process that
has it in memory for at most `ttl` seconds (MES_API_KEY_CACHE_SECONDS; 0 turns the cache off).
Only keys that matched a live client are kept, so a newly issued key works at once. Entries are
keyed by the key's SHA-256, never by the key itself, and the table is bounded (cachetools' TTLCache).
"""
from __future__ import annotations

import threading

from cachetools import TTLCache

from .services.accounts import KeyHolder


class KeyCache:
    """Key hash -> KeyHolder for `ttl` seconds, at most `max_entries` of them (least recently used out)."""

    def __init__(self, ttl: float, *, max_entries: int = 1024):
        self._entries: TTLCache[str, KeyHolder] | None = TTLCache(max_entries, ttl) if ttl > 0 else None
        self._lock = threading.Lock()  # gunicorn workers are single-threaded; dev and test servers are not

    def get(self, key_hash: str) -> KeyHolder | None:
        """The holder remembered for this key, unless it is older than the TTL."""
        if self._entries is None:
            return None
        with self._lock:
            return self._entries.get(key_hash)

    def put(self, key_hash: str, holder: KeyHolder) -> None:
        if self._entries is None:
            return
        with self._lock:
            self._entries[key_hash] = holder
