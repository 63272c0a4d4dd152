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
NO_DATA_COLOR = STATUS_COLORS["insufficient-data"]
REFERENCE_COLOR = "#616161"  # reference lines: O:E = 1, perfect calibration, zero
# One chart style for every figure: font, margins, background, legend and hover.
CHART_STYLE: dict[str, object] = {
    "template": "plotly_white",
    "font": {"family": "Source Sans Pro, sans-serif", "size": 13},
    "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
    "legend": {"orientation": "h"},
    "hoverlabel": {"namelength": -1},
}


def styled(fig: go.Figure, **layout: object) -> go.Figure:
    """Apply the shared chart style, then the figure's own layout (which wins)."""
    fig.update_layout(**CHART_STYLE)
    fig.update_layout(**layout)
    return fig


def status_color(status: object) -> str:
    """The palette colour of a status; anything unknown is drawn as no data."""
    return STATUS_COLORS.get(str(status), NO_DATA_COLOR)


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
        styled(fig, title=title)
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
    styled(
        fig,
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
    fig.add_hline(y=reference, line_dash="dot", line_color=REFERENCE_COLOR)
    styled(fig, title=title, height=360, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


# ---------------------------------------------------------------- canary

VERDICT_STATUS = {
    "Pass": "ok",
    "Marginal": "warn",
    "Fail": "breach",
    "No data": "insufficient-data",
}
ARM_COLORS = {"canary": "#6a1b9a", "control": "#455a64"}


def canary_distribution_figure(
    hist: pd.DataFrame, *, edges: tuple[float, ...], title: str, log_x: bool = True
) -> go.Figure:
    """Share of each arm's scores (or latencies) per histogram bin, canary over control.

    `hist` has columns arm, bin, n; a bin is drawn at its midpoint (the open last bin of a
    latency histogram at its lower edge).
    """
    fig = go.Figure()
    for arm in ("control", "canary"):
        part = hist[hist["arm"] == arm].sort_values("bin") if not hist.empty else hist
        if part.empty:
            continue
        bins = part["bin"].astype(int).to_numpy()
        lower = [edges[b] for b in bins]
        upper = [edges[b + 1] if b + 1 < len(edges) else edges[b] for b in bins]
        mid = [(lo + hi) / 2 if hi > lo else lo for lo, hi in zip(lower, upper, strict=True)]
        share = part["n"].to_numpy(dtype=float) / float(part["n"].sum())
        fig.add_trace(
            go.Scatter(
                x=mid,
                y=share,
                mode="lines+markers",
                name=f"{arm} (n={int(part['n'].sum()):,})",
                line={"color": ARM_COLORS[arm], "shape": "hvh"},
            )
        )
    styled(
        fig,
        title=title,
        height=320,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        yaxis={"title": "share", "tickformat": ".0%"},
        xaxis={"type": "log" if log_x else "linear"},
        legend={"orientation": "h"},
    )
    return fig


def canary_verdict_figure(
    series: pd.DataFrame,
    *,
    pass_threshold: float,
    marginal_threshold: float,
    planned_end: object | None = None,
) -> go.Figure:
    """The judge's score over time (one point per hour, coloured by verdict), its thresholds,
    and where the planned analysis window ends."""
    fig = go.Figure()
    if not series.empty:
        colors = [
            STATUS_COLORS[VERDICT_STATUS.get(str(v), "insufficient-data")]
            for v in series["verdict"]
        ]
        fig.add_trace(
            go.Scatter(
                x=series["window_end"],
                y=series["score"],
                mode="lines+markers",
                marker={"color": colors, "size": 7},
                line={"color": "#bdbdbd"},
                text=series["verdict"],
                hovertemplate="%{x}<br>score %{y:.0f}: %{text}<extra></extra>",
                name="interim verdict",
            )
        )
    fig.add_hline(y=pass_threshold, line_dash="dot", line_color=STATUS_COLORS["ok"])
    fig.add_hline(y=marginal_threshold, line_dash="dot", line_color=STATUS_COLORS["breach"])
    if planned_end is not None:
        fig.add_vline(x=planned_end, line_dash="dash", line_color=REFERENCE_COLOR)
    styled(
        fig,
        height=300,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        yaxis={"range": [-5, 105], "title": "score"},
        showlegend=False,
    )
    return fig


# ---------------------------------------------------------------- operational monitors


def burn_rate_figure(
    series: pd.DataFrame, *, value: str, title: str, thresholds: dict[str, float] | None = None
) -> go.Figure:
    """One line per site of a burn rate over time (log scale), with the rules' factors."""
    fig = go.Figure()
    for site, part in series.groupby("site", sort=True):
        fig.add_trace(
            go.Scatter(x=part["window_end"], y=part[value], mode="lines+markers", name=str(site))
        )
    for label, factor in (thresholds or {}).items():
        fig.add_hline(
            y=factor,
            line_dash="dot",
            line_color=STATUS_COLORS["breach"],
            annotation_text=label,
            annotation_position="top left",
        )
    styled(
        fig,
        title=title,
        height=340,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        yaxis={"type": "log", "title": "burn rate (× allowed)"},
    )
    return fig


def budget_figure(series: pd.DataFrame, *, title: str) -> go.Figure:
    """Error budget left (share of the window's budget) per site over time."""
    fig = go.Figure()
    for site, part in series.groupby("site", sort=True):
        fig.add_trace(
            go.Scatter(x=part["window_end"], y=part["budget_remaining"], mode="lines", name=site)
        )
    fig.add_hline(y=0.0, line_color=STATUS_COLORS["breach"], line_dash="dot")
    styled(
        fig,
        title=title,
        height=300,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        yaxis={"tickformat": ".0%", "title": "budget left"},
    )
    return fig


def feed_lag_figure(history: pd.DataFrame, *, title: str) -> go.Figure:
    """Event-time lag of each feed at one site over time (minutes, one line per feed)."""
    fig = go.Figure()
    for feed, part in history.groupby("feed", sort=True):
        fig.add_trace(
            go.Scatter(x=part["received_at"], y=part["event_lag_min"], mode="lines", name=str(feed))
        )
    styled(
        fig,
        title=title,
        height=320,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        yaxis={"title": "event-time lag (min)"},
    )
    return fig


def alert_rate_figure(series: pd.DataFrame, *, title: str, per: str) -> go.Figure:
    """Shown alerts per 100 of `per` with its CI and the upper control limit, per site."""
    fig = go.Figure()
    for site, part in series.groupby("site", sort=True):
        fig.add_trace(
            go.Scatter(
                x=part["window_end"],
                y=part["value"],
                mode="lines+markers",
                name=str(site),
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": (part["ci_high"] - part["value"]).clip(lower=0),
                    "arrayminus": (part["value"] - part["ci_low"]).clip(lower=0),
                    "thickness": 1,
                },
                marker={"color": [status_color(s) for s in part["status"]]},
            )
        )
        if "upper_rate" in part:
            fig.add_trace(
                go.Scatter(
                    x=part["window_end"],
                    y=part["upper_rate"],
                    mode="lines",
                    line={"dash": "dot", "color": STATUS_COLORS["breach"]},
                    name=f"{site} upper limit",
                )
            )
    styled(
        fig,
        title=title,
        height=360,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        yaxis={"title": f"shown alerts per 100 {per}"},
    )
    return fig


def funnel_figure(points: pd.DataFrame, curves: pd.DataFrame, *, title: str) -> go.Figure:
    """Funnel plot: each site's O:E against its expected events, with 95% and 99.8% limits.

    `points`: site, expected, oe, status. `curves`: expected, lower_95, upper_95,
    lower_99.8, upper_99.8, centre.
    """
    fig = go.Figure()
    styles = {"95": ("dash", STATUS_COLORS["warn"]), "99.8": ("solid", STATUS_COLORS["breach"])}
    for tag, (dash, color) in styles.items():
        for side in ("lower", "upper"):
            fig.add_trace(
                go.Scatter(
                    x=curves["expected"],
                    y=curves[f"{side}_{tag}"],
                    mode="lines",
                    line={"dash": dash, "color": color, "width": 1},
                    name=f"{tag}% limits",
                    showlegend=side == "upper",
                    hoverinfo="skip",
                )
            )
    if not curves.empty:
        fig.add_hline(
            y=float(curves["centre"].iloc[0]), line_color=REFERENCE_COLOR, line_dash="dot"
        )
    fig.add_trace(
        go.Scatter(
            x=points["expected"],
            y=points["oe"],
            mode="markers+text",
            text=points["site"],
            textposition="top center",
            marker={
                "size": 12,
                "color": [status_color(s) for s in points["status"]],
            },
            name="sites",
            hovertemplate="%{text}: O:E %{y:.2f} at %{x:.1f} expected events<extra></extra>",
        )
    )
    styled(
        fig,
        title=title,
        height=420,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        xaxis={"type": "log", "title": "expected events (E)"},
        yaxis={"title": "observed ÷ expected"},
    )
    return fig


# ---------------------------------------------------------------- clinical-quality monitors

# Site lines avoid the status colours, so a line never reads as a status.
SITE_COLORS = ["#1565c0", "#00838f", "#6a1b9a", "#5d4037", "#ad1457", "#283593", "#546e7a"]


def _site_color(sites: list[str], site: str) -> str:
    return SITE_COLORS[sorted(sites).index(site) % len(SITE_COLORS)]


def reliability_figure(curves: dict[str, dict[str, list[float]]], *, title: str = "") -> go.Figure:
    """Observed event rate against mean predicted risk per group, with CIs, one trace per site.

    `curves` maps a site to the reliability curve a calibration point stores in its detail
    (mean_predicted, observed, ci_low, ci_high, n).
    """
    fig = go.Figure()
    top = 0.0
    sites = list(curves)
    for site, curve in sorted(curves.items()):
        x = curve.get("mean_predicted", [])
        y = curve.get("observed", [])
        if not x:
            continue
        low = [o - lo for o, lo in zip(y, curve["ci_low"], strict=True)]
        high = [hi - o for o, hi in zip(y, curve["ci_high"], strict=True)]
        top = max(top, max(x), max(curve["ci_high"]))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines+markers",
                name=site,
                line={"color": _site_color(sites, site)},
                error_y={"type": "data", "symmetric": False, "array": high, "arrayminus": low},
                customdata=curve.get("n", []),
                hovertemplate=(
                    f"{site}<br>predicted %{{x:.3f}}<br>observed %{{y:.3f}}"
                    "<br>n %{customdata:,.0f}<extra></extra>"
                ),
            )
        )
    top = top * 1.05 if top > 0 else 1.0
    fig.add_trace(
        go.Scatter(
            x=[0, top],
            y=[0, top],
            mode="lines",
            line={"dash": "dot", "color": REFERENCE_COLOR},
            name="perfect calibration",
            hoverinfo="skip",
        )
    )
    styled(
        fig,
        title=title,
        height=420,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        xaxis={"title": "mean predicted risk", "range": [0, top]},
        yaxis={"title": "observed event rate", "range": [0, top]},
        legend={"orientation": "h"},
    )
    return fig


