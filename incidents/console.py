"""Read side of the incident console (and the CLI): alerts, score states, pages, incidents.

Plain keyword-only functions returning DataFrames; the Streamlit page reads them through
app/data.py's cached loaders and never builds SQL itself.
"""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from incidents import audit, killswitch, paging
from store.models import Alert, Incident, Model, Site, table_of

A = table_of(Alert)
INC = table_of(Incident)
M = table_of(Model)
S = table_of(Site)
SEVERITY_ORDER = {"page": 0, "ticket": 1}
ALERT_COLUMNS = [
    "id",
    "severity",
    "status",
    "model",
    "site",
    "monitor",
    "summary",
    "runbook",
    "opened_at",
    "acknowledged_by",
    "resolved_at",
]


def alerts_frame(
    engine: Engine,
    *,
    include_resolved: bool = False,
    model: str | None = None,
    site: str | None = None,
) -> pd.DataFrame:
    """Alerts, pages before tickets, newest first within each severity."""
    query = (
        sa.select(
            A.c.id,
            A.c.severity,
            A.c.status,
            M.c.name.label("model"),
            sa.func.coalesce(S.c.code, "all sites").label("site"),
            A.c.monitor,
            A.c.summary,
            A.c.runbook,
            A.c.opened_at,
            A.c.acknowledged_by,
            A.c.resolved_at,
        )
        .join(M, M.c.id == A.c.model_id)
        .outerjoin(S, S.c.id == A.c.site_id)
    )
    if not include_resolved:
        query = query.where(A.c.status != "resolved")
    if model:
        query = query.where(M.c.name == model)
    if site:
        query = query.where(S.c.code == site)
    with engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(query).all(), columns=ALERT_COLUMNS)
    if frame.empty:
        return frame
    frame["rank"] = frame["severity"].map(SEVERITY_ORDER).fillna(9)
    frame = frame.sort_values(["rank", "opened_at"], ascending=[True, False])
    return frame.drop(columns="rank").reset_index(drop=True)


def statuses_frame(engine: Engine) -> pd.DataFrame:
    """Every deployment's score status."""
    rows = [s.to_json() for s in killswitch.all_statuses(engine)]
    columns = ["model", "site", "version", "arm", "status", "reason", "since", "incident", "scope"]
    frame = pd.DataFrame(rows, columns=[*columns, "enabled"])
    return frame[columns]


def disabled_switches_frame(engine: Engine) -> pd.DataFrame:
    columns = ["id", "model", "site", "version", "reason", "incident_id", "incident", "actor"]
    rows = killswitch.switches(engine, disabled_only=True)
    return pd.DataFrame(rows, columns=[*columns, "enabled", "role", "changed_at", "revision"])


def incidents_frame(engine: Engine, *, open_only: bool = True) -> pd.DataFrame:
    query = sa.select(INC.c.id, INC.c.title, INC.c.status, INC.c.opened_by, INC.c.opened_at)
    if open_only:
        query = query.where(INC.c.status == "open")
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(INC.c.id.desc())).all()
    return pd.DataFrame(rows, columns=["id", "title", "status", "opened_by", "opened_at"])


def timeline_frame(engine: Engine, *, target_contains: str | None = None) -> pd.DataFrame:
    events = audit.recent_events(engine, limit=100, target_contains=target_contains)
    frame = pd.DataFrame(
        events, columns=["id", "at", "actor", "role", "action", "target", "detail"]
    )
    frame["why"] = [
        (d or {}).get("reason") or (d or {}).get("note") or (d or {}).get("title") or ""
        for d in frame["detail"]
    ]
    frame["changed"] = [(d or {}).get("changed", True) for d in frame["detail"]]
    return frame.drop(columns="detail")


def undeliverable_frame(engine: Engine) -> pd.DataFrame:
    """Pages that failed for good, and pages still being retried after an error."""
    columns = ["id", "dedup_key", "channel", "status", "attempts", "last_error", "created_at"]
    rows = [
        e
        for e in paging.outbox_entries(engine, statuses=("failed", "pending"), limit=200)
        if e["status"] == "failed" or e["last_error"]
    ]
    return pd.DataFrame(rows, columns=[*columns, "alert_id", "next_attempt_at", "sent_at"])[columns]
