"""Slack paging: pure Block Kit builders, and an outbox that delivers every page exactly once.

Flow. `sync_pages` derives page events from the Alert rows themselves (opened, paged,
acknowledged, resolved, re-page), whoever changed them, and inserts each into `pageoutbox`
under a dedup key such as ``alert:12:acknowledged``; the unique key makes enqueueing
exactly-once. Human actions enqueue their own events in the same transaction as their audit
event (`incidents.actions`). `deliver_pending` sends the due entries with the real slack_sdk
WebClient: an alert's first message is the thread root (page or ticket channel by severity);
later events are replies in that thread, each followed by `chat.update` of the root so it
shows the alert's current state. A monitor that flaps (a new alert with the same dedup key
soon after the last resolved) continues the old thread instead of paging again.

Exactly once. Every post carries its outbox key in Slack message metadata. An attempt first
claims the entry (attempts + 1, a lease), posts, and records the message's ts at once. A
failure whose outcome is unknown (timeout, 5xx, a crash before the ts was recorded) is
retried later — and every retry first looks the key up in the channel (or thread) history,
so a message Slack did post is recorded, not posted twice. Inside one attempt slack_sdk's
handlers retry 429s (Retry-After up to a bound; longer waits go back to the outbox) and
server or connection errors of idempotent methods only; `chat.postMessage` is never retried
blind. The outbox backs off exponentially (bounded) and honours Retry-After; a page that
cannot be delivered (permanent Slack error, or attempts exhausted) becomes `failed` and is
shown in the incident console.

No patient data: messages are built from alert, metric and registry fields only (model,
site, metric, threshold, window, summary); free text is scrubbed of anything shaped like an
encounter key.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlparse

import sqlalchemy as sa
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from incidents.runbooks import runbook_title, runbook_url
from store.db import make_engine
from store.models import (
    Alert,
    AuditEvent,
    MetricPoint,
    Model,
    PageOutbox,
    Site,
    table_of,
    utcnow,
)
from vigil.config import Settings, get_settings

logger = logging.getLogger(__name__)

A = table_of(Alert)
AE = table_of(AuditEvent)
MP = table_of(MetricPoint)
M = table_of(Model)
S = table_of(Site)
PO = table_of(PageOutbox)

PAGE_EVENT_TYPE = "vigil_page"  # Slack message metadata type carrying the outbox key
# Slack errors that no retry can fix: the page is marked failed and shown in the console.
PERMANENT_ERRORS = frozenset(
    {
        "account_inactive",
        "channel_not_found",
        "invalid_arguments",
        "invalid_auth",
        "invalid_blocks",
        "is_archived",
        "missing_scope",
        "msg_too_long",
        "no_permission",
        "no_text",
        "not_authed",
        "not_in_channel",
        "restricted_action",
        "token_revoked",
    }
)
IDEMPOTENT_METHODS = frozenset(
    {"chat.update", "conversations.history", "conversations.replies", "auth.test"}
)
BACKOFF_BASE_SECONDS = 5
CLOCK_SKEW_SECONDS = 3600  # history lookups start this long before the page was queued
_KEY_LIKE = re.compile(r"\b[0-9a-fA-F]{40,}\b")
Message = dict[str, Any]  # {"text": fallback, "blocks": Block Kit blocks}


# ---------------------------------------------------------------- what a page shows


@dataclass(frozen=True)
class AlertView:
    """Everything a page shows about one alert; nothing patient-level by construction."""

    id: int
    dedup_key: str
    monitor: str
    model: str
    model_title: str
    site: str  # site code, or "all sites"
    site_name: str
    arm: str
    severity: str
    status: str
    summary: str
    runbook: str
    runbook_title: str
    opened_at: datetime
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None  # None: the monitor recovered
    escalated_by: str | None = None
    metric: str | None = None
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    threshold: str = ""
    window_start: datetime | None = None
    window_end: datetime | None = None


@dataclass(frozen=True)
class Links:
    runbook: str
    dashboard: str


def links_for(view: AlertView, settings: Settings) -> Links:
    query = {"model": view.model, "alert": view.id}
    if view.site != "all sites":
        query["site"] = view.site
    return Links(
        runbook=runbook_url(
            view.runbook,
            dashboard_url=settings.dashboard_url,
            template=settings.runbook_url_template,
        ),
        dashboard=f"{settings.dashboard_url.rstrip('/')}/incidents?{urlencode(query)}",
    )


def scrub(text: str) -> str:
    """Free text for Slack: anything shaped like an encounter key (long hex) is removed."""
    return _KEY_LIKE.sub("[redacted]", text)


def _esc(text: str) -> str:
    """Escape Slack mrkdwn control characters."""
    return scrub(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# A Slack mention Vigil itself puts at the start of a re-page or escalation (settings).
_LEADING_MENTION = re.compile(r"^<!(?:here|channel|everyone|subteam\^[A-Z0-9]+)>|^<@[A-Z0-9]+>")


def _fallback(text: str) -> str:
    """The notification text: escaped like mrkdwn so free text (reasons, notes, names) can
    never mention, link or format; only a leading mention Vigil placed is kept as is."""
    mention = _LEADING_MENTION.match(text)
    head = mention.group(0) if mention else ""
    return head + _esc(text[len(head) :])


def _clip(text: str, limit: int) -> str:
    """Block Kit refuses long texts (section 3000, field 2000 characters): shorten, visibly."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "—"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def metric_text(view: AlertView) -> str:
    if view.metric is None:
        return "no metric recorded"
    text = f"{view.metric} = {_num(view.value)}"
    if view.ci_low is not None and view.ci_high is not None:
        text += f" (95% CI {_num(view.ci_low)}–{_num(view.ci_high)})"
    return text


