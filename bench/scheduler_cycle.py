"""Scheduler cycle: collect one hour of new demo data, refresh, every monitor, alerts.

The store holds the demo history (90 days, five sites, default volume) in SQLite, the embedded
default. One cycle is what the scheduler's jobs do for an hour of new data, back to back:
collect the drop folder (the next hour of the same simulated world: predictions, heartbeats,
outcomes, closures), settle labels and refresh rollups, run every registered monitor
(operational and clinical-quality) and sync the alerts each touched. Timed: the median of
three cycles, each on the next hour of data. Baseline: the same cycles on a store holding a
third of the history (30 days); a ratio near 1 says a cycle's cost does not grow with
history. Both stores first run every monitor once (the catch-up a fresh scheduler does), so
the cycles measure steady state.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.core import Figure, timed_median
from collectors.runner import collect_files
from incidents.alerts import sync_all_alerts
from monitors.config import MonitorConfig
from monitors.registry import default_registry
from monitors.scheduler import CycleReport, run_cycle
from seed_data.generator import SeedConfig, generate
from store.db import REPO_ROOT, make_engine, upgrade
from store.registry import sync_registry
from store.rollups import refresh

logger = logging.getLogger(__name__)

AREA = "Scheduler: one cycle after an hour of new data"
END = datetime(2026, 9, 1, tzinfo=UTC)
SECRET = "bench-secret"
REGISTRY = REPO_ROOT / "config" / "registry.yaml"
REPEATS = 3
TARGET_SECONDS = 60.0  # a cycle must fit well inside the monitors' shortest interval chain


@dataclass(frozen=True)
class Size:
    days: int
    bed_scale: float


def run(*, smoke: bool) -> list[Figure]:
    full = Size(days=6, bed_scale=0.05) if smoke else Size(days=90, bed_scale=1.0)
    third = Size(days=max(2, full.days // 3), bed_scale=full.bed_scale)
    measured = {size: measure(size) for size in (full, third)}
    (value, steps, runs), (base, base_steps, _) = measured[full], measured[third]
    breakdown = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in steps.items())
    return [
        Figure(
            area=AREA,
            name=f"one cycle, {full.days}-day demo store (SQLite)",
            value=value,
            unit="s",
            baseline_name=f"same cycle, {third.days}-day store",
            baseline_value=base,
            higher_is_better=False,
            runs=runs,
            target=f"< {TARGET_SECONDS:.0f} s, ratio ≈ 1 (flat in history)",
            met=value < TARGET_SECONDS and base > 0 and value / base < 1.5,
            note=f"median cycle's steps: {breakdown}",
            extra={"baseline_steps": base_steps},
        )
    ]


def measure(size: Size) -> tuple[float, dict[str, float], int]:
    """Median seconds of one cycle on a store with `size` of history, and its steps."""
    with tempfile.TemporaryDirectory(prefix="vigil-bench-cycle-") as tmp:
        folder = Path(tmp)
        url = f"sqlite:///{folder / 'vigil.db'}"
        upgrade(url)
        engine = make_engine(url)
        sync_registry(engine, REGISTRY)
        config = SeedConfig(end=END, days=size.days, bed_scale=size.bed_scale)
        generate(config, folder / "history")
        list(collect_files(engine, [folder / "history"], secret=SECRET))
        refresh(engine, now=END)
        registry = default_registry()
        monitor_config = MonitorConfig.from_file()
        for monitor in registry:  # the catch-up a freshly started scheduler does
            monitor.run(engine, monitor_config, END)
        sync_all_alerts(engine, now=END, registry=registry)
        logger.info("cycle bench: %d-day store ready", size.days)

        inbox, processed = folder / "inbox", folder / "processed"
        hour = {"k": 0}
        reports: list[CycleReport] = []

        def next_hour() -> None:
            start = END + timedelta(hours=hour["k"])
            hour["k"] += 1
            generate(
                SeedConfig(
                    end=start + timedelta(hours=1), days=size.days, bed_scale=size.bed_scale
                ),
                inbox,
                start=start,
            )

        def one_cycle() -> None:
            reports.append(
                run_cycle(
                    engine,
                    inbox=inbox,
                    processed=processed,
                    secret=SECRET,
                    now=END + timedelta(hours=hour["k"]),
                    registry=registry,
                )
            )

        timing = timed_median(one_cycle, repeats=REPEATS, setup=next_hour)
        engine.dispose()
    median_report = sorted(reports, key=lambda r: r.total_seconds)[len(reports) // 2]
    if median_report.new_predictions <= 0:
        raise RuntimeError("the cycle collected no new predictions")
    return timing.median_s, median_report.timings, len(timing.runs)
