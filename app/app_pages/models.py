"""Models registry: versions and lineage, deployments per site, score status, the model card."""

from __future__ import annotations

import streamlit as st
from sqlalchemy.exc import DBAPIError

from app import data, links
from reports.model_cards import REQUIRED_ATTRIBUTES, load_card

st.title("Models")

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
    f"{info['title']} · outcome `{info['outcome']}` within {info['horizon_hours']:g} h of "
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
            f"The score is switched off at {', '.join(sorted(set(suppressed['site'])))}; "
            "see the Incidents page for the reason and to re-enable it.",
            icon=":material/block:",
        )

st.subheader("Model card")
card = load_card(model)
if card.source is None:
    st.warning(f"No model card file for {model} (expected config/model_cards/{model}.yaml).")
else:
    st.markdown(f"**{card.name}**")
    for key, label in REQUIRED_ATTRIBUTES.items():
        value = card.attributes.get(key, "")
        st.markdown(f"**{label}.** {value}" if value else f"**{label}.** :red[missing]")
    if card.missing:
        st.error(f"The card is missing {len(card.missing)} required attribute(s).")
