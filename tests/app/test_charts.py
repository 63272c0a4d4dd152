"""The chart functions share one palette and one style (pure: no Streamlit needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from app import charts

STATUSES = ["ok", "warn", "breach", "insufficient-data"]


def _series() -> pd.DataFrame:
    t0 = datetime(2026, 9, 1, tzinfo=UTC)
    rows = []
    for k, status in enumerate(STATUSES * 2):
        rows.append(
            {
                "site": "UMC" if k % 2 else "RVH",
                "window_end": t0 + timedelta(hours=k),
                "value": 1.0 + k / 10,
                "ci_low": 0.9,
                "ci_high": 1.5 + k / 10,
                "status": status,
                "upper_rate": 2.0,
            }
        )
    return pd.DataFrame(rows)


def test_status_markers_use_the_palette_and_unknown_statuses_read_as_no_data() -> None:
    fig = charts.metric_band_figure(_series(), title="O:E")
    markers = [
        c for t in fig.data if t.marker and t.marker.color is not None for c in t.marker.color
    ]
    assert set(markers) <= set(charts.STATUS_COLORS.values())
    assert charts.status_color("breach") == "#c62828"
    assert charts.status_color("something-new") == charts.STATUS_COLORS["insufficient-data"]
    assert charts.STATUS_LABELS == {
        "ok": "OK",
        "warn": "Warn",
        "breach": "Breach",
        "insufficient-data": "No data",
    }
    # Site lines never borrow a status colour.
    assert not set(charts.SITE_COLORS) & set(charts.STATUS_COLORS.values())


def test_every_figure_carries_the_shared_style() -> None:
    series = _series()
    grid = series.assign(model="deterioration")
    points = pd.DataFrame({"site": ["UMC"], "expected": [10.0], "oe": [1.2], "status": ["ok"]})
    curves = pd.DataFrame(
        {
            "expected": np.geomspace(1, 100, 5),
            "centre": 1.0,
            **{f"{s}_{t}": 1.0 for s in ("lower", "upper") for t in ("95", "99.8")},
        }
    )
    figures = [
        charts.status_grid_figure(grid),
        charts.metric_band_figure(series, title="x"),
        charts.alert_rate_figure(series, title="x", per="patient-days"),
        charts.funnel_figure(points, curves, title="x"),
        charts.burn_rate_figure(series.assign(burn=2.0), value="burn", title="x"),
    ]
    for fig in figures:
        assert fig.layout.font.family == charts.CHART_STYLE["font"]["family"]  # type: ignore[index]
        assert fig.layout.margin.l == 10
    funnel = charts.funnel_figure(points, curves, title="x")
    bands = {t.line.color for t in funnel.data if t.name == "95% limits"}
    assert bands == {charts.STATUS_COLORS["warn"]}