def metric_band_figure(
    series: pd.DataFrame, *, title: str, reference: float | None = None, y_title: str = ""
) -> go.Figure:
    """One line per site with its CI as a shaded band; markers coloured by status."""
    fig = go.Figure()
    if series.empty:
        styled(fig, title=title, height=340)
        return fig
    sites = sorted(series["site"].unique())
    for site, part in series.sort_values("window_end").groupby("site", sort=True):
        color = _site_color(sites, str(site))
        valued = part.dropna(subset=["value"])
        if valued.empty:
            continue
        band = valued.dropna(subset=["ci_low", "ci_high"])
        if not band.empty:
            fig.add_trace(
                go.Scatter(
                    x=list(band["window_end"]) + list(band["window_end"])[::-1],
                    y=list(band["ci_high"]) + list(band["ci_low"])[::-1],
                    fill="toself",
                    fillcolor=color,
                    opacity=0.15,
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                )
            )
        fig.add_trace(
            go.Scatter(
                x=valued["window_end"],
                y=valued["value"],
                mode="lines+markers",
                name=str(site),
                line={"color": color},
                marker={
                    "color": [status_color(s) for s in valued["status"]],
                    "size": 6,
                },
                text=[STATUS_LABELS.get(str(s), str(s)) for s in valued["status"]],
                hovertemplate=f"{site}<br>%{{x}}<br>%{{y:.3f}} (%{{text}})<extra></extra>",
            )
        )
    if reference is not None:
        fig.add_hline(y=reference, line_dash="dot", line_color=REFERENCE_COLOR)
    styled(
        fig,
        title=title,
        height=340,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        yaxis={"title": y_title},
        legend={"orientation": "h"},
    )
    return fig


