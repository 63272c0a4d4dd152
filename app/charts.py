"""Pure DataFrame → plotly Figure functions, and the one status palette they all use."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

STATUS_COLORS = {
    "ok": "#2e7d32",
    "warn": "#f9a825",
    "breach": "#c62828",
    "insufficient-data": "#9e9e9e",
}
STATUS_LABELS = {
    "ok": "OK",
    "warn": "Warn",
    "breach": "Breach",
    "insufficient-data": "No data",
}
_STATUS_ORDER = list(STATUS_COLORS)


def _cell_text(row: pd.Series) -> str:
    label = STATUS_LABELS.get(str(row["status"]), str(row["status"]))
    if pd.isna(row.get("value")):
        return label
    ci = ""
    if not pd.isna(row.get("ci_low")) and not pd.isna(row.get("ci_high")):
        ci = f"<br>[{row['ci_low']:.2f}–{row['ci_high']:.2f}]"
    return f"{label}<br>{row['value']:.2f}{ci}"


def status_grid_figure(grid: pd.DataFrame, *, title: str = "") -> go.Figure:
    """Models (rows) × sites (columns) coloured by status, with the value and CI in each cell."""
    fig = go.Figure()
    if grid.empty:
        fig.update_layout(title=title)
        return fig
    models = sorted(grid["model"].unique())
    sites = sorted(grid["site"].unique())
    index = {status: i for i, status in enumerate(_STATUS_ORDER)}
    z: list[list[int | None]] = [[None] * len(sites) for _ in models]
    text = [[""] * len(sites) for _ in models]
    for _, row in grid.iterrows():
        r, c = models.index(row["model"]), sites.index(row["site"])
        z[r][c] = index.get(str(row["status"]), index["insufficient-data"])
        text[r][c] = _cell_text(row)
    n = len(_STATUS_ORDER)
    colorscale = []
    for i, status in enumerate(_STATUS_ORDER):
        colorscale += [[i / n, STATUS_COLORS[status]], [(i + 1) / n, STATUS_COLORS[status]]]
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=sites,
            y=models,
            text=text,
            texttemplate="%{text}",
            colorscale=colorscale,
            zmin=-0.5,
            zmax=n - 0.5,
            showscale=False,
            xgap=3,
            ygap=3,
            hovertemplate="%{y} at %{x}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        height=120 + 90 * len(models),
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        xaxis={"side": "top"},
        yaxis={"autorange": "reversed"},
    )
    return fig


def metric_over_time_figure(
    series: pd.DataFrame, *, title: str, reference: float = 1.0
) -> go.Figure:
    """One line per site with its CI band, and a reference line (1.0 for O:E)."""
    fig = go.Figure()
    for site, part in series.groupby("site", sort=True):
        fig.add_trace(
            go.Scatter(
                x=part["window_end"],
                y=part["value"],
                mode="lines",
                name=str(site),
                error_y=None,
            )
        )
    fig.add_hline(y=reference, line_dash="dot", line_color="#616161")
    fig.update_layout(title=title, height=360, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig
