"""Every benchmark runs at its smoke size and returns well-formed figures (CI keeps them alive).

Speed is the benchmarks' business, not the tests': nothing here looks at a timing's size.
"""

from __future__ import annotations

import importlib
import math

import pytest

from bench.core import Figure
from bench.report import MODULES, render
from store.db import REPO_ROOT


def _modules() -> list[str]:
    names = list(MODULES)
    # A benchmark module on disk but missing from the report would rot unseen.
    on_disk = {
        f"bench.{p.stem}"
        for p in (REPO_ROOT / "bench").glob("*.py")
        if p.stem not in {"__init__", "core", "report"}
    }
    return names + sorted(on_disk - set(names))


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


@pytest.mark.parametrize("name", _modules())
def test_benchmark_module_runs_at_smoke_size_with_well_formed_figures(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert name in MODULES, f"{name} is not in bench.report.MODULES, so make bench skips it"
    # SQLite only, to stay within a minute; the PostgreSQL paths run in make bench.
    monkeypatch.delenv("VIGIL_BENCH_POSTGRES_URL", raising=False)
    monkeypatch.delenv("VIGIL_TEST_POSTGRES_URL", raising=False)
    figures = importlib.import_module(name).run(smoke=True)
    assert figures and all(isinstance(f, Figure) for f in figures)
    for f in figures:
        assert f.area.strip() and f.name.strip() and f.unit.strip(), f
        assert _positive(f.value), f
        assert f.runs >= 1, f
        if f.baseline_name is not None:
            assert _positive(f.baseline_value), f
            assert f.ratio == pytest.approx(f.value / f.baseline_value), f
        else:
            assert f.baseline_value is None and f.ratio is None, f
        assert f.peak_mb is None or (math.isfinite(f.peak_mb) and f.peak_mb >= 0), f
        assert f.met is None or isinstance(f.met, bool), f
        if f.met is not None:
            assert f.target, f"{f.name}: a verdict without the target it was judged against"
    report = render(figures, smoke=True)
    assert "smoke size" in report
    for f in figures:
        assert f"| {f.name} |" in report
