"""Run every benchmark module and write BENCHMARKS.md."""

from __future__ import annotations

import importlib
import logging
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench.core import Figure

logger = logging.getLogger(__name__)

# Benchmark modules, in report order; each exposes run(*, smoke: bool) -> list[Figure].
MODULES: list[str] = [
    "bench.ingest",
    "bench.scheduler_cycle",
    "bench.scale",
    "bench.drift",
    "bench.pages",
]


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        memory = f"{mem_kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        memory = "unknown memory"
    return f"{cpu}, {os.cpu_count()} cores, {memory}, {platform.system()} {platform.release()}"


def versions() -> str:
    names = ["sqlalchemy", "psycopg", "pandas", "numpy", "scipy", "evidently", "streamlit"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    sqlite = __import__("sqlite3").sqlite_version
    try:
        pg = subprocess.run(
            ["psql", "--version"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pg = "psql not found"
    return f"Python {platform.python_version()}, SQLite {sqlite}, {pg}; " + ", ".join(found)


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def render(figures: list[Figure], *, smoke: bool) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        + (" (smoke size: not representative)" if smoke else "")
        + ".",
        "",
        f"- Machine: {machine_description()}",
        f"- Versions: {versions()}",
        "- Each figure is the median of the runs shown; the ratio divides it by its baseline,",
        "  measured in the same process on the same data.",
        "",
    ]
    areas: dict[str, list[Figure]] = {}
    for figure in figures:
        areas.setdefault(figure.area, []).append(figure)
    for area, items in areas.items():
        lines += [
            f"## {area}",
            "",
            "| figure | value | baseline | ratio | runs | peak MB | target | met | note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for f in items:
            baseline = (
                f"{f.baseline_name}: {_fmt(f.baseline_value)} {f.unit}" if f.baseline_name else "—"
            )
            met = "—" if f.met is None else ("yes" if f.met else "**no**")
            lines.append(
                f"| {f.name} | {_fmt(f.value)} {f.unit} | {baseline} | {_fmt(f.ratio)} | "
                f"{f.runs} | {_fmt(f.peak_mb)} | {f.target or '—'} | {met} | {f.note} |"
            )
        lines.append("")
    return "\n".join(lines)


def run_all(*, smoke: bool, only: list[str] | None = None, out: Path | None = None) -> list[Figure]:
    figures: list[Figure] = []
    for name in MODULES:
        if only and name.rsplit(".", 1)[-1] not in only:
            continue
        logger.info("benchmark %s (%s)", name, "smoke" if smoke else "full")
        module = importlib.import_module(name)
        figures.extend(module.run(smoke=smoke))
    if out is not None:
        out.write_text(render(figures, smoke=smoke), encoding="utf-8")
    return figures