def window_text(view: AlertView) -> str:
    if view.window_start is None or view.window_end is None:
        return "—"
    return f"{_when(view.window_start)} → {_when(view.window_end)}"


def status_text(view: AlertView) -> str:
    if view.status == "resolved":
        by = f"by {view.resolved_by}" if view.resolved_by else "automatically (monitor recovered)"
        return f"resolved {by} at {_when(view.resolved_at)}"
    text = "open"
    if view.status == "acknowledged":
        text = f"acknowledged by {view.acknowledged_by or '?'} at {_when(view.acknowledged_at)}"
    if view.escalated_by:
        text += f"; escalated by {view.escalated_by}"
    return text


def _where(view: AlertView) -> str:
    return f"{view.model} at {view.site}"


# ---------------------------------------------------------------- pure message builders


def build_alert_message(view: AlertView, links: Links, *, headline: str | None = None) -> Message:
    """The thread's root message: the whole alert, in its current state."""
    severity = view.severity.upper()
    icon = {"page": ":rotating_light:", "ticket": ":ticket:"}.get(view.severity, ":bell:")
    if view.status == "resolved":
        icon, severity = ":white_check_mark:", f"RESOLVED {severity}"
    title = f"{icon} {severity} · {view.runbook_title} · {_where(view)}"
    status = status_text(view)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
    ]
    if headline:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(_esc(headline), 2900)}}
        )
    blocks += [
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(_esc(view.summary), 2900)}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Severity*\n{_esc(view.severity)}"},
                {"type": "mrkdwn", "text": f"*Status*\n{_esc(status)}"},
                {"type": "mrkdwn", "text": f"*Model*\n{_esc(view.model_title)} (`{view.model}`)"},
                {"type": "mrkdwn", "text": f"*Site*\n{_esc(view.site_name)} ({view.site})"},
                {"type": "mrkdwn", "text": f"*Metric*\n{_esc(metric_text(view))}"},
                {"type": "mrkdwn", "text": f"*Threshold*\n{_esc(view.threshold or '—')}"},
                {"type": "mrkdwn", "text": f"*Window*\n{window_text(view)}"},
                {"type": "mrkdwn", "text": f"*Opened*\n{_when(view.opened_at)}"},
            ],
        },
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "Open runbook"},
                    "url": links.runbook,
                    "action_id": "vigil_runbook",
                },
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "Open in Vigil"},
                    "url": links.dashboard,
                    "action_id": "vigil_dashboard",
                    "style": "primary",
                },
            ],
        },
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"Vigil alert #{view.id} · {_esc(view.monitor)} · "
                    f"dedup key `{_esc(view.dedup_key)}`",
                }
            ],
        },
    ]
    text = (
        f"[{severity}] {view.runbook_title}: {_where(view)} — {metric_text(view)}; "
        f"threshold: {view.threshold or '—'}; window {window_text(view)}. Status: {status}. "
        f"Runbook: {links.runbook} · Dashboard: {links.dashboard}"
    )
    if headline:
        text = f"{headline} {text}"
    return {"text": scrub(text), "blocks": blocks}


