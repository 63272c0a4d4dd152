"""What the Governance page shows, kept in the store: a month's status by model and site, its
episodes, reasons and missing statements, summarised from the full report.

Gathering a month's report reads every rollup of the month twice over (the month and the one
before it) and refits calibration per site: about a second at 10 M predictions. The page reads
the stored summary instead (one row), and gathers again only when the summary is older than
its month's refresh interval — hourly for the current month, which is still filling, daily for
past months, whose labels settle for weeks after they end — or when asked. Any dashboard
replica may refresh it; the row is shared, so one gather serves every replica. The scheduler
refreshes the current and the previous month (all models) every `REFRESH_MINUTES`, well
inside the hour, so the page's default view finds a fresh summary and never gathers itself.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from reports.governance import GovernanceReport, Month, gather_report
from store.models import JobState, table_of, utcnow

KEY_PREFIX = "governance.summary"
ALL_MODELS = "*"
CURRENT_MONTH_MAX_AGE = timedelta(hours=1)
PAST_MONTH_MAX_AGE = timedelta(days=1)
REFRESH_MINUTES = 30

J = table_of(JobState)


def state_key(month: str, model: str | None) -> str:
    return f"{KEY_PREFIX}:{month}:{model or ALL_MODELS}"


def summarise(report: GovernanceReport) -> dict[str, Any]:
    """The page's content of a report, as JSON-ready data (no patient identifiers: the report
    names models, sites and counts only)."""
    models = []
    for m in report.models:
        kinds: dict[str, int] = {}
        for episode in m.episodes:
            kinds[episode.kind] = kinds.get(episode.kind, 0) + 1
        models.append(
            {
                "model": m.model,
                "title": m.title,
                "status": [{"site": s.site, "rag": s.rag, "reasons": s.reasons} for s in m.status],
                "episodes": dict(sorted(kinds.items())),
                "card_missing": m.card_missing,
                "missing": m.missing,
            }
        )
    return {
        "month": report.month.label,
        "title": report.month.title,
        "generated_at": report.generated_at.isoformat(),
        "rag_rules": report.rag_rules,
        "models": models,
    }


def max_age(month: Month, now: datetime) -> timedelta:
    return CURRENT_MONTH_MAX_AGE if month.end > now else PAST_MONTH_MAX_AGE


def is_fresh(summary: dict[str, Any], month: Month, now: datetime) -> bool:
    """Young enough for its month; a summary made before its month ended is never final."""
    made = datetime.fromisoformat(summary["generated_at"])
    if made < month.end <= now:
        return False  # gathered while the month was still running
    return now - made < max_age(month, now)


def load(engine: Engine, month: str, model: str | None) -> dict[str, Any] | None:
    with engine.connect() as conn:
        value = conn.execute(
            sa.select(J.c.value).where(J.c.key == state_key(month, model))
        ).scalar()
    return None if value is None else dict(json.loads(value))


def rebuild(engine: Engine, month: str, model: str | None, *, now: datetime) -> dict[str, Any]:
    """Gather the month's report now and store its summary."""
    summary = summarise(gather_report(engine, Month.parse(month), model=model, now=now))
    key, value = state_key(month, model), json.dumps(summary)
    try:
        with engine.begin() as conn:
            updated = conn.execute(
                sa.update(J).where(J.c.key == key).values(value=value, updated_at=now)
            ).rowcount
            if not updated:
                conn.execute(sa.insert(J).values(key=key, value=value, updated_at=now))
    except sa.exc.IntegrityError:
        pass  # another replica stored the same month at the same time: theirs will do
    return summary


def current(engine: Engine, month: str, model: str | None, *, now: datetime) -> dict[str, Any]:
    """The stored summary if it is fresh enough, else a new one."""
    stored = load(engine, month, model)
    if stored is not None and is_fresh(stored, Month.parse(month), now):
        return stored
    return rebuild(engine, month, model, now=now)


def refresh_job(now: datetime | None = None) -> list[str]:
    """The scheduler's job: store fresh summaries of this month and the last, all models.

    Returns the months refreshed. A month whose stored summary is still fresh is skipped, so
    a scheduler restarted in a loop gathers nothing twice."""
    from store.db import make_engine
    from vigil.config import get_settings

    now = now or utcnow()
    this_month = Month.containing(now)
    engine = make_engine(get_settings().database_url)
    refreshed = []
    try:
        for month in (this_month, this_month.previous()):
            stored = load(engine, month.label, None)
            # Ahead of expiry: a summary that would go stale before the next run is redone.
            ahead = now + timedelta(minutes=REFRESH_MINUTES)
            if stored is not None and is_fresh(stored, month, ahead):
                continue
            rebuild(engine, month.label, None, now=now)
            refreshed.append(month.label)
    finally:
        engine.dispose()
    return refreshed
