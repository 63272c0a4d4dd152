"""Canary versus control: the two arms side by side, the judge's metric table and verdict over
time, the always-valid test, the stage's exit criteria, and promote / roll back.

The buttons call `incidents.promotion`, which checks the actor's role itself; this page only
gathers the inputs. Deep link: ?model=…&site=…&version=….
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy.exc import DBAPIError

from app import charts, data, session, ui
from incidents import promotion
from incidents.auth import Action, can
from monitors.canary import CanaryConfig
from store.models import LATENCY_BIN_EDGES, SCORE_BIN_EDGES
from vigil.config import get_settings

settings = get_settings()
params = st.query_params
ACTIONS = {"promote": ":green-badge[PROMOTE]", "hold": ":orange-badge[HOLD]"}
ACTIONS["rollback"] = ":red-badge[ROLL BACK]"
MET = {True: "✅ met", False: "❌ not met", None: "⏳ not yet known"}


def _run(call: Any) -> None:
    result = ui.run_action(call)
    if result is None:
        return
    data.clear_canary_caches()
    st.session_state["canary_flash"] = result.message
    st.rerun()


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _metric_table(judgement: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for m in judgement.get("metrics", []):
        ci = "–"
        if m["ci_low"] is not None or m["ci_high"] is not None:
            ci = f"{_fmt(m['ci_low'])} – {_fmt(m['ci_high']) if m['ci_high'] is not None else '∞'}"
        rows.append(
            {
                "metric": m["label"],
                "classification": m["classification"] + (" ✗" if m["failed"] else ""),
                "canary": _fmt(m["canary"], 4),
                "control": _fmt(m["control"], 4),
                "effect (canary vs control)": _fmt(m["effect"]),
                "95% CI": ci,
                "p": _fmt(m["p_value"], 2),
                "design effect": _fmt(m["design_effect"], 3),
                "weight": m["weight"],
                "critical": "yes" if m["critical"] else "",
                "rule": m["rule"],
                "note": m.get("reason", ""),
            }
        )
    return pd.DataFrame(rows)


def _highlight(row: pd.Series) -> list[str]:
    text = str(row["classification"])
    color = ""
    if text.endswith("✗"):
        color = "background-color: #fde2e1"
    elif text.startswith("No data"):
        color = "color: #757575"
    return [color for _ in row]


st.title("Canary versus control")
actor = session.current_actor()
if "canary_flash" in st.session_state:
    st.success(st.session_state.pop("canary_flash"))

try:
    overview = data.canary_overview()
except DBAPIError as exc:
    st.error(
        "The Vigil database is unreachable, so nothing below is current. "
        f"({type(exc.orig).__name__ if exc.orig else 'database error'})",
        icon=":material/database_off:",
    )
    st.stop()

if overview.empty:
    st.info("No canary deployments. A canary is a deployment in the `canary` arm in the registry.")
    st.stop()

labels = [
    f"{r['model']} {r['version']} at {r['site']}" + (f" unit {r['unit']}" if r["unit"] else "")
    for r in overview.to_dict("records")
]
default = 0
for i, r in enumerate(overview.to_dict("records")):
    if (params.get("model"), params.get("site"), params.get("version")) == (
        r["model"],
        r["site"],
        r["version"],
    ):
        default = i
choice = st.selectbox("Canary", labels, index=default, key="canary_choice")
row = overview.iloc[labels.index(str(choice))].to_dict()
model, site, version = str(row["model"]), str(row["site"]), str(row["version"])
st.query_params.update({"model": model, "site": site, "version": version})
control_version = str(row["control_version"])
config = CanaryConfig.from_file()

history = data.canary_judgements(model, site, version)
interim_rows = history[history["kind"] == "interim"] if not history.empty else history
planned_rows = history[history["kind"] == "planned"] if not history.empty else history
if interim_rows.empty:
    st.info(
        f"{model} {version} at {site} has no judgement yet: the canary monitor runs every "
        "5 minutes once the canary arm has scored."
    )
    st.stop()
latest = interim_rows.iloc[-1].to_dict()
detail: dict[str, Any] = latest["detail"] or {}
planned = planned_rows.iloc[-1].to_dict() if not planned_rows.empty else None

if not detail.get("randomised", False):
    st.warning(detail.get("assignment", "Units were not randomised."), icon=":material/shuffle:")

recommendation = detail.get("recommendation", {})
action = str(recommendation.get("action", latest["recommendation"]))
st.markdown(
    f"### {ACTIONS.get(action, action)} · {model} {version} against {control_version} at {site}"
)
for reason in recommendation.get("reasons", []):
    st.markdown(f"- {reason}")

cols = st.columns(4)
cols[0].metric("Stage", str(row["stage"]))
cols[1].metric(
    "Planned analysis",
    planned["verdict"] if planned else "not yet",
    help="The judge over the first days of the canary (the stage's minimum duration), once "
    "their labels settled. This is the decision; it is made once.",
)
cols[2].metric(
    "Interim verdict (period so far)",
    f"{latest['verdict']} · {_fmt(latest['score'], 3)}",
    help="Fixed-sample judge over the whole canary period, recomputed every cycle: watch it, "
    "but only the always-valid test may be acted on between planned analyses.",
)
rejected = [s for s in detail.get("sequential", []) if s["rejected"]]
cols[3].metric("Always-valid test", "rejects" if rejected else "no rejection")

# ---------------------------------------------------------------- side by side

st.header("Canary and control side by side")
arms = detail.get("arms", {})
side = pd.DataFrame(
    {
        arm: {
            "scores": int(arms.get(arm, {}).get("n_ok", 0)),
            "alerts": int(arms.get(arm, {}).get("n_alert", 0)),
            "errors + timeouts": int(arms.get(arm, {}).get("n_error", 0)),
            "settled scores": int(arms.get(arm, {}).get("n_settled", 0)),
            "outcomes (settled)": int(arms.get(arm, {}).get("n_positive", 0)),
            "expected outcomes": round(float(arms.get(arm, {}).get("sum_p_settled", 0.0)), 1),
        }
        for arm in ("canary", "control")
    }
)
st.caption(
    f"Canary period from {latest['window_start']:%Y-%m-%d %H:%M} to "
    f"{latest['window_end']:%Y-%m-%d %H:%M} UTC. Alerts per 100 patient-days count "
    "patient-days from the scoring cadence (scores × interval / 24 h)."
)
left, right = st.columns([1, 2])
left.dataframe(side, width="stretch", key="canary_side")
hists = data.canary_histograms(
    model, site, version, control_version, latest["window_start"], latest["window_end"]
)
right.plotly_chart(
    charts.canary_distribution_figure(
        hists["score"], edges=SCORE_BIN_EDGES, title="Score distribution (share per bin)"
    ),
    key="canary_scores",
)
st.plotly_chart(
    charts.canary_distribution_figure(
        hists["latency"],
        edges=(*LATENCY_BIN_EDGES, LATENCY_BIN_EDGES[-1]),
        title="Latency, trigger to delivery (seconds)",
    ),
    key="canary_latency",
)

# ---------------------------------------------------------------- the metric table

st.header("Metrics")
tab_interim, tab_planned = st.tabs(["Period so far (interim)", "Planned analysis"])
with tab_interim:
    table = _metric_table(detail.get("judgement", {}))
    st.dataframe(table.style.apply(_highlight, axis=1), hide_index=True, key="canary_metrics")
    st.caption(
        "High / Low: the canary differs significantly and the effect lies outside the metric's "
        "band; ✗ marks a classification that fails under the metric's direction. Counts are "
        "divided by the design effect (scores of one encounter are not independent). The "
        "score-distribution shift is the Hodges-Lehmann estimate from score bins, on the "
        "log-odds scale: approximate to about one bin."
    )
with tab_planned:
    if planned is None:
        stage_rule = config.stages.get("canary")
        st.info(
            f"Not judged yet: it runs over the first {stage_rule.min_days if stage_rule else '?'}"
            " days once their labels have settled."
        )
    else:
        st.caption(
            f"Window {planned['window_start']:%Y-%m-%d %H:%M} – "
            f"{planned['window_end']:%Y-%m-%d %H:%M} UTC · verdict {planned['verdict']} · "
            f"score {_fmt(planned['score'], 3)}"
        )
        planned_detail = (planned["detail"] or {}).get("planned") or {}
        st.dataframe(
            _metric_table(planned_detail).style.apply(_highlight, axis=1),
            hide_index=True,
            key="canary_planned_metrics",
        )

st.subheader("Verdict over time")
st.plotly_chart(
    charts.canary_verdict_figure(
        interim_rows,
        pass_threshold=config.pass_threshold,
        marginal_threshold=config.marginal_threshold,
        planned_end=planned["window_end"] if planned else None,
    ),
    key="canary_verdicts",
)

st.subheader("Always-valid test")
sequential = pd.DataFrame(detail.get("sequential", []))
if not sequential.empty:
    st.dataframe(
        sequential[
            [
                "metric",
                "direction",
                "null_ratio",
                "max_evalue",
                "threshold",
                "p_value",
                "rejected",
                "design_effect",
                "looks",
            ]
        ],
        hide_index=True,
        key="canary_sequential",
    )
st.caption(
    "Mixture SPRT on each watched count (canary's share of each hour's events, normal "
    "mixture on the log rate ratio): it may be looked at every cycle, and rejects a canary "
    f"that is no worse than its tolerance with probability at most {config.sequential.alpha:g} "
    "over all watched metrics together."
)

# ---------------------------------------------------------------- stage and exit criteria

st.header(f"Stage: {row['stage']}")
criteria = pd.DataFrame(detail.get("criteria", []))
if not criteria.empty:
    criteria["met"] = [MET[m] for m in criteria["met"]]
    st.dataframe(criteria, hide_index=True, key="canary_criteria")
stages = data.stage_history(model)
if not stages.empty:
    st.caption("Stage history")
    st.dataframe(stages, hide_index=True, key="canary_stage_history")

st.subheader("Act")
may_promote = can(actor, Action.PROMOTE_VERSION)
may_roll_back = can(actor, Action.ROLLBACK)
promote_clicked = rollback_clicked = confirm = False
promote_reason = rollback_reason = ""
if not (may_promote or may_roll_back):
    role = actor.role.value if actor else "none"
    st.caption(
        f"Your role ({role}) may not promote or roll back: clinical leads and admins promote, "
        "incident responders and admins roll back."
    )
left, right = st.columns(2)
if may_promote:
    with left, st.form("canary_promote"):
        st.markdown(f"**Promote** {version} to its next stage (clinical lead, admin)")
        promote_reason = st.text_input("Reason", key="promote_reason")
        promote_clicked = st.form_submit_button("Promote", key="promote_submit")
if may_roll_back:
    with right, st.form("canary_rollback"):
        st.markdown(
            f"**Roll back** {version} at {site}: the kill switch turns the canary version off "
            f"there, and {control_version} keeps serving (incident responder, admin)"
        )
        rollback_reason = st.text_input("Reason", key="rollback_reason")
        confirm = st.checkbox(
            "I understand the canary version stops scoring at this site", key="rollback_confirm"
        )
        rollback_clicked = st.form_submit_button("Roll back", key="rollback_submit")
if (promote_clicked or rollback_clicked) and actor is None:
    st.error("Sign in first.")
elif promote_clicked and actor is not None:
    _run(
        lambda: promotion.promote(
            data.engine(),
            actor,
            model=model,
            version=version,
            reason=promote_reason,
            config=config,
        )
    )
elif rollback_clicked and actor is not None:
    if not confirm:
        st.warning("Tick the confirmation to roll back.")
    else:
        _run(
            lambda: promotion.rollback(
                data.engine(),
                actor,
                model=model,
                site=site,
                version=version,
                reason=rollback_reason,
            )
        )