def build_reply(view: AlertView, text: str, links: Links) -> Message:
    """A threaded update about the alert (self-contained, in case it must stand alone)."""
    line = f"{text} — {view.runbook_title}, {_where(view)} (alert #{view.id})"
    return {
        "text": _fallback(line),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(_esc(line), 2900)}},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"<{links.runbook}|Runbook> · <{links.dashboard}|Open in Vigil>",
                    }
                ],
            },
        ],
    }


def event_text(view: AlertView, event: str, **info: Any) -> str:
    """The sentence a thread reply says for one lifecycle event."""
    if event == "acknowledged":
        return f":eyes: Acknowledged by {view.acknowledged_by or '?'}"
    if event == "resolved":
        if view.resolved_by:
            note = f": {info['note']}" if info.get("note") else ""
            return f":white_check_mark: Resolved by {view.resolved_by}{note}"
        return ":white_check_mark: Resolved automatically: the monitor recovered"
    if event == "reopened":
        return (
            ":repeat: Re-opened: the monitor breached again soon after recovering "
            f"(within {info['window_minutes']} min); same thread, not paged again. "
            f"{view.summary}"
        )
    if event == "repage":
        return (
            f"{info['mention']} :rotating_light: Still not acknowledged "
            f"{info['minutes']} min after the page (re-page {info['n']} of {info['max']})"
        )
    if event == "escalated":
        note = f": {info['note']}" if info.get("note") else ""
        return f"{info['mention']} :arrow_double_up: Escalated by {info['actor']}{note}"
    raise ValueError(f"unknown page event {event!r}")


def build_killswitch_message(
    *,
    enabled: bool,
    scope_text: str,
    actor: str,
    reason: str,
    incident: str,
    dashboard: str,
    ttl_seconds: int,
) -> Message:
    """A notice in the page channel that a score was switched off or on."""
    if enabled:
        title = f":arrow_forward: Score re-enabled · {scope_text}"
    else:
        title = f":no_entry: Score disabled · {scope_text}"
    effect = (
        "Clinicians see the score again"
        if enabled
        else "Clinicians no longer see the score; consumers report it suppressed"
    )
    effect += f" within {ttl_seconds} s (the consumer cache)."
    return {
        "text": _fallback(f"{title} by {actor}. Reason: {reason}. Incident: {incident}. {effect}"),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*By*\n{_esc(actor)}"},
                    {"type": "mrkdwn", "text": f"*Incident*\n{_esc(incident)}"},
                    {"type": "mrkdwn", "text": _clip(f"*Reason*\n{_esc(reason)}", 1900)},
                ],
            },
            {"type": "context", "elements": [{"type": "mrkdwn", "text": _esc(effect)}]},
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in Vigil"},
                        "url": dashboard,
                        "action_id": "vigil_dashboard",
                    }
                ],
            },
        ],
    }


# ---------------------------------------------------------------- reading alerts


def _audit_actor(conn: Connection, alert_id: int, action: str) -> tuple[str, str] | None:
    row = conn.execute(
        sa.select(AE.c.actor, AE.c.role, AE.c.detail)
        .where(AE.c.target == f"alert:{alert_id}", AE.c.action == action)
        .order_by(AE.c.id.desc())
        .limit(1)
    ).first()
    if row is None or not (row.detail or {}).get("changed", True):
        return None
    return f"{row.actor} ({row.role})", str((row.detail or {}).get("note") or "")