def cusum_figure(series: pd.DataFrame, *, title: str = "") -> go.Figure:
    """Daily CUSUM per site: under-prediction upwards, over-prediction mirrored downwards, each
    with its control limit, and a dashed line at the change point of every signal episode.

    `series` has columns metric (cusum_upper / cusum_lower), site, window_start, value, status,
    detail (with limit and change_point).
    """
    fig = go.Figure()
    if series.empty:
        styled(fig, title=title, height=380)
        return fig
    sites = sorted(series["site"].unique())
    marked: set[tuple[str, str]] = set()
    for (site, metric), part in series.sort_values("window_start").groupby(
        ["site", "metric"], sort=True
    ):
        sign = 1.0 if metric == "cusum_upper" else -1.0
        color = _site_color(sites, str(site))
        limits = [float((d or {}).get("limit", float("nan"))) for d in part["detail"]]
        fig.add_trace(
            go.Scatter(
                x=part["window_start"],
                y=sign * part["value"].astype(float),
                mode="lines",
                name=f"{site} {'under' if sign > 0 else 'over'}-prediction",
                line={"color": color, "dash": "solid" if sign > 0 else "dot"},
            )
        )
        fig.add_trace(
            go.Scatter(
                x=part["window_start"],
                y=[sign * h for h in limits],
                mode="lines",
                line={"color": color, "width": 1, "dash": "dash"},
                name=f"{site} limit",
                showlegend=False,
                hoverinfo="skip",
            )
        )
        breaches = part[part["status"] == "breach"]
        if not breaches.empty:
            fig.add_trace(
                go.Scatter(
                    x=breaches["window_start"],
                    y=sign * breaches["value"].astype(float),
                    mode="markers",
                    marker={"color": STATUS_COLORS["breach"], "size": 7},
                    name=f"{site} signal",
                    showlegend=False,
                )
            )
        for detail in breaches["detail"]:
            change = (detail or {}).get("change_point")
            if change and (str(site), change) not in marked:
                marked.add((str(site), change))
                fig.add_vline(
                    x=pd.Timestamp(change).timestamp() * 1000,
                    line_dash="dash",
                    line_color=STATUS_COLORS["breach"],
                    annotation_text=f"{site}: change began {pd.Timestamp(change):%d %b %H:00}",
                    annotation_position="top left",
                )
    fig.add_hline(y=0, line_color=REFERENCE_COLOR, line_width=1)
    styled(
        fig,
        title=title,
        height=400,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        yaxis={"title": "CUSUM S (over-prediction below zero)"},
        legend={"orientation": "h"},
    )
    return fig


