"""Models registry: versions and lineage, deployments per site, score status, the model card."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy.exc import DBAPIError

from app import data, links, session
from app.ui import markdown_text as md
from app.ui import run_action
from incidents import actions
from incidents.auth import Action, Actor, can
from reports.model_cards import REQUIRED_ATTRIBUTES, load_card

FLASH = "models_flash"


def _deployment_label(row: dict[Any, Any]) -> str:
    unit = f", unit {row['unit']}" if row["unit"] else ""
    return f"{row['site']} · {row['version']} ({row['arm']}{unit}) — now {row['alert_threshold']:g}"


def _threshold_form(actor: Actor, model: str, deployments: pd.DataFrame) -> None:
    """Change one deployment's alert threshold; the action checks the role and audits it."""
    rows = deployments.to_dict("records")
    with st.form("edit_threshold"):
        chosen = st.selectbox(
            "Deployment", range(len(rows)), format_func=lambda i: _deployment_label(rows[i]),
            key="threshold_deployment",
        )  # fmt: skip
        current = float(rows[int(chosen or 0)]["alert_threshold"])
        value = st.number_input(
            "New alert threshold (a risk between 0 and 1)", min_value=0.0, max_value=1.0,
            value=current, step=0.005, format="%.4f", key="threshold_value",
        )  # fmt: skip
        reason = st.text_input("Reason (audited; no patient identifiers)", key="threshold_reason")
        submitted = st.form_submit_button("Change threshold", key="threshold_submit")
    if not submitted:
        return
    row = rows[int(chosen or 0)]
    result = run_action(
        lambda: actions.set_alert_threshold(
            data.engine(), actor, model=model, site=str(row["site"]),
            version=str(row["version"]), arm=str(row["arm"]), unit=str(row["unit"]),
            threshold=float(value), reason=reason,
        )
    )  # fmt: skip
    if result is None:
        return
    data.registry_overview.clear()
    st.session_state[FLASH] = (result.changed, result.message)
    st.rerun()


st.title("Models")
actor = session.current_actor()
if FLASH in st.session_state:
    changed, message = st.session_state.pop(FLASH)
    (st.success if changed else st.info)(md(message))

try:
    registry = data.registry_overview()
    statuses = data.score_statuses()
except DBAPIError:
    st.error("The Vigil database is unreachable; the registry cannot be shown.")
    st.stop()

models = registry["models"]
if models.empty:
    st.info("No models are registered yet. Run `vigil registry sync` to load config/registry.yaml.")
    st.stop()

names = list(models["name"])
model = str(links.pick("Model", names, param=links.MODEL))
info = models[models["name"] == model].iloc[0]
st.caption(
    f"{md(info['title'])} · outcome {md(info['outcome'])} within {info['horizon_hours']:g} h of "
    f"scoring · labels may arrive up to {info['label_lag_hours']:g} h late · latency SLO "
    f"{info['latency_slo_seconds']:g} s"
)

st.subheader("Versions and lineage")
versions = registry["versions"]
versions = versions[versions["model"] == model].drop(columns=["model"])
st.dataframe(
    versions.rename(
        columns={
            "artifact_sha256": "artifact digest (sha256)",
            "training_data": "training-data snapshot",
            "feature_set": "feature set",
            "threshold": "alert threshold",
            "calibration": "calibration layer",
        }
    ),
    hide_index=True,
    width="stretch",
)

st.subheader("Deployments and score status per site")
deployments = registry["deployments"]
deployments = deployments[deployments["model"] == model].drop(columns=["model"])
if not statuses.empty:
    mine = statuses[statuses["model"] == model][
        ["site", "version", "arm", "status", "reason", "since"]
    ]
    deployments = deployments.merge(mine, on=["site", "version", "arm"], how="left")
if deployments.empty:
    st.info("This model is not deployed at any site.")
else:
    deployments["unit"] = deployments["unit"].replace("", "all units")
    st.dataframe(deployments, hide_index=True, width="stretch")
    suppressed = (
        deployments[deployments.get("status", "enabled") == "suppressed"]
        if "status" in deployments
        else deployments.iloc[0:0]
    )
    if not suppressed.empty:
        st.warning(
            f"The score is switched off at {md(', '.join(sorted(set(suppressed['site']))))}; "
            "see the Incidents page for the reason and to re-enable it.",
            icon=":material/block:",
        )

st.subheader("Alert thresholds")
own = registry["deployments"]
own = own[own["model"] == model]
if own.empty:
    st.caption("No deployment to set a threshold for.")
elif actor is not None and can(actor, Action.EDIT_THRESHOLDS):
    _threshold_form(actor, model, own)
else:
    st.caption(
        f"Your role ({actor.role.value if actor else 'none'}) may not change alert thresholds: "
        "clinical leads and admins can."
    )

st.subheader("Model card")
card = load_card(model)
if card.source is None:
    st.warning(
        f"No model card file for {md(model)} (expected config/model_cards/{md(model)}.yaml)."
    )
else:
    st.markdown(f"**{md(card.name)}**")
    for key, label in REQUIRED_ATTRIBUTES.items():
        value = card.attributes.get(key, "")
        st.markdown(f"**{label}.** {value}" if value else f"**{label}.** :red[missing]")
    if card.missing:
        st.error(f"The card is missing {len(card.missing)} required attribute(s).")
