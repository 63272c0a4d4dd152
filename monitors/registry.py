"""The monitor registry: each monitor registered once under a unique name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine

from monitors.base import MonitorResult
from monitors.config import MonitorConfig

MonitorRun = Callable[[Engine, MonitorConfig, datetime], list[MonitorResult]]


@dataclass(frozen=True)
class RegisteredMonitor:
    name: str
    run: MonitorRun
    interval_seconds: int
    runbook: str


class MonitorRegistry:
    """Monitors by name; registering a name twice is an error, not a silent replacement."""

    def __init__(self) -> None:
        self._monitors: dict[str, RegisteredMonitor] = {}

    def register(self, name: str, run: MonitorRun, *, interval_seconds: int, runbook: str) -> None:
        if name in self._monitors:
            raise ValueError(f"monitor {name!r} is already registered")
        self._monitors[name] = RegisteredMonitor(name, run, interval_seconds, runbook)

    def get(self, name: str) -> RegisteredMonitor:
        return self._monitors[name]

    def __iter__(self) -> Iterator[RegisteredMonitor]:
        return iter(self._monitors.values())

    def names(self) -> list[str]:
        return list(self._monitors)


def default_registry() -> MonitorRegistry:
    """Every monitor Vigil ships, with its schedule."""
    from monitors.runner import run_observed_expected

    registry = MonitorRegistry()
    registry.register(
        "observed_expected",
        run_observed_expected,
        interval_seconds=300,
        runbook="calibration-drift",
    )
    return registry
