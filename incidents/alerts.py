"""Alert lifecycle: monitor results open, escalate, update and resolve alerts, one per dedup key.

The dedup key is (monitor, model, site, arm). For each key a monitor run touched, the
*latest conclusive* evidence is read back from `metricpoint` (the newest window whose status
is ok, warn or breach, all its metrics together, the worst one deciding), so a run that only
recomputed old windows, or whose newest window is still waiting for labels, changes nothing.

- breach, no active alert: open one (severity from the result, else its runbook's);
- breach, active alert: escalate it if the severity rose (ticket → page), else update its
  summary; never a second alert for the key;
- ok, active alert: resolve it;
- warn or insufficient data: leave it as it is (no flapping on borderline evidence).

Acknowledging is a human action (incidents.actions). Paging reads the Alert rows
(incidents.paging.sync_pages); `sync_alerts` also returns what changed, for anyone else.
Every alert links its monitor's one runbook, from the monitor registry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from incidents.runbooks import RunbookError, load_runbook
from monitors.base import SEVERITY, MonitorResult, Status
from monitors.registry import MonitorRegistry, default_registry
from store.models import Alert, MetricPoint, Model, Site, table_of, utcnow

logger = logging.getLogger(__name__)

A = table_of(Alert)
MP = table_of(MetricPoint)
SEVERITY_RANK = {"ticket": 1, "page": 2}
ACTIVE = ("open", "acknowledged")

Key = tuple[str, int, int, str]  # monitor, model_id, site_id, arm


@dataclass(frozen=True)
class Observation:
    """The latest conclusive evidence for one dedup key."""

    status: Status
    severity: str
    summary: str
    window_end: datetime


@dataclass(frozen=True)
class ActiveAlert:
    id: int
    severity: str
    summary: str


@dataclass(frozen=True)
class AlertChange:
    kind: str  # opened, escalated, resolved
    alert_id: int
    dedup_key: str
    monitor: str
    model_id: int
    site_id: int
    arm: str
    severity: str
    summary: str
    runbook: str
    at: datetime


@dataclass
class AlertChanges:
    """What one sync did; `updated` counts continuing breaches whose summary was refreshed."""

    opened: list[AlertChange] = field(default_factory=list)
    escalated: list[AlertChange] = field(default_factory=list)
    resolved: list[AlertChange] = field(default_factory=list)
    updated: int = 0

    def all(self) -> list[AlertChange]:
        return [*self.opened, *self.escalated, *self.resolved]

    def extend(self, other: AlertChanges) -> None:
        self.opened += other.opened
        self.escalated += other.escalated
        self.resolved += other.resolved
        self.updated += other.updated

    def __bool__(self) -> bool:
        return bool(self.opened or self.escalated or self.resolved)


# ---------------------------------------------------------------- pure


def dedup_key(monitor: str, model: str, site: str | None, arm: str) -> str:
    """Stable across databases: names, not ids (`latency_slo/deterioration/UMC/all`)."""
    return f"{monitor}/{model}/{site or 'all-sites'}/{arm}"


def transition(active: ActiveAlert | None, observation: Observation) -> str:
    """What the evidence does to the key's alert: open, escalate, update, resolve or none."""
    if observation.status == Status.BREACH:
        if active is None:
            return "open"
        if SEVERITY_RANK.get(observation.severity, 0) > SEVERITY_RANK.get(active.severity, 0):
            return "escalate"
        return "update" if observation.summary != active.summary else "none"
    if observation.status == Status.OK and active is not None:
        return "resolve"
    return "none"


def summarise(row: dict[str, Any]) -> str:
    """A metric point in words: the monitor's own summary, else metric, value and rule."""
    detail = row.get("detail") or {}
    if detail.get("summary"):
        return str(detail["summary"])[:500]
    value = row.get("value")
    shown = "no value" if value is None else f"{value:.4g}"
    return f"{row['metric']} = {shown} ({row.get('threshold') or 'no rule'})"[:500]


@lru_cache(maxsize=64)
def runbook_severity(slug: str) -> str:
    """The severity in the runbook's front matter; ticket if it cannot be read."""
    try:
        severity = load_runbook(slug).severity
    except RunbookError as exc:
        logger.error("alert runbook %s: %s", slug, exc)
        return "ticket"
    return severity if severity in SEVERITY_RANK else "ticket"


# ---------------------------------------------------------------- I/O


def latest_observation(conn: Connection, key: Key, *, runbook: str) -> Observation | None:
    """The newest conclusive window's evidence for a key (index monitor, model, site, window)."""
    monitor, model_id, site_id, arm = key
    scope = sa.and_(
        MP.c.monitor == monitor,
        MP.c.model_id == model_id,
        MP.c.site_id == site_id,
        MP.c.arm == arm,
        MP.c.status != Status.INSUFFICIENT.value,
    )
    newest = conn.execute(sa.select(sa.func.max(MP.c.window_end)).where(scope)).scalar()
    if newest is None:
        return None
    rows = [
        dict(r)
        for r in conn.execute(
            sa.select(MP.c.metric, MP.c.value, MP.c.status, MP.c.threshold, MP.c.detail).where(
                scope, MP.c.window_end == newest
            )
        ).mappings()
    ]
    worst_row = max(rows, key=lambda r: (SEVERITY[Status(r["status"])], r["metric"]))
    detail = worst_row.get("detail") or {}
    severity = detail.get("severity") or runbook_severity(runbook)
    return Observation(Status(worst_row["status"]), str(severity), summarise(worst_row), newest)


