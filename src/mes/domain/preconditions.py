"""Entity tags of an order and what `If-Match` on a change means: plain rules, no HTTP library.

An order's tag is `<id>-<status_version>-<updated_at>-<estimate>` (GET /orders/{id}; both instants in
microseconds, 0 for no estimate): it changes whenever the order's representation does, so that
`If-None-Match` can answer 304. The estimate is in it because the scheduler moves an estimate alone
without touching `updated_at`. Its status's tag is `<id>-<status_version>` (GET /orders/{id}/status). A write guarded by `If-Match` goes ahead when
a tag names the order's current status_version: the version moves with every status change, hold and
release, which is what a partner decides a cancel on. A new estimate alone (the scheduler refreshes it
every few minutes) changes the order's tag but does not make the caller's view stale, so either tag
of the same version matches. `*` matches any order that exists.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from .errors import PreconditionFailed

_TAG = re.compile(r"([0-9]{1,19})-([0-9]{1,10})(?:-[0-9]{1,20}){0,2}")  # older tags had no estimate


def status_tag(order_id: int, version: int) -> str:
    return f"{order_id}-{version}"


def order_tag(order_id: int, version: int, updated_at: datetime, estimate: datetime | None = None) -> str:
    return f"{status_tag(order_id, version)}-{_micros(updated_at)}-{_micros(estimate) if estimate else 0}"


def _micros(at: datetime) -> int:
    return max(int(at.timestamp() * 1e6), 0)


def names_version(tag: str, order_id: int, version: int) -> bool:
    """Whether a tag (without quotes) is one of this order at this status_version."""
    match = _TAG.fullmatch(tag)
    return match is not None and (int(match.group(1)), int(match.group(2))) == (order_id, version)


@dataclass(frozen=True)
class IfMatch:
    """The strong tags of an `If-Match` header, or its `*` (weak tags never match a write)."""

    tags: tuple[str, ...]
    any: bool = False

    def check(self, *, order_id: int, version: int, status: str, updated_at: datetime,
              estimate: datetime | None = None) -> None:
        """Raise unless a tag matches the order as it is now; the refusal says what it is now, so
        that the caller can decide again without another read."""
        if self.any or any(names_version(t, order_id, version) for t in self.tags):
            return
        raise PreconditionFailed(
            f"Order {order_id} changed since the version your If-Match names: it is now {status!r} at version "
            f"{version}. Read it again and decide on what it is now.",
            current_status=status, status_version=version, etag=order_tag(order_id, version, updated_at, estimate))
