"""Human actions on the incident path; each checks the actor's role itself and is audited.

Every function authorises first (PermissionDenied changes nothing), then runs one
transaction that locks the audit chain before reading anything, makes the change (or finds
it already made), appends the audit event and queues the Slack messages the change calls
for — so a state change, its audit event and its page commit together or not at all.
Concurrent callers are serialised by the chain lock: two responders disabling the same
score at once make one state change and two audit events, and neither sees an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from incidents import audit, paging
from incidents.auth import Action, Actor, authorize
from incidents.killswitch import Scope, resolve_scope, set_switch
from store.models import (
    Alert,
    Deployment,
    Incident,
    Model,
    ModelVersion,
    PageOutbox,
    Site,
    table_of,
    utcnow,
)
from vigil.config import Settings, get_settings

logger = logging.getLogger(__name__)

A = table_of(Alert)
INC = table_of(Incident)
PO = table_of(PageOutbox)
D = table_of(Deployment)
M = table_of(Model)
S = table_of(Site)
V = table_of(ModelVersion)
MIN_REASON = 5


@dataclass(frozen=True)
class ActionResult:
    """What an action did: whether it changed anything, and the audit event that records it."""

    changed: bool
    message: str
    audit_hash: str
    incident_id: int | None = None
    page_keys: tuple[str, ...] = ()


def _clean(text: str | None, what: str, minimum: int = 1) -> str:
    cleaned = (text or "").strip()
    if len(cleaned) < minimum:
        raise ValueError(f"{what} is required (at least {minimum} characters)")
    return cleaned


def _incident(
    conn: Connection,
    actor: Actor,
    *,
    incident_id: int | None,
    incident_title: str | None,
    scope: Scope | None,
    now: datetime,
) -> tuple[int, str | None]:
    """An existing incident's id, or a new incident opened (and audited) under the title;
    with the audit hash of the opening, if one was opened."""
    if (incident_id is None) == (not (incident_title or "").strip()):
        raise ValueError("name exactly one incident: an existing incident or a new title")
    if incident_id is not None:
        found = conn.execute(sa.select(INC.c.id).where(INC.c.id == incident_id)).scalar()
        if found is None:
            raise LookupError(f"no incident #{incident_id}")
        return int(found), None
    title = _clean(incident_title, "the incident title", 3)
    new_id = conn.execute(
        sa.insert(INC)
        .values(
            title=title,
            model_id=scope.model_id if scope else None,
            site_id=scope.site_id if scope and scope.site_id else None,
            status="open",
            opened_by=actor.name,
            opened_at=now,
        )
        .returning(INC.c.id)
    ).scalar_one()
    digest = audit.append(
        conn,
        actor=actor.name,
        role=actor.role.value,
        action=Action.OPEN_INCIDENT.value,
        target=f"incident:{new_id}",
        detail={"title": title, "scope": scope.target if scope else None},
        at=now,
    )
    return int(new_id), digest


def open_incident(
    engine: Engine,
    actor: Actor,
    *,
    title: str,
    model: str | None = None,
    site: str | None = None,
    now: datetime | None = None,
) -> ActionResult:
    authorize(actor, Action.OPEN_INCIDENT)
    now = now or utcnow()
    with engine.begin() as conn:
        audit.lock_chain(conn)
        scope = resolve_scope(conn, model=model, site=site) if model else None
        incident_id, digest = _incident(
            conn, actor, incident_id=None, incident_title=title, scope=scope, now=now
        )
    assert digest is not None
    return ActionResult(True, f"incident #{incident_id} opened", digest, incident_id)


def _set_score(
    engine: Engine,
    actor: Actor,
    *,
    enabled: bool,
    model: str,
    site: str | None,
    version: str | None,
    reason: str,
    incident_id: int | None,
    incident_title: str | None,
    now: datetime | None,
    settings: Settings | None,
) -> ActionResult:
    action = Action.ENABLE_SCORE if enabled else Action.DISABLE_SCORE
    authorize(actor, action)
    reason = _clean(reason, "a reason", MIN_REASON)
    settings = settings or get_settings()
    now = now or utcnow()
    with engine.begin() as conn:
        audit.lock_chain(conn)  # first: serialises concurrent responders
        scope = resolve_scope(conn, model=model, site=site, version=version)
        incident, _ = _incident(
            conn,
            actor,
            incident_id=incident_id,
            incident_title=incident_title,
            scope=scope,
            now=now,
        )
        change = set_switch(
            conn,
            scope,
            enabled=enabled,
            reason=reason,
            incident_id=incident,
            actor=actor.name,
            role=actor.role.value,
            now=now,
        )
        detail: dict[str, Any] = {
            "changed": change.changed,
            "enabled": enabled,
            "reason": reason,
            "incident": incident,
            "revision": change.revision,
        }
        if not change.changed:
            detail["already_since"] = change.since
        digest = audit.append(
            conn,
            actor=actor.name,
            role=actor.role.value,
            action=action.value,
            target=scope.target,
            detail=detail,
            at=now,
        )
        keys: tuple[str, ...] = ()
        if change.changed:
            title = conn.execute(sa.select(INC.c.title).where(INC.c.id == incident)).scalar()
            query = {"model": scope.model, **({"site": scope.site} if scope.site else {})}
            key = f"killswitch:{digest[:24]}"
            paging.enqueue(
                conn,
                key=key,
                channel=settings.slack_page_channel,
                message=paging.build_killswitch_message(
                    enabled=enabled,
                    scope_text=scope.describe(),
                    actor=str(actor),
                    reason=reason,
                    incident=f"#{incident} {title}",
                    dashboard=f"{settings.dashboard_url.rstrip('/')}/incidents?{urlencode(query)}",
                    ttl_seconds=settings.api_cache_seconds,
                ),
                event="killswitch",
                now=now,
            )
            keys = (key,)
    verb = "enabled" if enabled else "disabled"
    message = (
        f"{scope.describe()}: score {verb}"
        if change.changed
        else f"{scope.describe()}: already {verb}; nothing changed (your action is audited)"
    )
    logger.info("%s by %s (changed: %s)", message, actor, change.changed)
    return ActionResult(change.changed, message, digest, incident, keys)


def disable_score(
    engine: Engine,
    actor: Actor,
    *,
    model: str,
    site: str | None,
    reason: str,
    incident_id: int | None = None,
    incident_title: str | None = None,
    version: str | None = None,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> ActionResult:
    """Switch a model's score off at one site (or every site, `site=None`), with a reason."""
    return _set_score(
        engine,
        actor,
        enabled=False,
        model=model,
        site=site,
        version=version,
        reason=reason,
        incident_id=incident_id,
        incident_title=incident_title,
        now=now,
        settings=settings,
    )


