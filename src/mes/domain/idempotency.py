"""Idempotent creates: the same key with the same body gives the first answer again."""
from __future__ import annotations

import hashlib
import json
import re

from .errors import IdempotencyKeyMissing, IdempotencyKeyReused, ValidationFailed

MAX_KEY_LENGTH = 255
#: Visible ASCII and spaces, as a header value can carry them everywhere (the key is stored as text).
KEY_PATTERN = r"^[ -~]*[!-~][ -~]*$"
_KEY = re.compile(KEY_PATTERN)


def check_key(key: str | None) -> str:
    """Return the key, or explain why it is unusable."""
    if key is None or not key.strip():
        raise IdempotencyKeyMissing(
            "POST /orders needs an Idempotency-Key header (for example a UUID) so that retries never duplicate an order."
        )
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationFailed(
            f"Idempotency-Key is longer than {MAX_KEY_LENGTH} characters.",
            errors=[{"field": "Idempotency-Key", "message": f"at most {MAX_KEY_LENGTH} characters"}],
        )
    if not _KEY.match(key):
        raise ValidationFailed(
            "Idempotency-Key may hold only visible ASCII characters and spaces (a UUID, for example).",
            errors=[{"field": "Idempotency-Key", "message": "visible ASCII characters and spaces only"}],
        )
    return key.strip()


def fingerprint(payload: object) -> str:
    """Hash of the request as parsed JSON, so whitespace and key order do not matter."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_replay(stored_fingerprint: str, new_fingerprint: str) -> None:
    if stored_fingerprint != new_fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used with a different request body; use a new key for a new order."
        )
