"""Incident console: open alerts with their runbooks, the kill switch, paging, the audit timeline.

Every button calls an action in `incidents.actions`, which checks the actor's role itself;
this page only gathers the inputs. Deep links: ?model=…&site=…&alert=…&runbook=….
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy.exc import DBAPIError

from app import data, session
from app.ui import markdown_text as md
from app.ui import run_action
from incidents import actions, paging
from incidents.auth import Action, can
from incidents.runbooks import RunbookError, load_runbook, render_markdown
from vigil.config import get_settings

settings = get_settings()
params = st.query_params
ALL_SITES = "All sites"
ANY_VERSION = "Every version"
NO_INCIDENT = "— new incident —"


def _run(call: Any, success: str | None = None) -> None:
    """Run an action; on success rerun the page showing what it did, else show why not."""
    result = run_action(call)
    if result is None:
        return
    data.clear_incident_caches()
    if result.page_keys and settings.slack_bot_token:
        try:  # send now; the scheduler's paging job retries whatever does not go through
            paging.deliver_pending(
                data.engine(),
                paging.slack_client(settings),
                settings=settings,
                keys=result.page_keys,
            )
        except Exception as exc:  # the page stays queued; say so rather than fail the action
            st.warning(f"Page queued; Slack did not take it yet ({type(exc).__name__}).")
    # Rerun so every part of the page (counts, tables, timeline) shows the change at once.
    st.session_state["incident_flash"] = (result.changed, success or result.message)
    st.rerun()


def _runbook(slug: str, *, expanded: bool = False) -> None:
    try:
        runbook = load_runbook(slug)
    except RunbookError as exc:
        st.warning(f"Runbook unavailable: {exc}")
        return
    with st.expander(f"Runbook: {runbook.title}", expanded=expanded, icon=":material/menu_book:"):
        st.caption(f"Owner: {runbook.owner} · severity {runbook.severity} · `{runbook.id}`")
        st.markdown(render_markdown(runbook))


st.title("Incidents")
actor = session.current_actor()
if "incident_flash" in st.session_state:
    changed, message = st.session_state.pop("incident_flash")
    (st.success if changed else st.info)(message)

try:
    alerts = data.incident_alerts()
    statuses = data.score_statuses()
    disabled = data.disabled_switches()
    incidents = data.open_incidents()
    undeliverable = data.undeliverable_pages()
    chain = data.audit_chain()
except DBAPIError as exc:
    st.error(
        "The Vigil database is unreachable, so nothing below is current. "
        f"({type(exc.orig).__name__ if exc.orig else 'database error'})",
        icon=":material/database_off:",
    )
    st.stop()

focus_model = params.get("model")
focus_site = params.get("site")
focus_alert = params.get("alert")

cols = st.columns(4)
cols[0].metric("Open pages", int((alerts["severity"] == "page").sum()) if not alerts.empty else 0)
cols[1].metric(
    "Open tickets", int((alerts["severity"] == "ticket").sum()) if not alerts.empty else 0
)
cols[2].metric("Suppressed scores", int((statuses["status"] == "suppressed").sum()))
cols[3].metric("Undeliverable pages", int((undeliverable["status"] == "failed").sum()))

if params.get("runbook"):
    _runbook(str(params["runbook"]), expanded=True)

# ---------------------------------------------------------------- alerts

st.header("Open alerts")
shown = alerts
if focus_model:
    shown = shown[shown["model"] == focus_model]
if focus_site:
    shown = shown[shown["site"] == focus_site]
if alerts.empty:
    st.success("No open alerts.", icon=":material/check_circle:")
elif shown.empty:
    st.info(f"No open alerts for {focus_model or 'any model'} at {focus_site or 'any site'}.")
for alert in shown.to_dict("records"):
    alert_id = int(alert["id"])
    with st.container(border=True, key=f"alert_{alert_id}"):
        badge = ":red-badge[PAGE]" if alert["severity"] == "page" else ":orange-badge[TICKET]"
        st.markdown(
            f"{badge} **#{alert_id} · {md(alert['model'])} at {md(alert['site'])}** · "
            f"{md(alert['status'])}"
            + (f" by {md(alert['acknowledged_by'])}" if alert["acknowledged_by"] else "")
        )
        st.markdown(md(alert["summary"]))
        st.caption(
            f"{md(alert['monitor'])} · opened {alert['opened_at']:%Y-%m-%d %H:%M} UTC · "
            f"runbook `{alert['runbook']}`"
        )
        _runbook(str(alert["runbook"]), expanded=str(alert_id) == focus_alert)
        if can(actor, Action.ACKNOWLEDGE_ALERT):
            with st.form(f"act_{alert_id}", border=False):
                left, right = st.columns([1, 2])
                choice = left.radio(
                    "Action",
                    ["Acknowledge", "Escalate", "Page now", "Resolve"],
                    key=f"act_choice_{alert_id}",
                    horizontal=False,
                )
                note = right.text_input(
                    "Note (required to escalate, page or resolve)", key=f"act_note_{alert_id}"
                )
                submitted = st.form_submit_button("Apply", key=f"act_submit_{alert_id}")
            if submitted and actor is None:
                st.error("Sign in first.")
            elif submitted and actor is not None:
                alert_action = {
                    "Acknowledge": actions.acknowledge_alert,
                    "Escalate": actions.escalate_alert,
                    "Page now": actions.page_now,
                    "Resolve": actions.resolve_alert,
                }[str(choice)]
                _run(partial(alert_action, data.engine(), actor, alert_id=alert_id, note=note))

# ---------------------------------------------------------------- kill switch

st.header("Kill switch")
st.dataframe(
    statuses.style.apply(
        lambda row: [
            "background-color: #fde2e1" if row["status"] == "suppressed" else "" for _ in row
        ],
        axis=1,
    ),
    hide_index=True,
    width="stretch",
    key="score_statuses",
)

models = sorted(statuses["model"].unique()) if not statuses.empty else []
sites = sorted(statuses["site"].unique()) if not statuses.empty else []
st.subheader("Disable score")
if can(actor, Action.DISABLE_SCORE):
    with st.form("disable_score"):
        c1, c2, c3 = st.columns(3)
        model = c1.selectbox(
            "Model",
            models,
            index=models.index(focus_model) if focus_model in models else 0,
            key="disable_model",
        )
        site_options = [*sites, ALL_SITES]
        site = c2.selectbox(
            "Site",
            site_options,
            index=site_options.index(focus_site) if focus_site in site_options else 0,
            key="disable_site",
        )
        versions = sorted(statuses.loc[statuses["model"] == model, "version"].unique())
        version = c3.selectbox("Version", [ANY_VERSION, *versions], key="disable_version")
        reason = st.text_area(
            "Reason (consumers and clinicians read it; no patient identifiers)",
            key="disable_reason",
        )
        i1, i2 = st.columns(2)
        incident_choices = [NO_INCIDENT] + [
            f"#{row['id']} {row['title']}" for row in incidents.to_dict("records")
        ]
        existing = i1.selectbox("Existing incident", incident_choices, key="disable_incident")
        new_title = i2.text_input("…or a new incident title", key="disable_incident_title")
        confirm = st.checkbox(
            "I understand clinicians will stop seeing this score", key="disable_confirm"
        )
        disable_clicked = st.form_submit_button(
            "Disable score", type="primary", icon=":material/block:", key="disable_submit"
        )
    if disable_clicked:
        if actor is None:
            st.error("Sign in first.")
        elif not confirm:
            st.warning("Tick the confirmation to disable the score.")
        else:
            engine = data.engine()
            incident_id = int(existing.split()[0][1:]) if existing != NO_INCIDENT else None
            _run(
                lambda: actions.disable_score(
                    engine,
                    actor,
                    model=str(model),
                    site=None if site == ALL_SITES else str(site),
                    version=None if version == ANY_VERSION else str(version),
                    reason=reason,
                    incident_id=incident_id,
                    incident_title=new_title if incident_id is None else None,
                )
            )
else:
    st.caption(
        f"Your role ({actor.role.value if actor else 'none'}) may not switch a score off: "
        "incident responders and admins can."
    )

st.subheader("Re-enable")
if disabled.empty:
    st.caption("No score is switched off.")
for switch in disabled.to_dict("records"):
    scope_site = None if switch["site"] == "*" else str(switch["site"])
    scope_version = None if switch["version"] == "*" else str(switch["version"])
    label = (
        f"{md(switch['model'])} at {md(switch['site']) if scope_site else 'every site'}"
        + (f", version {md(scope_version)}" if scope_version else "")
        + f" — off since {pd.Timestamp(switch['changed_at']):%Y-%m-%d %H:%M} UTC by "
        + f"{md(switch['actor'])}: {md(switch['reason'])} (incident #{switch['incident_id']})"
    )
    if can(actor, Action.ENABLE_SCORE):
        with st.form(f"enable_{switch['id']}"):
            st.markdown(label)
            enable_reason = st.text_input(
                "Reason it is safe again", key=f"enable_reason_{switch['id']}"
            )
            enable_confirm = st.checkbox(
                "I understand clinicians will see this score again",
                key=f"enable_confirm_{switch['id']}",
            )
            enable_clicked = st.form_submit_button(
                "Re-enable score", key=f"enable_submit_{switch['id']}"
            )
        if enable_clicked:
            if actor is None:
                st.error("Sign in first.")
            elif not enable_confirm:
                st.warning("Tick the confirmation to re-enable the score.")
            else:
                _run(
                    partial(
                        actions.enable_score,
                        data.engine(),
                        actor,
                        model=str(switch["model"]),
                        site=scope_site,
                        version=scope_version,
                        reason=enable_reason,
                        incident_id=int(switch["incident_id"]),
                    )
                )
    else:
        st.markdown(label)

# ---------------------------------------------------------------- paging

st.header("Pages that did not go out")
if not settings.slack_bot_token:
    st.warning(
        "Slack is not configured (VIGIL_SLACK_BOT_TOKEN): pages wait in the outbox.",
        icon=":material/notifications_off:",
    )
if undeliverable.empty:
    st.caption("Every page was delivered.")
else:
    st.dataframe(undeliverable, hide_index=True, width="stretch", key="undeliverable")
    failed = undeliverable[undeliverable["status"] == "failed"]
    if not failed.empty and can(actor, Action.RETRY_PAGE):
        with st.form("retry_pages"):
            chosen = st.selectbox(
                "Undeliverable page",
                [f"#{row['id']} {row['dedup_key']}" for row in failed.to_dict("records")],
                key="retry_choice",
            )
            retry_clicked = st.form_submit_button("Retry delivery", key="retry_submit")
        if retry_clicked and actor is not None:
            engine = data.engine()
            outbox_id = int(str(chosen).split()[0][1:])
            _run(lambda: actions.retry_page(engine, actor, outbox_id=outbox_id))

# ---------------------------------------------------------------- timeline

st.header("Timeline")
if chain["ok"]:
    st.caption(f"Audit log: {chain['text']}")
else:
    st.error(f"Audit log: {chain['text']}", icon=":material/gpp_bad:")
timeline = data.audit_timeline()
if timeline.empty:
    st.caption("No actions recorded yet.")
else:
    st.dataframe(
        timeline[["at", "actor", "role", "action", "target", "why", "changed"]],
        hide_index=True,
        width="stretch",
        key="timeline",
    )