def _active_alert(conn: Connection, key_text: str) -> ActiveAlert | None:
    query = (
        sa.select(A.c.id, A.c.severity, A.c.summary)
        .where(A.c.dedup_key == key_text, A.c.status.in_(ACTIVE))
        .order_by(A.c.id.desc())
        .limit(1)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    return None if row is None else ActiveAlert(row.id, row.severity, row.summary)


def apply_observation(
    conn: Connection,
    key: Key,
    observation: Observation,
    *,
    names: tuple[str, str | None],
    runbook: str,
    now: datetime,
) -> tuple[str, AlertChange | None]:
    """Carry out the transition for one key inside the caller's transaction."""
    monitor, model_id, site_id, arm = key
    key_text = dedup_key(monitor, names[0], names[1], arm)
    active = _active_alert(conn, key_text)
    action = transition(active, observation)

    def change(kind: str, alert_id: int, severity: str) -> AlertChange:
        return AlertChange(
            kind, alert_id, key_text, monitor, model_id, site_id, arm, severity,
            observation.summary, runbook, now,
        )  # fmt: skip

    if action == "open":
        alert_id = conn.execute(
            sa.insert(A)
            .values(
                dedup_key=key_text,
                monitor=monitor,
                model_id=model_id,
                site_id=site_id,
                arm=arm,
                severity=observation.severity,
                status="open",
                summary=observation.summary,
                runbook=runbook,
                opened_at=now,
            )
            .returning(A.c.id)
        ).scalar_one()
        return action, change("opened", alert_id, observation.severity)
    assert action == "none" or active is not None
    if action == "escalate" and active is not None:
        conn.execute(
            sa.update(A)
            .where(A.c.id == active.id)
            .values(severity=observation.severity, summary=observation.summary)
        )
        return action, change("escalated", active.id, observation.severity)
    if action == "update" and active is not None:
        conn.execute(sa.update(A).where(A.c.id == active.id).values(summary=observation.summary))
        return action, None
    if action == "resolve" and active is not None:
        conn.execute(
            sa.update(A)
            .where(A.c.id == active.id)
            .values(status="resolved", resolved_at=now, summary=observation.summary)
        )
        return action, change("resolved", active.id, active.severity)
    return action, None


def _sync_keys(
    engine: Engine, keys: Iterable[Key], *, now: datetime, registry: MonitorRegistry
) -> AlertChanges:
    changes = AlertChanges()
    wanted = sorted(set(keys))
    if not wanted:
        return changes
    known = set(registry.names())
    with engine.begin() as conn:
        M, S = table_of(Model), table_of(Site)
        models = dict(conn.execute(sa.select(M.c.id, M.c.name)).all())
        sites = dict(conn.execute(sa.select(S.c.id, S.c.code)).all())
        for key in wanted:
            if key[0] not in known:
                logger.warning("results of unregistered monitor %s raise no alert", key[0])
                continue
            runbook = registry.get(key[0]).runbook
            observation = latest_observation(conn, key, runbook=runbook)
            if observation is None:
                continue
            action, change = apply_observation(
                conn,
                key,
                observation,
                names=(models[key[1]], sites.get(key[2])),
                runbook=runbook,
                now=now,
            )
            if action == "update":
                changes.updated += 1
            if change is not None:
                {"opened": changes.opened, "escalated": changes.escalated}.get(
                    change.kind, changes.resolved
                ).append(change)
    for item in changes.all():
        logger.info("alert %s %s: %s", item.kind, item.dedup_key, item.summary)
    return changes


def sync_alerts(
    engine: Engine,
    results: Iterable[MonitorResult],
    *,
    now: datetime | None = None,
    registry: MonitorRegistry | None = None,
) -> AlertChanges:
    """Open, escalate, update or resolve the alerts of every key these results touched.

    Call it after a monitor run has written its results; the evidence is read back from the
    store, so the order in which monitors and windows were computed does not matter.
    """
    return _sync_keys(
        engine,
        ((r.monitor, r.model_id, r.site_id, r.arm) for r in results),
        now=now or utcnow(),
        registry=registry or default_registry(),
    )


def sync_all_alerts(
    engine: Engine, *, now: datetime | None = None, registry: MonitorRegistry | None = None
) -> AlertChanges:
    """The same for every key any registered monitor ever wrote (a full reconciliation)."""
    registry = registry or default_registry()
    with engine.connect() as conn:
        keys = [
            (str(m), int(model), int(site), str(arm))
            for m, model, site, arm in conn.execute(
                sa.select(MP.c.monitor, MP.c.model_id, MP.c.site_id, MP.c.arm)
                .where(MP.c.monitor.in_(registry.names()))
                .distinct()
            )
        ]
    return _sync_keys(engine, keys, now=now or utcnow(), registry=registry)
