"""Sites: each site on a funnel plot, its case mix, and every metric side by side."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy.exc import DBAPIError

from app import charts, data, links, ui
from monitors.registry import default_registry
from monitors.sites import FUNNEL_LEVELS, funnel_limit

st.title("Sites")
st.caption(
    "Observed ÷ expected outcomes (O:E) over the last 28 days of settled labels: expected "
    "events already account for each site's patients, so case mix alone does not move a site "
    "out of the funnel; a model that fits a site less well does. Limits are exact Poisson "
    "(95% and 99.8%), widened for several scores of one patient sharing one outcome."
)

try:
    models = data.registry_overview()["models"]
    model = links.pick(
        "Model", models["name"].tolist() if not models.empty else [], param=links.MODEL
    )
    points = data.latest_points(("site_comparison",), model) if model else pd.DataFrame()
    everything = (
        data.latest_points(tuple(default_registry().names()), model) if model else pd.DataFrame()
    )
except DBAPIError:
    st.error("The Vigil database is unreachable.", icon=":material/database_off:")
    st.stop()

if points.empty:
    st.info("No site comparison yet for this model (it needs settled labels; hourly).")
    st.stop()

per_site = points[points["metric"] == "oe_vs_sites"].copy()
details = per_site["detail"].map(lambda d: d or {})
per_site["expected"] = details.map(lambda d: d.get("expected"))
per_site["oe"] = per_site["value"]
centre = float(next((d["centre"] for d in details if d.get("centre") is not None), 1.0))
design = float(next((d["design_effect"] for d in details if d.get("design_effect")), 1.0))
known = per_site.dropna(subset=["expected", "oe"])
if known.empty:
    st.info("No site has expected events in the window yet.")
    st.stop()
grid_e = np.geomspace(max(0.5, known["expected"].min() / 2), known["expected"].max() * 2, 120)
curves = pd.DataFrame({"expected": grid_e, "centre": centre})
for tag, level in FUNNEL_LEVELS.items():
    tail = (1 - level) / 2
    curves[f"lower_{tag}"] = funnel_limit(grid_e, centre, tail, design)
    curves[f"upper_{tag}"] = funnel_limit(grid_e, centre, 1 - tail, design)
window = f"{per_site['window_start'].min():%Y-%m-%d} to {per_site['window_end'].max():%Y-%m-%d}"
st.plotly_chart(
    charts.funnel_figure(known, curves, title=f"{model}: O:E by site, {window}"),
    width="stretch",
    key="funnel",
)
for _, row in per_site[per_site["status"] == "breach"].iterrows():
    st.error(
        f"{(row['detail'] or {}).get('summary', row['site'])}. Runbook: `site-outlier`.",
        icon=":material/scatter_plot:",
    )
ui.small_sample_caution(per_site, what="predictions with settled labels")
overall = points[points["metric"] == "heterogeneity"]
if not overall.empty:
    st.markdown(f"**Heterogeneity:** {(overall.iloc[0]['detail'] or {}).get('summary', '')}")

st.subheader("Case mix or model failure?")
st.caption(
    "A sicker population raises both the observed and the expected event rate (O:E stays "
    "near 1): case mix. O:E off with an input missing far more than elsewhere: a data "
    "problem. O:E off with inputs intact: the model fits this site less well."
)
mix = pd.DataFrame(
    {
        "site": per_site["site"],
        "status": per_site["status"],
        "O:E": per_site["value"],
        "CI low": per_site["ci_low"],
        "CI high": per_site["ci_high"],
        "scores": details.map(lambda d: d.get("scored")),
        "mean predicted risk": details.map(lambda d: d.get("mean_predicted_risk")),
        "expected rate": details.map(lambda d: d.get("expected_rate")),
        "observed rate": details.map(lambda d: d.get("observed_rate")),
        "alert rate": details.map(lambda d: d.get("alert_rate")),
        "PPV": details.map(lambda d: d.get("ppv")),
        "degraded": details.map(lambda d: d.get("degraded_share")),
        "label completeness": details.map(lambda d: d.get("label_completeness")),
    }
)
inputs = sorted({name for d in details for name in (d.get("inputs") or {})})
for name in inputs:
    mix[f"{name} missing"] = [
        ((d.get("inputs") or {}).get(name) or {}).get("missing") for d in details
    ]
percent = st.column_config.NumberColumn(format="percent")
st.dataframe(
    mix,
    hide_index=True,
    width="stretch",
    column_config={
        c: percent
        for c in mix.columns
        if c.endswith("rate")
        or c.endswith("missing")
        or c in ("PPV", "degraded")
        or c == "mean predicted risk"
    },
)

st.subheader("Every monitored metric, site by site")
sided = everything[everything["site"] != "all"].copy()
if sided.empty:
    st.caption("No monitor has written a per-site result for this model yet.")
else:

    def cell(row: pd.Series) -> str:
        if pd.isna(row["value"]):
            return f"— ({row['status']})"
        ci = ""
        if not pd.isna(row["ci_low"]) and not pd.isna(row["ci_high"]):
            ci = f" [{row['ci_low']:.3g}–{row['ci_high']:.3g}]"
        return f"{row['value']:.3g}{ci} · {row['status']}"

    sided["cell"] = sided.apply(cell, axis=1)
    sided["metric"] = sided["monitor"] + " · " + sided["metric"]
    wide = sided.pivot_table(index="metric", columns="site", values="cell", aggfunc="first")
    st.dataframe(wide, width="stretch")
