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
from store.models import CONCLUSIVE, Alert, MetricPoint, Model, Site, table_of, utcnow

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


def worst_point(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The point that decides a window: the worst status, then the last metric name; the
    first such point (in id order) on a tie."""
    return max(rows, key=lambda r: (SEVERITY[Status(r["status"])], r["metric"]))


def observation_of(point: dict[str, Any], newest: datetime, *, runbook: str) -> Observation:
    """A window's evidence from its deciding point (see `worst_point`)."""
    detail = point.get("detail") or {}
    severity = detail.get("severity") or runbook_severity(runbook)
    return Observation(Status(point["status"]), str(severity), summarise(point), newest)


_CHUNK = 400  # keys per statement: 4 parameters each, well inside both databases' limits
_RANK = {status.value: rank for status, rank in SEVERITY.items()}


@lru_cache(maxsize=8)
def _newest_query(size: int) -> sa.TextualSelect:
    """For `size` keys (parameters m0, o0, s0, a0, ...): each key's newest conclusive window end.

    Each key's subquery is one seek of the partial index of conclusive points (monitor,
    model, site, arm, window_end). The condition is the index's own predicate written out,
    not a parameter: a prepared statement's generic plan on PostgreSQL can use a partial index
    only when the predicate is visible in the query text.
    """
    values = ", ".join(f"(:m{i}, :o{i}, :s{i}, :a{i})" for i in range(size))
    return sa.text(
        f"WITH k (monitor, model_id, site_id, arm) AS (VALUES {values}) "
        "SELECT k.monitor, k.model_id, k.site_id, k.arm, "
        f"(SELECT p.window_end FROM {MP.name} p WHERE p.monitor = k.monitor "
        "AND p.model_id = k.model_id AND p.site_id = k.site_id AND p.arm = k.arm "
        f"AND p.{CONCLUSIVE} ORDER BY p.window_end DESC LIMIT 1) AS newest FROM k"
    ).columns(
        sa.column("monitor", sa.String),
        sa.column("model_id", sa.Integer),
        sa.column("site_id", sa.Integer),
        sa.column("arm", sa.String),
        sa.column("newest", MP.c.window_end.type),
    )


def _newest_windows(conn: Connection, keys: list[Key]) -> dict[Key, datetime]:
    """The newest conclusive window end of each key that has one, one query per 400 keys."""
    newest: dict[Key, datetime] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        params: dict[str, Any] = {}
        for i, (monitor, model_id, site_id, arm) in enumerate(chunk):
            params |= {f"m{i}": monitor, f"o{i}": model_id, f"s{i}": site_id, f"a{i}": arm}
        for monitor, model_id, site_id, arm, end in conn.execute(
            _newest_query(len(chunk)), params
        ).all():
            if end is not None:
                newest[(str(monitor), int(model_id), int(site_id), str(arm))] = end
    return newest


def latest_observations(
    conn: Connection, keys: Iterable[Key], *, runbooks: dict[str, str]
) -> dict[Key, Observation]:
    """The newest conclusive window's evidence of many keys, in a few queries: the newest
    windows; the points of those windows, one query per monitor and model (index monitor,
    model, site, window_end); then the detail of each key's deciding point only."""
    newest = _newest_windows(conn, sorted(set(keys)))
    groups: dict[tuple[str, int], list[Key]] = {}
    for key in newest:
        groups.setdefault((key[0], key[1]), []).append(key)
    # Per key: ((rank, metric), id, point) of the deciding point so far, as `worst_point`.
    best: dict[Key, tuple[tuple[int, str], int, dict[str, Any]]] = {}
    for (monitor, model_id), members in groups.items():
        query = (
            sa.select(
                MP.c.id,
                MP.c.site_id,
                MP.c.arm,
                MP.c.window_end,
                MP.c.metric,
                MP.c.value,
                MP.c.status,
                MP.c.threshold,
            )
            .where(
                MP.c.monitor == monitor,
                MP.c.model_id == model_id,
                MP.c.site_id.in_(sorted({k[2] for k in members})),
                MP.c.window_end.in_(sorted({newest[k] for k in members})),
                MP.c.status != Status.INSUFFICIENT.value,
            )
            .order_by(MP.c.id)
        )
        for point_id, site_id, arm, end, metric, value, status, threshold in conn.execute(
            query
        ).all():
            key = (monitor, model_id, int(site_id), str(arm))
            if newest.get(key) != end:
                continue
            rank = (_RANK[status], metric)
            if key not in best or rank > best[key][0]:
                point = {"metric": metric, "value": value, "status": status, "threshold": threshold}
                best[key] = (rank, point_id, point)
    ids = [point_id for _, point_id, _ in best.values()]
    details: dict[int, Any] = {}
    for start in range(0, len(ids), _CHUNK):
        details |= dict(
            conn.execute(
                sa.select(MP.c.id, MP.c.detail).where(MP.c.id.in_(ids[start : start + _CHUNK]))
            ).all()
        )
    return {
        key: observation_of(
            point | {"detail": details.get(point_id)}, newest[key], runbook=runbooks[key[0]]
        )
        for key, (_, point_id, point) in sorted(best.items())
    }


def _active_alerts(conn: Connection, key_texts: list[str]) -> dict[str, ActiveAlert]:
    """The newest open or acknowledged alert of each dedup key (locked on PostgreSQL)."""
    if not key_texts:
        return {}
    query = (
        sa.select(A.c.id, A.c.dedup_key, A.c.severity, A.c.summary)
        .where(A.c.dedup_key.in_(sorted(set(key_texts))), A.c.status.in_(ACTIVE))
        .order_by(A.c.id)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return {
        row.dedup_key: ActiveAlert(row.id, row.severity, row.summary)
        for row in conn.execute(query).all()
    }


def _apply(
    conn: Connection,
    key: Key,
    observation: Observation,
    active: ActiveAlert | None,
    *,
    names: tuple[str, str | None],
    runbook: str,
    now: datetime,
) -> tuple[str, AlertChange | None, ActiveAlert | None]:
    """The transition for one key given its active alert; also returns the key's active alert
    afterwards (None once resolved)."""
    monitor, model_id, site_id, arm = key
    key_text = dedup_key(monitor, names[0], names[1], arm)
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
        opened = ActiveAlert(alert_id, observation.severity, observation.summary)
        return action, change("opened", alert_id, observation.severity), opened
    assert action == "none" or active is not None
    if action == "escalate" and active is not None:
        conn.execute(
            sa.update(A)
            .where(A.c.id == active.id)
            .values(severity=observation.severity, summary=observation.summary)
        )
        escalated = ActiveAlert(active.id, observation.severity, observation.summary)
        return action, change("escalated", active.id, observation.severity), escalated
    if action == "update" and active is not None:
        conn.execute(sa.update(A).where(A.c.id == active.id).values(summary=observation.summary))
        return action, None, ActiveAlert(active.id, active.severity, observation.summary)
    if action == "resolve" and active is not None:
        conn.execute(
            sa.update(A)
            .where(A.c.id == active.id)
            .values(status="resolved", resolved_at=now, summary=observation.summary)
        )
        return action, change("resolved", active.id, active.severity), None
    return action, None, active


def _sync_keys(
    engine: Engine, keys: Iterable[Key], *, now: datetime, registry: MonitorRegistry
) -> AlertChanges:
    """Read every key's evidence and active alert in a few queries, then carry out each key's
    transition in key order (the alerts of keys already handled are tracked in memory)."""
    changes = AlertChanges()
    wanted = sorted(set(keys))
    if not wanted:
        return changes
    known = set(registry.names())
    runbooks: dict[str, str] = {}
    registered: list[Key] = []
    for key in wanted:
        if key[0] not in known:
            logger.warning("results of unregistered monitor %s raise no alert", key[0])
            continue
        runbooks.setdefault(key[0], registry.get(key[0]).runbook)
        registered.append(key)
    with engine.begin() as conn:
        M, S = table_of(Model), table_of(Site)
        models = dict(conn.execute(sa.select(M.c.id, M.c.name)).all())
        sites = dict(conn.execute(sa.select(S.c.id, S.c.code)).all())
        observations = latest_observations(conn, registered, runbooks=runbooks)
        names = {key: (models[key[1]], sites.get(key[2])) for key in observations}
        texts = {key: dedup_key(key[0], *names[key], key[3]) for key in observations}
        active = _active_alerts(conn, list(texts.values()))
        for key in registered:
            observation = observations.get(key)
            if observation is None:
                continue
            action, change, active_after = _apply(
                conn,
                key,
                observation,
                active.get(texts[key]),
                names=names[key],
                runbook=runbooks[key[0]],
                now=now,
            )
            if active_after is None:
                active.pop(texts[key], None)
            else:
                active[texts[key]] = active_after
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
