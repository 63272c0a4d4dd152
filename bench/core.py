"""What every benchmark shares: timing by median of repeats, figures with their baseline.

A benchmark module exposes `run(*, smoke: bool) -> list[Figure]`. `smoke` is CI's small size,
run only so the benchmark cannot rot; the full size is what BENCHMARKS.md reports.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One measured figure, with the baseline it is compared to (ratio = value / baseline)."""

    area: str
    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline_value: float | None = None
    higher_is_better: bool = True
    runs: int = 1
    peak_mb: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline_value in (None, 0) or self.baseline_value is None:
            return None
        return self.value / self.baseline_value


@dataclass(frozen=True)
class Timing:
    median_s: float
    runs: list[float]
    peak_mb: float


def timed_median(
    action: Callable[[], object],
    *,
    repeats: int = 3,
    setup: Callable[[], object] | None = None,
    trace_memory: bool = False,
) -> Timing:
    """Median wall time of `action` over `repeats` runs (`setup` before each, untimed)."""
    runs: list[float] = []
    peak = 0.0
    for _ in range(repeats):
        if setup is not None:
            setup()
        gc.collect()
        if trace_memory:
            tracemalloc.start()
        started = time.perf_counter()
        action()
        runs.append(time.perf_counter() - started)
        if trace_memory:
            peak = max(peak, tracemalloc.get_traced_memory()[1] / 2**20)
            tracemalloc.stop()
    return Timing(statistics.median(runs), runs, peak)


def postgres_url() -> str:
    # Benchmark tooling, like the test suite, finds its scratch server in the environment.
    for name in ("VIGIL_BENCH_POSTGRES_URL", "VIGIL_TEST_POSTGRES_URL"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return ""