def load_alert_view(conn: Connection, alert_id: int) -> AlertView | None:
    """The alert with its model, site, latest metric point and who acted on it."""
    row = conn.execute(
        sa.select(A, M.c.name.label("model"), M.c.title.label("model_title"), S.c.code, S.c.name)
        .join(M, M.c.id == A.c.model_id)
        .outerjoin(S, S.c.id == A.c.site_id)
        .where(A.c.id == alert_id)
    ).first()
    if row is None:
        return None
    point = conn.execute(
        sa.select(MP)
        .where(
            MP.c.monitor == row.monitor,
            MP.c.model_id == row.model_id,
            MP.c.site_id == row.site_id,
            MP.c.arm == row.arm,
        )
        .order_by(MP.c.window_end.desc(), MP.c.version_id, MP.c.id.desc())
        .limit(1)
    ).first()
    resolved = _audit_actor(conn, alert_id, "resolve_alert") if row.status == "resolved" else None
    escalated = _audit_actor(conn, alert_id, "escalate_alert")
    return AlertView(
        id=row.id,
        dedup_key=row.dedup_key,
        monitor=row.monitor,
        model=row.model,
        model_title=row.model_title,
        site=row.code or "all sites",
        site_name=row.name or "every site",
        arm=row.arm,
        severity=row.severity,
        status=row.status,
        summary=row.summary,
        runbook=row.runbook,
        runbook_title=runbook_title(row.runbook),
        opened_at=row.opened_at,
        acknowledged_at=row.acknowledged_at,
        acknowledged_by=row.acknowledged_by,
        resolved_at=row.resolved_at,
        resolved_by=resolved[0] if resolved else None,
        escalated_by=escalated[0] if escalated else None,
        metric=point.metric if point is not None else None,
        value=point.value if point is not None else None,
        ci_low=point.ci_low if point is not None else None,
        ci_high=point.ci_high if point is not None else None,
        threshold=point.threshold if point is not None else "",
        window_start=point.window_start if point is not None else None,
        window_end=point.window_end if point is not None else None,
    )


# ---------------------------------------------------------------- the outbox


