"""Idempotent POSTs: the same key with the same request gives the first answer again.

A create needs a key (a retry must never make a second order, nor a second webhook endpoint, which would
hear every event twice); a cancel takes one if sent (a cancel is safe to repeat anyway, the key makes the
retry return the first answer, marked as a replay).
Keys are per client and shared by every operation: the fingerprint covers what was asked, so a
create's key sent with a cancel is a key reused for another request."""
from __future__ import annotations

import hashlib
import json
import re

from .errors import IdempotencyKeyMissing, IdempotencyKeyReused, ValidationFailed

MAX_KEY_LENGTH = 255
#: Visible ASCII and spaces, as a header value can carry them everywhere (the key is stored as text).
KEY_PATTERN = r"^[ -~]*[!-~][ -~]*$"
_KEY = re.compile(KEY_PATTERN)


ORDER_KEY_MISSING = ("POST /orders needs an Idempotency-Key header (for example a UUID) so that retries never "
                     "duplicate an order.")


def check_key(key: str | None, missing: str = ORDER_KEY_MISSING) -> str:
    """Return the key, or explain why it is unusable (`missing`: why this request needs one)."""
    if key is None or not key.strip():
        raise IdempotencyKeyMissing(missing)
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


def optional_key(key: str | None) -> str | None:
    """The key of a POST that does not need one: None when the header is absent, else checked."""
    if key is None:
        return None
    if not key.strip():
        raise ValidationFailed(
            "Idempotency-Key is blank: send a key (for example a UUID) or leave the header out.",
            errors=[{"field": "Idempotency-Key", "message": "must not be blank"}],
        )
    return check_key(key)


def fingerprint(payload: object) -> str:
    """Hash of the request as parsed JSON, so whitespace and key order do not matter."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_replay(stored_fingerprint: str, new_fingerprint: str) -> None:
    if stored_fingerprint != new_fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used with a different request; use a new key for a new request."
        )
