"""The first answers of idempotent POSTs, kept per API client and Idempotency-Key (the rules are in
mes.domain.idempotency). Every POST that takes a key looks up and stores its answer here, in the same
transaction as its change, so that a retry gets that answer back and changes nothing.

A stored answer is the whole response body: where that body carries a secret (a webhook endpoint's
signing secret, on register and rotate), the record holds it too, until the purge
(`purge_idempotency_keys`, the scheduler's job) removes it with every other record past the retention."""
from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy.orm import Session

from ..domain.idempotency import check_replay
from ..models import IdempotencyRecord


@dataclass(frozen=True)
class Stored:
    status: int | None
    body: dict
    order_id: int | None


def stored(session: Session, client_id: int | None, key: str | None, fingerprint: str) -> Stored | None:
    """The answer already given to this client's key, or None (always None without a key); the same key
    with a different request is refused (422), whatever the answer was."""
    if key is None:
        return None
    record = session.get(IdempotencyRecord, (client_id, key))
    if record is None:
        return None
    check_replay(record.fingerprint, fingerprint)
    return Stored(record.response_status, json.loads(record.response_body), record.order_id)


def remember(session: Session, client_id: int | None, key: str | None, fingerprint: str, status: int | None = None,
             body: dict | None = None, *, order_id: int | None = None) -> IdempotencyRecord | None:
    """Add the answer to this key to the session's transaction (nothing without a key). A concurrent
    request with the same key that committed first makes the commit fail (the key is the primary key):
    the caller then replays that request's answer."""
    if key is None:
        return None
    record = IdempotencyRecord(client_id=client_id, key=key, fingerprint=fingerprint, response_status=status,
                               response_body=None if body is None else json.dumps(body), order_id=order_id)
    session.add(record)
    return record
