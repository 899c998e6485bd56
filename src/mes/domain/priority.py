"""Order priority: stored as a small number so that the queue sorts urgent first."""
from __future__ import annotations

from enum import IntEnum


class Priority(IntEnum):
    URGENT = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> "Priority":
        return cls[label.upper()]


PRIORITY_LABELS = [p.label for p in Priority]
