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
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from incidents import audit, paging
from incidents.auth import Action, Actor, authorize
from incidents.killswitch import Scope, resolve_scope, set_switch
from store.models import Alert, Incident, PageOutbox, table_of, utcnow
from vigil.config import Settings, get_settings

logger = logging.getLogger(__name__)

A = table_of(Alert)
INC = table_of(Incident)
PO = table_of(PageOutbox)
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
    settings = settings or get_settings()
    now = now or utcnow()
    with engine.begin() as conn:
        audit.lock_chain(conn)
        alert = _alert(conn, alert_id)
        changed = alert.status == "open"
        if changed:
            conn.execute(
                sa.update(A)
                .where(A.c.id == alert_id)
                .values(status="acknowledged", acknowledged_at=now, acknowledged_by=str(actor))
            )
        digest = audit.append(
            conn,
            actor=actor.name,
            role=actor.role.value,
            action=Action.ACKNOWLEDGE_ALERT.value,
            target=f"alert:{alert_id}",
            detail={"changed": changed, "from": alert.status, "note": note.strip()},
            at=now,
        )
        if changed:
            paging.sync_alert(conn, alert_id, settings=settings, now=now)
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
    settings = settings or get_settings()
    now = now or utcnow()
    with engine.begin() as conn:
        audit.lock_chain(conn)
        alert = _alert(conn, alert_id)
        changed = alert.status != "resolved"
        if changed:
            conn.execute(
                sa.update(A).where(A.c.id == alert_id).values(status="resolved", resolved_at=now)
            )
        digest = audit.append(
            conn,
            actor=actor.name,
            role=actor.role.value,
            action=Action.RESOLVE_ALERT.value,
            target=f"alert:{alert_id}",
            detail={"changed": changed, "from": alert.status, "note": note},
            at=now,
        )
        if changed:
            paging.sync_alert(conn, alert_id, settings=settings, now=now)
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
    settings = settings or get_settings()
    now = now or utcnow()
    with engine.begin() as conn:
        audit.lock_chain(conn)
        alert = _alert(conn, alert_id)
        if alert.status == "resolved":
            raise ValueError(f"alert #{alert_id} is resolved; open an incident instead")
        if alert.severity != "page":
            conn.execute(sa.update(A).where(A.c.id == alert_id).values(severity="page"))
        digest = audit.append(
            conn,
            actor=actor.name,
            role=actor.role.value,
            action=Action.ESCALATE_ALERT.value,
            target=f"alert:{alert_id}",
            detail={"changed": True, "severity_was": alert.severity, "note": note},
            at=now,
        )
        paging.sync_alert(conn, alert_id, settings=settings, now=now)
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
    return ActionResult(True, f"alert #{alert_id} escalated", digest, page_keys=(key,))


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
    settings = settings or get_settings()
    now = now or utcnow()
    with engine.begin() as conn:
        audit.lock_chain(conn)
        _alert(conn, alert_id)
        digest = audit.append(
            conn,
            actor=actor.name,
            role=actor.role.value,
            action=Action.PAGE_NOW.value,
            target=f"alert:{alert_id}",
            detail={"changed": True, "note": note},
            at=now,
        )
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
    return ActionResult(True, f"page for alert #{alert_id} queued", digest, page_keys=(key,))


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