def enqueue(
    conn: Connection,
    *,
    key: str,
    channel: str,
    message: Message,
    event: str,
    now: datetime,
    alert_id: int | None = None,
    root: str | None = None,
    broadcast: bool = False,
    update_root: bool = False,
    severity: str | None = None,
    headline: str | None = None,
) -> bool:
    """Insert one page under its dedup key unless it is already there; True if inserted."""
    values = {
        "dedup_key": key,
        "alert_id": alert_id,
        "channel": channel,
        "payload": {
            "event": event,
            "alert_id": alert_id,
            "root": root,
            "broadcast": broadcast,
            "update_root": update_root,
            "severity": severity,
            "headline": headline,
            "message": message,
        },
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
    if conn.dialect.name == "postgresql":
        stmt: Any = postgresql.insert(PO).values(**values)
    elif conn.dialect.name == "sqlite":
        stmt = sqlite.insert(PO).values(**values)
    else:  # pragma: no cover - Vigil runs on SQLite and PostgreSQL
        raise NotImplementedError(conn.dialect.name)
    inserted = conn.execute(stmt.on_conflict_do_nothing(index_elements=["dedup_key"])).rowcount
    if inserted:
        logger.info("page queued: %s (%s)", key, event)
    return bool(inserted)


def _entry(conn: Connection, key: str) -> sa.Row[Any] | None:
    return conn.execute(sa.select(PO).where(PO.c.dedup_key == key)).first()


def current_root(conn: Connection, alert_id: int) -> sa.Row[Any] | None:
    """The outbox entry whose message is the alert's thread root (None: not queued yet)."""
    paged = _entry(conn, f"alert:{alert_id}:paged")
    if paged is not None:
        return paged
    opened = _entry(conn, f"alert:{alert_id}:opened")
    if opened is None:
        return None
    root_key = opened.payload.get("root")
    return _entry(conn, root_key) if root_key else opened


def _channel_for(severity: str, settings: Settings) -> str:
    return settings.slack_page_channel if severity == "page" else settings.slack_ticket_channel


def enqueue_reply(
    conn: Connection,
    *,
    alert_id: int,
    key: str,
    event: str,
    text: str,
    settings: Settings,
    now: datetime,
    broadcast: bool = False,
    update_root: bool = True,
) -> bool:
    """Queue a threaded reply for an alert (in its current thread)."""
    view = load_alert_view(conn, alert_id)
    if view is None:
        raise LookupError(f"no alert #{alert_id}")
    root = current_root(conn, alert_id)
    channel = root.channel if root is not None else _channel_for(view.severity, settings)
    return enqueue(
        conn,
        key=key,
        channel=channel,
        message=build_reply(view, text, links_for(view, settings)),
        event=event,
        now=now,
        alert_id=alert_id,
        root=root.dedup_key if root is not None else None,
        broadcast=broadcast,
        update_root=update_root and root is not None,
    )


def enqueue_top_level(
    conn: Connection,
    *,
    alert_id: int,
    key: str,
    event: str,
    channel: str,
    settings: Settings,
    now: datetime,
    headline: str | None = None,
) -> bool:
    """Queue a whole-alert message at the top of a channel (a page or a new thread root)."""
    view = load_alert_view(conn, alert_id)
    if view is None:
        raise LookupError(f"no alert #{alert_id}")
    return enqueue(
        conn,
        key=key,
        channel=channel,
        message=build_alert_message(view, links_for(view, settings), headline=headline),
        event=event,
        now=now,
        alert_id=alert_id,
        severity=view.severity,
        headline=headline,
    )


def _sync_alert(conn: Connection, alert: sa.Row[Any], settings: Settings, now: datetime) -> int:
    queued = 0
    aid = alert.id
    if _entry(conn, f"alert:{aid}:opened") is None:
        flap_root = None
        previous = conn.execute(
            sa.select(A.c.id)
            .where(
                A.c.dedup_key == alert.dedup_key,
                A.c.id < aid,
                A.c.resolved_at.is_not(None),
                A.c.resolved_at
                >= alert.opened_at - timedelta(minutes=settings.page_flap_window_minutes),
            )
            .order_by(A.c.id.desc())
            .limit(1)
        ).first()
        if previous is not None:
            flap_root = current_root(conn, previous.id)
        if flap_root is not None:
            view = load_alert_view(conn, aid)
            assert view is not None
            queued += enqueue(
                conn,
                key=f"alert:{aid}:opened",
                channel=flap_root.channel,
                message=build_reply(
                    view,
                    event_text(view, "reopened", window_minutes=settings.page_flap_window_minutes),
                    links_for(view, settings),
                ),
                event="reopened",
                now=now,
                alert_id=aid,
                root=flap_root.dedup_key,
                update_root=True,
            )
        else:
            queued += enqueue_top_level(
                conn,
                alert_id=aid,
                key=f"alert:{aid}:opened",
                event="opened",
                channel=_channel_for(alert.severity, settings),
                settings=settings,
                now=now,
            )
    root = current_root(conn, aid)
    assert root is not None
    if (
        alert.severity == "page"
        and alert.status != "resolved"
        and root.payload.get("severity") == "ticket"
    ):
        queued += enqueue_top_level(
            conn,
            alert_id=aid,
            key=f"alert:{aid}:paged",
            event="paged",
            channel=settings.slack_page_channel,
            settings=settings,
            now=now,
            headline="Escalated from ticket to page.",
        )
        root = current_root(conn, aid)
        assert root is not None
    if alert.acknowledged_at is not None and _entry(conn, f"alert:{aid}:acknowledged") is None:
        view = load_alert_view(conn, aid)
        assert view is not None
        queued += enqueue_reply(
            conn,
            alert_id=aid,
            key=f"alert:{aid}:acknowledged",
            event="acknowledged",
            text=event_text(view, "acknowledged"),
            settings=settings,
            now=now,
        )
    if alert.status == "resolved" and _entry(conn, f"alert:{aid}:resolved") is None:
        view = load_alert_view(conn, aid)
        assert view is not None
        resolved = _audit_actor(conn, aid, "resolve_alert")
        queued += enqueue_reply(
            conn,
            alert_id=aid,
            key=f"alert:{aid}:resolved",
            event="resolved",
            text=event_text(view, "resolved", note=resolved[1] if resolved else ""),
            settings=settings,
            now=now,
        )
    if (
        alert.status == "open"
        and alert.severity == "page"
        and root.status == "sent"
        and root.sent_at is not None
        and settings.page_repage_minutes > 0
    ):
        since = max(root.sent_at, alert.opened_at)
        elapsed_minutes = (now - since).total_seconds() / 60
        n = min(
            settings.page_max_repages, math.floor(elapsed_minutes / settings.page_repage_minutes)
        )
        if n >= 1 and _entry(conn, f"alert:{aid}:repage:{n}") is None:
            view = load_alert_view(conn, aid)
            assert view is not None
            queued += enqueue_reply(
                conn,
                alert_id=aid,
                key=f"alert:{aid}:repage:{n}",
                event="repage",
                text=event_text(
                    view,
                    "repage",
                    mention=settings.slack_page_mention,
                    minutes=n * settings.page_repage_minutes,
                    n=n,
                    max=settings.page_max_repages,
                ),
                settings=settings,
                now=now,
                broadcast=True,
                update_root=False,
            )
    return queued


def sync_alert(conn: Connection, alert_id: int, *, settings: Settings, now: datetime) -> int:
    """Queue the page events one alert calls for, inside the caller's transaction."""
    alert = conn.execute(sa.select(A).where(A.c.id == alert_id)).first()
    return _sync_alert(conn, alert, settings, now) if alert is not None else 0


def sync_pages(
    engine: Engine, *, settings: Settings | None = None, now: datetime | None = None
) -> int:
    """Queue the page events the Alert rows call for; returns how many were queued.

    Idempotent: run it as often as you like, from any process; each event is queued once.
    """
    settings = settings or get_settings()
    now = now or utcnow()
    lookback = now - timedelta(hours=settings.page_lookback_hours)
    with engine.connect() as conn:
        alerts = conn.execute(
            sa.select(A)
            .where(sa.or_(A.c.status != "resolved", A.c.resolved_at >= lookback))
            .order_by(A.c.id)
        ).all()
    queued = 0
    for alert in alerts:
        with engine.begin() as conn:
            queued += _sync_alert(conn, alert, settings, now)
    return queued


# ---------------------------------------------------------------- delivery


def _retry_after(headers: dict[str, Any]) -> float | None:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            try:
                return float(raw)
            except (TypeError, ValueError):
                return None
    return None


def _method(request: HttpRequest) -> str:
    return urlparse(request.url).path.rsplit("/", 1)[-1]


class BoundedRateLimitRetryHandler(RateLimitErrorRetryHandler):
    """slack_sdk's 429 handler; a Retry-After longer than `max_wait` goes back to the outbox."""

    def __init__(self, *, max_retry_count: int = 2, max_wait: float = 5.0) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        assert response is not None
        wait = _retry_after(response.headers)
        return wait is not None and wait <= self.max_wait


class IdempotentServerErrorRetryHandler(ServerErrorRetryHandler):
    """slack_sdk's 5xx handler for methods safe to repeat; a post is never retried blind."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return _method(request) in IDEMPOTENT_METHODS and super()._can_retry(
            state=state, request=request, response=response, error=error
        )


class IdempotentConnectionErrorRetryHandler(ConnectionErrorRetryHandler):
    """slack_sdk's connection-error handler, for methods safe to repeat only."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return _method(request) in IDEMPOTENT_METHODS and super()._can_retry(
            state=state, request=request, response=response, error=error
        )