def drift_heatmap_figure(points: pd.DataFrame, *, title: str = "") -> go.Figure:
    """Features (rows) × sites (columns) coloured by PSI status, with the PSI in each cell.

    `points` has columns feature, site, status, value.
    """
    fig = go.Figure()
    if points.empty:
        styled(fig, title=title)
        return fig
    grid = points.rename(columns={"feature": "model"})
    fig = status_grid_figure(grid, title=title)
    styled(fig, height=140 + 45 * grid["model"].nunique())
    return fig


def histogram_compare_figure(
    frame: pd.DataFrame, *, labels: list[str], title: str = ""
) -> go.Figure:
    """Share per bin of the reference window beside the current window (bars)."""
    fig = go.Figure()
    for column, color, name in (
        ("reference", NO_DATA_COLOR, "reference"),
        ("current", "#1565c0", "current"),
    ):
        total = float(frame[column].sum()) if not frame.empty else 0.0
        if total <= 0:
            continue
        fig.add_trace(
            go.Bar(
                x=labels,
                y=frame[column].astype(float) / total,
                name=f"{name} (n={total:,.0f})",
                marker_color=color,
            )
        )
    styled(
        fig,
        title=title,
        barmode="group",
        height=320,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        yaxis={"title": "share", "tickformat": ".0%"},
        legend={"orientation": "h"},
    )
    return fig