def enable_score(
    engine: Engine,
    actor: Actor,
    *,
    model: str,
    site: str | None,
    reason: str,
    incident_id: int | None = None,
    incident_title: str | None = None,
    version: str | None = None,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> ActionResult:
    """Switch a score back on (the same scope that was switched off), with a reason."""
    return _set_score(
        engine,
        actor,
        enabled=True,
        model=model,
        site=site,
        version=version,
        reason=reason,
        incident_id=incident_id,
        incident_title=incident_title,
        now=now,
        settings=settings,
    )


def _alert(conn: Connection, alert_id: int) -> sa.Row[Any]:
    row = conn.execute(sa.select(A).where(A.c.id == alert_id)).first()
    if row is None:
        raise LookupError(f"no alert #{alert_id}")
    return row


@dataclass(frozen=True)
class _Transition:
    """What an action does to an alert, decided from the alert as it is under the lock."""

    values: dict[str, Any]  # the alert's columns to set (empty: none)
    detail: dict[str, Any]  # the audit event's detail
    sync: bool  # bring the alert's Slack thread up to date


# After the audit event, inside the same transaction: queue the action's own Slack messages.
_Then = Callable[[Connection, str, Settings, datetime], tuple[str, ...]]


def _alert_transition(
    engine: Engine,
    actor: Actor,
    action: Action,
    *,
    alert_id: int,
    decide: Callable[[sa.Row[Any]], _Transition],
    then: _Then | None = None,
    now: datetime | None,
    settings: Settings | None,
) -> tuple[sa.Row[Any], str, tuple[str, ...]]:
    """One alert action's transaction: lock the chain, read the alert, change it as `decide`
    says, append the audit event, sync the alert's thread and queue the action's pages.

    The caller authorises the actor and validates its input first. Returns the alert as it
    was read, the audit hash and the keys of the pages queued.
    """
    settings = settings or get_settings()
    now = now or utcnow()
    with engine.begin() as conn:
        audit.lock_chain(conn)  # first: serialises concurrent actions on the alert
        alert = _alert(conn, alert_id)
        transition = decide(alert)
        if transition.values:
            conn.execute(sa.update(A).where(A.c.id == alert_id).values(**transition.values))
        digest = audit.append(
            conn,
            actor=actor.name,
            role=actor.role.value,
            action=action.value,
            target=f"alert:{alert_id}",
            detail=transition.detail,
            at=now,
        )
        if transition.sync:
            paging.sync_alert(conn, alert_id, settings=settings, now=now)
        keys = then(conn, digest, settings, now) if then is not None else ()
    return alert, digest, keys


def acknowledge_alert(
    engine: Engine,
    actor: Actor,
    *,
    alert_id: int,
    note: str = "",
    now: datetime | None = None,
    settings: Settings | None = None,
) -> ActionResult:
    """open → acknowledged (stops re-paging); the thread and its root show who has it."""
    authorize(actor, Action.ACKNOWLEDGE_ALERT)
    moment = now or utcnow()

    def decide(alert: sa.Row[Any]) -> _Transition:
        changed = alert.status == "open"
        values = (
            {"status": "acknowledged", "acknowledged_at": moment, "acknowledged_by": str(actor)}
            if changed
            else {}
        )
        detail = {"changed": changed, "from": alert.status, "note": note.strip()}
        return _Transition(values, detail, sync=changed)

    alert, digest, _ = _alert_transition(
        engine, actor, Action.ACKNOWLEDGE_ALERT, alert_id=alert_id, decide=decide, now=moment,
        settings=settings,
    )  # fmt: skip
    changed = alert.status == "open"
    message = (
        f"alert #{alert_id} acknowledged" if changed else f"alert #{alert_id} is {alert.status}"
    )
    return ActionResult(changed, message, digest)


def resolve_alert(
    engine: Engine,
    actor: Actor,
    *,
    alert_id: int,
    note: str,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> ActionResult:
    """open/acknowledged → resolved by a person, with a note saying why."""
    authorize(actor, Action.RESOLVE_ALERT)
    note = _clean(note, "a resolution note", 3)
    moment = now or utcnow()

    def decide(alert: sa.Row[Any]) -> _Transition:
        changed = alert.status != "resolved"
        values = {"status": "resolved", "resolved_at": moment} if changed else {}
        detail = {"changed": changed, "from": alert.status, "note": note}
        return _Transition(values, detail, sync=changed)

    alert, digest, _ = _alert_transition(
        engine, actor, Action.RESOLVE_ALERT, alert_id=alert_id, decide=decide, now=moment,
        settings=settings,
    )  # fmt: skip
    changed = alert.status != "resolved"
    message = (
        f"alert #{alert_id} resolved" if changed else f"alert #{alert_id} was already resolved"
    )
    return ActionResult(changed, message, digest)


def escalate_alert(
    engine: Engine,
    actor: Actor,
    *,
    alert_id: int,
    note: str,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> ActionResult:
    """Raise a ticket to a page, and call in the escalation group on the alert's thread."""
    authorize(actor, Action.ESCALATE_ALERT)
    note = _clean(note, "an escalation note", 3)

    def decide(alert: sa.Row[Any]) -> _Transition:
        if alert.status == "resolved":
            raise ValueError(f"alert #{alert_id} is resolved; open an incident instead")
        values = {"severity": "page"} if alert.severity != "page" else {}
        detail = {"changed": True, "severity_was": alert.severity, "note": note}
        return _Transition(values, detail, sync=True)

    def call_in(conn: Connection, digest: str, settings: Settings, now: datetime) -> tuple[str]:
        key = f"alert:{alert_id}:escalated:{digest[:16]}"
        view = paging.load_alert_view(conn, alert_id)
        assert view is not None
        paging.enqueue_reply(
            conn,
            alert_id=alert_id,
            key=key,
            event="escalated",
            text=paging.event_text(
                view,
                "escalated",
                mention=settings.slack_escalation_mention,
                actor=str(actor),
                note=note,
            ),
            settings=settings,
            now=now,
            broadcast=True,
        )
        return (key,)

    _, digest, keys = _alert_transition(
        engine, actor, Action.ESCALATE_ALERT, alert_id=alert_id, decide=decide, then=call_in,
        now=now, settings=settings,
    )  # fmt: skip
    return ActionResult(True, f"alert #{alert_id} escalated", digest, page_keys=keys)


def page_now(
    engine: Engine,
    actor: Actor,
    *,
    alert_id: int,
    note: str,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> ActionResult:
    """Page the on-call now about an alert: a fresh message at the top of the page channel."""
    authorize(actor, Action.PAGE_NOW)
    note = _clean(note, "a note for the page", 3)

    def page(conn: Connection, digest: str, settings: Settings, now: datetime) -> tuple[str]:
        key = f"alert:{alert_id}:page-now:{digest[:16]}"
        paging.enqueue_top_level(
            conn,
            alert_id=alert_id,
            key=key,
            event="page-now",
            channel=settings.slack_page_channel,
            settings=settings,
            now=now,
            headline=f"{settings.slack_page_mention} Paged now by {actor}: {note}",
        )
        return (key,)

    _, digest, keys = _alert_transition(
        engine, actor, Action.PAGE_NOW, alert_id=alert_id, then=page, now=now, settings=settings,
        decide=lambda _alert: _Transition({}, {"changed": True, "note": note}, sync=False),
    )  # fmt: skip
    return ActionResult(True, f"page for alert #{alert_id} queued", digest, page_keys=keys)


def retry_page(
    engine: Engine, actor: Actor, *, outbox_id: int, now: datetime | None = None
) -> ActionResult:
    """Put an undeliverable page back in the queue (it is looked up in Slack before re-posting)."""
    authorize(actor, Action.RETRY_PAGE)
    now = now or utcnow()
    with engine.begin() as conn:
        audit.lock_chain(conn)
        row = conn.execute(sa.select(PO).where(PO.c.id == outbox_id)).first()
        if row is None:
            raise LookupError(f"no page #{outbox_id}")
        changed = row.status == "failed"
        if changed:
            conn.execute(
                sa.update(PO)
                .where(PO.c.id == outbox_id)
                .values(
                    status="pending",
                    attempts=0,
                    next_attempt_at=now,
                    last_error=f"retry requested after: {row.last_error or 'failure'}",
                )
            )
        digest = audit.append(
            conn,
            actor=actor.name,
            role=actor.role.value,
            action=Action.RETRY_PAGE.value,
            target=f"page:{row.dedup_key}",
            detail={"changed": changed, "from": row.status},
            at=now,
        )
    return ActionResult(
        changed, f"page {row.dedup_key} queued again" if changed else "not failed", digest
    )


def check_threshold(value: float) -> float:
    """An alert threshold is a risk strictly between 0 and 1 (0 or 1 would alert on every
    score or on none)."""
    threshold = float(value)
    if not math.isfinite(threshold) or not 0.0 < threshold < 1.0:
        raise ValueError(f"an alert threshold must be between 0 and 1 (exclusive), not {value!r}")
    return threshold


def _deployment(
    conn: Connection, *, model: str, site: str, version: str | None, arm: str, unit: str
) -> sa.Row[Any]:
    """The one deployment named (read under the caller's chain lock); LookupError when there
    is none, ValueError when several versions match and none was named."""
    scope = resolve_scope(conn, model=model, site=site, version=version)
    query = (
        sa.select(D.c.id, D.c.alert_threshold, V.c.version)
        .join(V, V.c.id == D.c.version_id)
        .where(
            D.c.model_id == scope.model_id,
            D.c.site_id == scope.site_id,
            D.c.arm == arm,
            D.c.unit == unit,
        )
    )
    if version is not None:
        query = query.where(D.c.version_id == scope.version_id)
    rows: list[sa.Row[Any]] = list(conn.execute(query.order_by(V.c.version)))
    where = f"{model}{f' {version}' if version else ''} at {site}{f' unit {unit}' if unit else ''}"
    if not rows:
        raise LookupError(f"{where} has no {arm} deployment")
    if len(rows) > 1:
        versions = ", ".join(str(r.version) for r in rows)
        raise ValueError(f"{where} runs several {arm} versions ({versions}): name one")
    return rows[0]


def set_alert_threshold(
    engine: Engine,
    actor: Actor,
    *,
    model: str,
    site: str,
    threshold: float,
    reason: str,
    version: str | None = None,
    arm: str = "control",
    unit: str = "",
    now: datetime | None = None,
) -> ActionResult:
    """Change a deployment's alert threshold (the risk at or above which a score alerts).

    Clinical leads and admins only. The old and new values and the reason are audited; setting
    the value it already has changes nothing (the attempt is still audited).
    """
    authorize(actor, Action.EDIT_THRESHOLDS)
    threshold = check_threshold(threshold)
    reason = _clean(reason, "a reason", MIN_REASON)
    now = now or utcnow()
    with engine.begin() as conn:
        audit.lock_chain(conn)  # first: concurrent edits run one after the other
        row = _deployment(conn, model=model, site=site, version=version, arm=arm, unit=unit)
        old = float(row.alert_threshold)
        changed = old != threshold
        if changed:
            conn.execute(sa.update(D).where(D.c.id == row.id).values(alert_threshold=threshold))
        target = f"threshold:{model}@{site}#{row.version}/{arm}" + (f"/{unit}" if unit else "")
        digest = audit.append(
            conn,
            actor=actor.name,
            role=actor.role.value,
            action=Action.EDIT_THRESHOLDS.value,
            target=target,
            detail={"changed": changed, "from": old, "to": threshold, "reason": reason},
            at=now,
        )
    where = f"{model} {row.version} at {site} ({arm}{f', unit {unit}' if unit else ''})"
    message = (
        f"{where}: alert threshold {old:g} → {threshold:g}"
        if changed
        else f"{where}: alert threshold is already {old:g}; nothing changed (audited)"
    )
    logger.info("%s by %s", message, actor)
    return ActionResult(changed, message, digest)