def slack_client(settings: Settings | None = None) -> WebClient:
    """The real slack_sdk WebClient with Vigil's bounded retry handlers."""
    settings = settings or get_settings()
    backoff = BackoffRetryIntervalCalculator(backoff_factor=0.2)
    return WebClient(
        token=settings.slack_bot_token,
        base_url=settings.slack_base_url,
        timeout=math.ceil(settings.slack_timeout_seconds),
        retry_handlers=[
            BoundedRateLimitRetryHandler(
                max_retry_count=2, max_wait=settings.slack_inline_retry_max_seconds
            ),
            IdempotentServerErrorRetryHandler(max_retry_count=2, interval_calculator=backoff),
            IdempotentConnectionErrorRetryHandler(max_retry_count=1, interval_calculator=backoff),
        ],
    )


@dataclass
class DeliveryReport:
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    waiting: int = 0  # replies whose thread root is not posted yet

    def __str__(self) -> str:
        return (
            f"{self.sent} sent, {self.retrying} to retry, {self.failed} failed, "
            f"{self.waiting} waiting for their thread"
        )


def _classify(exc: Exception) -> tuple[bool, float | None, str]:
    """(permanent?, Retry-After seconds, a short description without payload contents)."""
    if isinstance(exc, SlackApiError):
        response = exc.response
        error = response.get("error") if isinstance(response.data, dict) else None
        retry_after = _retry_after(dict(response.headers or {}))
        detail = f"Slack {response.status_code}: {error or 'error'}"
        if retry_after is not None:
            detail += f" (Retry-After {retry_after:g} s)"
        return (error in PERMANENT_ERRORS, retry_after, detail)
    return (False, None, f"{type(exc).__name__}: {str(exc)[:200]}")


