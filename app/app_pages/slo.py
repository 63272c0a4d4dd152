"""Service levels: latency and availability SLOs per model × site — burn rates and budget."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from sqlalchemy.exc import DBAPIError

from app import charts, data, links

MONITORS = ("latency_slo", "availability_slo")
WINDOWS = ["5m", "30m", "1h", "6h", "3d"]

st.title("Service levels")
st.caption(
    "Latency: share of scores delivered within the threshold of their triggering event. "
    "Availability: share of attempted scores produced (errors and timeouts count against "
    "it). 30-day error budgets; pages at 14.4× over 1 h and 5 min or 6× over 6 h and "
    "30 min, tickets at 1× over 3 days and 6 h (config/slos.yaml)."
)

try:
    models = data.registry_overview()["models"]
    model = links.pick(
        "Model", models["name"].tolist() if not models.empty else [], param=links.MODEL
    )
    points = data.latest_points(MONITORS, model) if model else pd.DataFrame()
except DBAPIError:
    st.error("The Vigil database is unreachable.", icon=":material/database_off:")
    st.stop()

if points.empty:
    st.info("No SLO has been evaluated for this model yet; the scheduler does it every minute.")
    st.stop()

points = points[points["site"] != "all"].copy()
details = points["detail"].map(lambda d: d or {})
table = pd.DataFrame(
    {
        "SLO": points["metric"],
        "site": points["site"],
        "status": points["status"],
        "SLI (30 d)": points["value"],
        "target": details.map(lambda d: d.get("target")),
        "budget left": details.map(lambda d: d.get("budget_remaining")),
        "hours to exhaustion": details.map(lambda d: d.get("hours_to_exhaustion")),
        **{f"burn {w}": [(d.get("burn") or {}).get(w) for d in details] for w in WINDOWS},
        "rule firing": details.map(lambda d: d.get("rule") or ""),
        "as of": points["window_end"],
    }
)

grid = table.rename(columns={"SLO": "model", "SLI (30 d)": "value"})[
    ["model", "site", "status", "value"]
].assign(ci_low=None, ci_high=None)
st.plotly_chart(charts.status_grid_figure(grid), width="stretch", key="slo_grid")

burning = table[table["status"] == "breach"]
if burning.empty:
    st.success("No SLO of this model is burning its budget fast.", icon=":material/check_circle:")
else:
    for _, row in burning.iterrows():
        runbook = "latency-burn" if "latency" in row["SLO"] else "availability-burn"
        st.error(
            f"**{row['SLO']} at {row['site']}**: {row['rule firing']} — burn rates "
            f"1 h {row['burn 1h']}×, 5 min {row['burn 5m']}×; "
            f"{(row['budget left'] or 0):.0%} of the budget left. Runbook: `{runbook}`.",
            icon=":material/local_fire_department:",
        )
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_config={
        "SLI (30 d)": st.column_config.NumberColumn(format="%.4f"),
        "budget left": st.column_config.NumberColumn(format="percent"),
    },
)
exhausted = table[pd.to_numeric(table["budget left"], errors="coerce").fillna(1.0) <= 0]
if not exhausted.empty:
    st.warning(
        "Budget spent over the last 30 days (SLO missed, nothing burning fast now): "
        + ", ".join(f"{r['SLO']} at {r['site']}" for _, r in exhausted.iterrows()),
        icon=":material/savings:",
    )

st.subheader("Burn rate over time")
slo = st.selectbox("SLO", sorted(table["SLO"].unique()))
span = links.time_range(low=1, high=30, default=7)
series = data.points_in(MONITORS, model, span.days, span.first, span.last)
series = series[(series["metric"] == slo) & (series["site"] != "all")].copy()
if series.empty:
    st.caption(f"No {slo} points in {span.describe()}.")
else:
    burn = series["detail"].map(lambda d: (d or {}).get("burn") or {})
    series["burn_1h"] = burn.map(lambda b: b.get("1h"))
    series["burn_6h"] = burn.map(lambda b: b.get("6h"))
    series["budget_remaining"] = series["detail"].map(lambda d: (d or {}).get("budget_remaining"))
    st.plotly_chart(
        charts.burn_rate_figure(
            series.dropna(subset=["burn_1h"]).assign(
                burn_1h=lambda f: f["burn_1h"].clip(lower=0.01)
            ),
            value="burn_1h",
            title=f"{slo}: 1-hour burn rate (one point per hour)",
            thresholds={"page 14.4×": 14.4, "page 6×": 6.0, "ticket 1×": 1.0},
        ),
        width="stretch",
        key="burn_chart",
    )
    st.plotly_chart(
        charts.budget_figure(series, title=f"{slo}: 30-day error budget left"),
        width="stretch",
        key="budget_chart",
    )
