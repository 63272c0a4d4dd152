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
    # Clinical-quality monitors (calibration, its drift over time, discrimination, data drift).
    from monitors.drift_runner import run_drift
    from monitors.sequential_runner import run_calibration_drift
    from monitors.windowed import run_calibration, run_discrimination

    registry.register(
        "calibration", run_calibration, interval_seconds=300, runbook="calibration-shape"
    )
    registry.register(
        "calibration_drift",
        run_calibration_drift,
        interval_seconds=300,
        runbook="calibration-change",
    )
    registry.register(
        "discrimination", run_discrimination, interval_seconds=300, runbook="discrimination-drop"
    )
    registry.register("drift", run_drift, interval_seconds=300, runbook="data-drift")
    # Operational monitors: SLO burn rates and feeds every minute (their page windows are
    # minutes long), alert burden every 15 min (hourly buckets), site comparison hourly.
    from monitors.alert_burden import run_alert_burden
    from monitors.freshness import run_feed_freshness
    from monitors.sites import run_site_comparison
    from monitors.slo import run_availability_slo, run_latency_slo

    registry.register("latency_slo", run_latency_slo, interval_seconds=60, runbook="latency-burn")
    registry.register(
        "availability_slo", run_availability_slo, interval_seconds=60, runbook="availability-burn"
    )
    registry.register(
        "feed_freshness", run_feed_freshness, interval_seconds=60, runbook="stale-feed"
    )
    registry.register(
        "alert_burden", run_alert_burden, interval_seconds=900, runbook="alert-volume"
    )
    registry.register(
        "site_comparison", run_site_comparison, interval_seconds=3600, runbook="site-outlier"
    )
    # Canary versus control: judged and watched every cycle (the always-valid test makes
    # looking this often safe).
    from monitors.canary_runner import run_canary

    registry.register("canary", run_canary, interval_seconds=300, runbook="failed-canary")
    return registry