def backoff_seconds(attempt: int, settings: Settings) -> float:
    """Exponential backoff after the n-th failed attempt, capped."""
    return float(
        min(settings.page_backoff_max_seconds, BACKOFF_BASE_SECONDS * 2 ** max(0, attempt - 1))
    )


def _find_posted(
    client: WebClient, *, channel: str, key: str, thread_ts: str | None, oldest: datetime
) -> str | None:
    """The ts of a message already posted under `key` (a previous attempt's), if any."""
    cursor: str | None = None
    for _ in range(10):
        if thread_ts:
            response = client.conversations_replies(
                channel=channel, ts=thread_ts, include_all_metadata=True, limit=200, cursor=cursor
            )
        else:
            response = client.conversations_history(
                channel=channel,
                oldest=f"{oldest.timestamp() - CLOCK_SKEW_SECONDS:.6f}",
                include_all_metadata=True,
                limit=200,
                cursor=cursor,
            )
        for message in response.get("messages") or []:
            metadata = message.get("metadata") or {}
            payload = metadata.get("event_payload") or {}
            if metadata.get("event_type") == PAGE_EVENT_TYPE and payload.get("key") == key:
                return str(message["ts"])
        cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
        if not cursor:
            return None
    return None


def _deliver_one(
    engine: Engine, client: WebClient, entry_id: int, settings: Settings, now: datetime
) -> str:
    with engine.connect() as conn:
        entry = conn.execute(sa.select(PO).where(PO.c.id == entry_id)).first()
        if entry is None or entry.status != "pending" or entry.next_attempt_at > now:
            return "skipped"
        payload: dict[str, Any] = entry.payload
        root = None
        if payload.get("root") and payload["root"] != entry.dedup_key:
            root = _entry(conn, payload["root"])
            if root is not None and root.status != "failed" and root.slack_ts is None:
                return "waiting"
    lease = now + timedelta(seconds=3 * settings.slack_timeout_seconds + 60)
    with engine.begin() as conn:
        claimed = conn.execute(
            sa.update(PO)
            .where(
                PO.c.id == entry.id,
                PO.c.status == "pending",
                PO.c.attempts == entry.attempts,
                PO.c.next_attempt_at <= now,
            )
            .values(attempts=entry.attempts + 1, next_attempt_at=lease)
        ).rowcount
    if not claimed:
        return "skipped"  # another deliverer has it
    attempt = entry.attempts + 1
    thread_ts = root.slack_ts if root is not None and root.status != "failed" else None
    channel = root.channel if thread_ts and root is not None else entry.channel
    message = payload["message"]
    try:
        ts = entry.slack_ts
        if ts is None:
            if entry.attempts > 0 or entry.last_error:
                ts = _find_posted(
                    client,
                    channel=channel,
                    key=entry.dedup_key,
                    thread_ts=thread_ts,
                    oldest=entry.created_at,
                )
                if ts is not None:
                    logger.info(
                        "page %s was already posted; recorded, not re-sent", entry.dedup_key
                    )
            if ts is None:
                response = client.chat_postMessage(
                    channel=channel,
                    text=message["text"],
                    blocks=message["blocks"],
                    thread_ts=thread_ts,
                    reply_broadcast=bool(payload.get("broadcast")) if thread_ts else None,
                    unfurl_links=False,
                    unfurl_media=False,
                    metadata={
                        "event_type": PAGE_EVENT_TYPE,
                        "event_payload": {"key": entry.dedup_key},
                    },
                )
                ts, channel = str(response["ts"]), str(response.get("channel") or channel)
            with engine.begin() as conn:
                conn.execute(
                    sa.update(PO).where(PO.c.id == entry.id).values(slack_ts=ts, channel=channel)
                )
        if payload.get("update_root") and thread_ts and root is not None and entry.alert_id:
            with engine.connect() as conn:
                view = load_alert_view(conn, entry.alert_id)
            if view is not None:
                current = build_alert_message(
                    view, links_for(view, settings), headline=root.payload.get("headline")
                )
                client.chat_update(
                    channel=root.channel,
                    ts=thread_ts,
                    text=current["text"],
                    blocks=current["blocks"],
                )
    except Exception as exc:  # every failure is recorded on the entry, none is lost
        permanent, retry_after, detail = _classify(exc)
        if permanent or attempt >= settings.page_max_attempts:
            values: dict[str, Any] = {"status": "failed", "last_error": detail}
            outcome = "failed"
            logger.error(
                "page %s undeliverable after %d attempts: %s", entry.dedup_key, attempt, detail
            )
        else:
            delay = max(backoff_seconds(attempt, settings), retry_after or 0.0)
            values = {"next_attempt_at": now + timedelta(seconds=delay), "last_error": detail}
            outcome = "retrying"
            logger.warning(
                "page %s attempt %d failed (%s); retry in %.0f s",
                entry.dedup_key,
                attempt,
                detail,
                delay,
            )
        with engine.begin() as conn:
            conn.execute(sa.update(PO).where(PO.c.id == entry.id).values(**values))
        return outcome
    with engine.begin() as conn:
        conn.execute(
            sa.update(PO)
            .where(PO.c.id == entry.id)
            .values(status="sent", sent_at=now, last_error=None, next_attempt_at=now)
        )
    return "sent"


