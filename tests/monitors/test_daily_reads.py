"""Every monitor gives the same points and alerts whether its windows come from the daily tables
or, as before, from the hourly rollups.

Two stores receive the same data and run every registered monitor at the same moments: one as
the scheduler runs them now (whole days from the daily tables, sites named), the other on the
hourly reads kept in tests/monitors/previous_reads.py and rollup_io's hourly path. Their results,
metric points and alerts must be identical, step by step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import monitors.alert_burden as alert_burden
import monitors.drift_runner as drift_runner
import monitors.rollup_io as rollup_io
import monitors.slo as slo
from incidents.alerts import sync_all_alerts
from monitors.base import MonitorResult
from monitors.registry import default_registry
from store.db import make_engine
from store.models import Alert, MetricPoint, table_of
from store.rollups import refresh
from tests.conftest import _admin_engine
from tests.factories import T0
from tests.monitors import previous_reads
from tests.monitors.clinical_world import CONFIG, load

MP, AL = table_of(MetricPoint), table_of(Alert)
# (first day, last day) of the data each step brings, and the hours after T0 of its refresh:
# never on a day boundary, so the SLO windows start inside a day.
STEPS = [
    ((0, 12), 12 * 24 + 7),
    ((12, 22), 22 * 24 + 13),
    ((22, 30), 30 * 24 + 2),
    (None, 31 * 24 + 5),  # labels settle with nothing new
    (None, 33 * 24 + 19),
]


@pytest.fixture
def reference(engine: Engine, tmp_path: Path) -> Iterator[Engine]:
    """A second store, a copy of the fresh one (migrated, registry loaded), on the same backend."""
    url = engine.url
    engine.dispose()
    if url.get_backend_name() == "sqlite":
        target = tmp_path / "reference.db"
        shutil.copy(str(url.database), target)
        other = make_engine(f"sqlite:///{target}")
        yield other
        other.dispose()
        return
    name = f"vigil_ref_{uuid.uuid4().hex[:10]}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{url.database}"'))
    other = make_engine(url.set(database=name).render_as_string(hide_password=False))
    yield other
    other.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _previous_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every monitor read its windows as it did before the daily tables."""
    monkeypatch.setattr(rollup_io, "READ_DAILY", False)
    monkeypatch.setattr(slo, "_read_counts", previous_reads._read_counts)
    monkeypatch.setattr(slo, "_window_counts", previous_reads._window_counts)

    def hourly_frame(
        conn: Any, model_id: int, first_hour: int, end_hour: int, **_: Any
    ) -> pd.DataFrame:
        return previous_reads._hourly_frame(conn, model_id, first_hour, end_hour)

    monkeypatch.setattr(alert_burden, "_hourly_frame", hourly_frame)
    monkeypatch.setattr(alert_burden, "_changed_hours", previous_reads._changed_hours)
    monkeypatch.setattr(drift_runner, "run_drift", previous_reads.run_drift)


_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?)")


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text and "e" not in text.lower() else 0


def _shown_alike(got: str, want: str) -> bool:
    """Two numbers as shown (rounded for people): PostgreSQL adds floats in its own order, so
    a last-bit difference in a sum may move the last shown digit by one, and no further."""
    if "." not in got + want:
        return got == want  # whole numbers (counts) are never rounded
    step = 10.0 ** -max(_decimals(got), _decimals(want))
    return abs(float(got) - float(want)) <= step * (1 + 1e-9)


def assert_same(got: Any, want: Any, where: str = "", *, rounding: bool = False) -> None:
    """Equal, floats to 1e-12 relative (see the module docstring), through dataclasses, dicts,
    lists and frames' cells. With `rounding` (PostgreSQL), a rounded value, in a float or in
    text, may differ by one in its last shown digit."""
    same = functools.partial(assert_same, rounding=rounding)
    if dataclasses.is_dataclass(got) and not isinstance(got, type):
        assert type(got) is type(want), where
        same(dataclasses.asdict(got), dataclasses.asdict(want), where)  # type: ignore[arg-type]
    elif isinstance(got, dict):
        assert isinstance(want, dict) and got.keys() == want.keys(), where
        for key in got:
            same(got[key], want[key], f"{where}.{key}")
    elif isinstance(got, list | tuple):
        assert isinstance(want, list | tuple) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            same(a, b, f"{where}[{i}]")
    elif isinstance(got, float) and not isinstance(want, bool) and isinstance(want, int | float):
        if math.isnan(got):
            assert math.isnan(want), where
        elif not math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12):
            # A value in a point's detail is rounded for display (the metric value is not).
            shown = rounding and ".detail" in where
            assert shown and _shown_alike(repr(got), repr(float(want))), (where, got, want)
    elif rounding and isinstance(got, str) and isinstance(want, str) and got != want:
        parts, other = _NUMBER.split(got), _NUMBER.split(want)
        assert len(parts) == len(other), (where, got, want)
        for i, (a, b) in enumerate(zip(parts, other, strict=True)):
            assert a == b if i % 2 == 0 else _shown_alike(a, b), (where, got, want)
    else:
        assert got == want, (where, got, want)


def _run_all(engine: Engine, now: datetime) -> dict[str, list[MonitorResult]]:
    registry = default_registry()
    results = {m.name: m.run(engine, CONFIG, now) for m in registry}
    sync_all_alerts(engine, now=now, registry=registry)
    return results


def _table(engine: Engine, table: sa.Table, drop: list[str]) -> pd.DataFrame:
    with engine.connect() as conn:
        frame = pd.read_sql(sa.select(table), conn).drop(columns=drop)
    return frame.sort_values(list(frame.columns[:8])).reset_index(drop=True)


def test_every_monitor_reads_the_same_from_daily_tables_as_from_hourly_rollups(
    engine: Engine, reference: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: dict[str, int] = {}
    same = functools.partial(assert_same, rounding=engine.dialect.name == "postgresql")
    for step, (days, hours) in enumerate(STEPS):
        now = T0 + timedelta(hours=hours)
        results = {}
        for name, store in (("daily", engine), ("hourly", reference)):
            if days is not None:
                folder = tmp_path / f"{name}-{step}"
                folder.mkdir()
                load(store, folder, f"s{step}", days[0], days[1], seed=7 + step, per_day=60)
            refresh(store, now=now)
            with monkeypatch.context() as patch:
                if name == "hourly":
                    _previous_reads(patch)
                results[name] = _run_all(store, now)
        for monitor, got in results["daily"].items():
            if engine.dialect.name == "sqlite":
                assert got == results["hourly"][monitor], (step, monitor)
            same(got, results["hourly"][monitor], f"step {step} {monitor}")
            compared[monitor] = compared.get(monitor, 0) + len(got)
    # Every window-reading monitor had points to compare.
    for monitor in (
        "observed_expected", "calibration", "discrimination", "drift", "calibration_drift",
        "latency_slo", "availability_slo", "alert_burden",
    ):  # fmt: skip
        assert compared.get(monitor, 0) > 0, monitor
    points = _table(engine, MP, ["id", "computed_at"])
    assert len(points) > 0
    same(points.to_dict("records"), _table(reference, MP, ["id", "computed_at"]).to_dict("records"))
    alerts = _table(engine, AL, ["id"])
    assert len(alerts) > 0
    same(alerts.to_dict("records"), _table(reference, AL, ["id"]).to_dict("records"))
    with engine.connect() as conn:  # the daily store really read its daily tables
        assert conn.execute(sa.select(sa.func.count()).select_from(rollup_io.DH)).scalar_one() > 0
