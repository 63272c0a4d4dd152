"""The shape every monitor shares: a result with a status, written as a metric point."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    BREACH = "breach"
    INSUFFICIENT = "insufficient-data"


# Worst first: a group's status is the worst of its members'.
SEVERITY = {Status.BREACH: 3, Status.WARN: 2, Status.OK: 1, Status.INSUFFICIENT: 0}


def worst(statuses: list[Status]) -> Status:
    return max(statuses, key=SEVERITY.__getitem__) if statuses else Status.INSUFFICIENT


@dataclass(frozen=True)
class MonitorResult:
    """One evaluation of one metric for one model × site (× version × arm) over one window."""

    monitor: str
    metric: str
    model_id: int
    site_id: int
    window_start: datetime
    window_end: datetime
    status: Status
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    threshold: str = ""
    runbook: str = ""
    version_id: int = 0
    arm: str = "all"
    detail: dict[str, Any] = field(default_factory=dict)