def deliver_pending(
    engine: Engine,
    client: WebClient,
    *,
    settings: Settings | None = None,
    now: datetime | None = None,
    keys: Iterable[str] | None = None,
    limit: int = 200,
) -> DeliveryReport:
    """Send the due pages, oldest first (roots before their replies)."""
    settings = settings or get_settings()
    now = now or utcnow()
    query = (
        sa.select(PO.c.id)
        .where(PO.c.status == "pending", PO.c.next_attempt_at <= now)
        .order_by(PO.c.id)
        .limit(limit)
    )
    if keys is not None:
        query = query.where(PO.c.dedup_key.in_(list(keys)))
    with engine.connect() as conn:
        due = list(conn.execute(query).scalars())
    report = DeliveryReport()
    for entry_id in due:
        outcome = _deliver_one(engine, client, entry_id, settings, now)
        if outcome == "sent":
            report.sent += 1
        elif outcome == "retrying":
            report.retrying += 1
        elif outcome == "failed":
            report.failed += 1
        elif outcome == "waiting":
            report.waiting += 1
    return report


def outbox_entries(
    engine: Engine, *, statuses: Iterable[str] = ("failed",), limit: int = 100
) -> list[dict[str, Any]]:
    """Outbox entries with the given statuses, newest first (no message contents)."""
    query = (
        sa.select(
            PO.c.id,
            PO.c.dedup_key,
            PO.c.alert_id,
            PO.c.channel,
            PO.c.status,
            PO.c.attempts,
            PO.c.last_error,
            PO.c.created_at,
            PO.c.next_attempt_at,
            PO.c.sent_at,
        )
        .where(PO.c.status.in_(list(statuses)))
        .order_by(PO.c.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def outbox_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(PO.c.status, sa.func.count()).group_by(PO.c.status)).all()
    return {str(status): int(count) for status, count in rows}


_engines: dict[str, Engine] = {}
_unsent: dict[str, int] = {}  # pending pages last reported while Slack is unconfigured


def paging_job() -> None:
    """Scheduler job: queue the pages the alerts call for, then deliver what is due."""
    settings = get_settings()
    engine = _engines.get(settings.database_url)
    if engine is None:
        engine = _engines[settings.database_url] = make_engine(settings.database_url)
    queued = sync_pages(engine, settings=settings)
    if not settings.slack_bot_token:
        pending = outbox_counts(engine).get("pending", 0)
        if pending and pending != _unsent.get(settings.database_url):
            # Said when the backlog changes, not every cycle: the demo runs without Slack.
            logger.warning(
                "Slack is not configured (VIGIL_SLACK_BOT_TOKEN): %d page(s) wait in the outbox",
                pending,
            )
        _unsent[settings.database_url] = pending
        return
    report = deliver_pending(engine, slack_client(settings), settings=settings)
    if queued or report.sent or report.retrying or report.failed:
        logger.info("paging: %d queued; %s", queued, report)
