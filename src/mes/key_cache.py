"""A short per-process memory of API key -> client, so that a busy client's requests do not each
pay a database round trip (through Pgpool-II) just to find out who they are.

The price is bounded and documented: a revoked or replaced key keeps working in a process that
has it in memory for at most `ttl` seconds (MES_API_KEY_CACHE_SECONDS; 0 turns the cache off).
Only keys that matched a live client are kept, so a newly issued key works at once. Entries are
keyed by the key's SHA-256, never by the key itself, and the table is bounded (oldest first out).
"""
from __future__ import annotations

import threading
import time

from .services.accounts import KeyHolder


class KeyCache:
    """Key hash -> KeyHolder for `ttl` seconds, at most `max_entries` of them."""

    def __init__(self, ttl: float, *, max_entries: int = 1024):
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, KeyHolder]] = {}  # key hash -> (expires at, holder)
        self._lock = threading.Lock()  # gunicorn workers are single-threaded; dev and test servers are not

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def get(self, key_hash: str) -> KeyHolder | None:
        """The holder remembered for this key, unless it is older than the TTL."""
        if not self.enabled:
            return None
        with self._lock:
            found = self._entries.get(key_hash)
            if found is None:
                return None
            expires, holder = found
            if time.monotonic() >= expires:
                del self._entries[key_hash]
                return None
            return holder

    def put(self, key_hash: str, holder: KeyHolder) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._entries.pop(key_hash, None)  # re-insert at the end: dicts keep insertion order
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[key_hash] = (time.monotonic() + self.ttl, holder)
