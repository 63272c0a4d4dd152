"""Alert lifecycle: breaches open, escalate and update one alert per key; recovery resolves it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from incidents.alerts import (
    ActiveAlert,
    Observation,
    dedup_key,
    runbook_severity,
    sync_alerts,
    sync_all_alerts,
    transition,
)
from incidents.runbooks import SECTIONS, load_runbook
from monitors.base import MonitorResult, Status
from monitors.registry import MonitorRegistry, default_registry
from monitors.runner import write_results
from store.models import Alert, Site, table_of

T = datetime(2026, 9, 1, 12, tzinfo=UTC)
A = table_of(Alert)
RUNBOOKS = Path(__file__).resolve().parents[2] / "runbooks"
OPERATIONAL = (
    "latency_slo",
    "availability_slo",
    "feed_freshness",
    "alert_burden",
    "site_comparison",
)


def _obs(status: Status, severity: str = "page", summary: str = "s") -> Observation:
    return Observation(status, severity, summary, T)


def test_transitions() -> None:
    active = ActiveAlert(1, "ticket", "s")
    assert transition(None, _obs(Status.BREACH)) == "open"
    assert transition(active, _obs(Status.BREACH, "page")) == "escalate"
    assert transition(active, _obs(Status.BREACH, "ticket", "s")) == "none"
    assert transition(active, _obs(Status.BREACH, "ticket", "worse")) == "update"
    # A page that calms to a ticket-level breach stays a page: no de-escalation churn.
    assert transition(ActiveAlert(1, "page", "s"), _obs(Status.BREACH, "ticket", "t")) == "update"
    assert transition(active, _obs(Status.OK)) == "resolve"
    assert transition(active, _obs(Status.WARN)) == "none"  # borderline: neither way
    assert transition(None, _obs(Status.OK)) == "none"
    assert transition(None, _obs(Status.WARN)) == "none"
    assert dedup_key("latency_slo", "deterioration", "UMC", "all") == (
        "latency_slo/deterioration/UMC/all"
    )
    assert dedup_key("site_comparison", "deterioration", None, "all").endswith("/all-sites/all")


def test_every_alert_kind_links_one_runbook_with_its_four_sections() -> None:
    registry = default_registry()
    assert set(OPERATIONAL) <= set(registry.names())
    for monitor in registry:
        runbook = load_runbook(monitor.runbook, RUNBOOKS)  # raises if a section is missing
        assert list(runbook.sections)[:4] == list(SECTIONS)
        assert runbook.monitor == monitor.name
        assert runbook.severity in ("page", "ticket")
        assert all(runbook.sections[s].strip() for s in SECTIONS)
    # Each runbook serves one monitor: no two alert kinds share one.
    slugs = [m.runbook for m in registry]
    assert len(slugs) == len(set(slugs))


def _result(
    status: Status,
    *,
    at: datetime,
    monitor: str = "latency_slo",
    site: int = 1,
    severity: str | None = "page",
    summary: str = "late",
    metric: str = "deterioration-latency",
    **kwargs: Any,
) -> MonitorResult:
    return MonitorResult(
        monitor=monitor,
        metric=metric,
        model_id=1,
        site_id=site,
        window_start=at.replace(minute=0),
        window_end=at,
        status=status,
        value=0.9,
        detail={"severity": severity, "summary": summary},
        **kwargs,
    )


def _run(engine: Engine, *results: MonitorResult, at: datetime) -> Any:
    with engine.begin() as conn:
        write_results(conn, list(results), now=at)
    return sync_alerts(engine, results, now=at)


def _alerts(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(A).order_by(A.c.id)).mappings()]


def test_lifecycle_from_metric_points(engine: Engine) -> None:
    with engine.connect() as conn:
        umc = conn.execute(
            sa.select(table_of(Site).c.id).where(table_of(Site).c.code == "UMC")
        ).scalar_one()
    # A ticket-level breach opens one alert, linked to the monitor's runbook.
    changes = _run(engine, _result(Status.BREACH, at=T, site=umc, severity="ticket"), at=T)
    assert [c.kind for c in changes.all()] == ["opened"]
    [alert] = _alerts(engine)
    assert alert["dedup_key"] == "latency_slo/deterioration/UMC/all"
    assert (alert["severity"], alert["status"], alert["runbook"]) == (
        "ticket",
        "open",
        "latency-burn",
    )
    assert alert["opened_at"] == T
    # The breach continues: the same alert is updated, never doubled.
    later = T + timedelta(minutes=1)
    changes = _run(engine, _result(Status.BREACH, at=later, site=umc, severity="ticket",
                                   summary="later"), at=later)  # fmt: skip
    assert not changes and changes.updated == 1
    assert [a["summary"] for a in _alerts(engine)] == ["later"]
    # It gets worse: ticket → page is an escalation of the same alert.
    worse = T + timedelta(minutes=2)
    changes = _run(engine, _result(Status.BREACH, at=worse, site=umc), at=worse)
    assert [(c.kind, c.severity) for c in changes.all()] == [("escalated", "page")]
    assert len(_alerts(engine)) == 1
    # Newest evidence inconclusive (warn, or no data): nothing changes.
    for offset, status in [(3, Status.WARN), (4, Status.INSUFFICIENT)]:
        at = T + timedelta(minutes=offset)
        assert not _run(engine, _result(status, at=at, site=umc), at=at)
    assert _alerts(engine)[0]["status"] == "open"
    # Recovery resolves it.
    ok = T + timedelta(minutes=5)
    changes = _run(engine, _result(Status.OK, at=ok, site=umc, severity=None), at=ok)
    assert [c.kind for c in changes.all()] == ["resolved"]
    assert (_alerts(engine)[0]["status"], _alerts(engine)[0]["resolved_at"]) == ("resolved", ok)
    # A new breach after recovery is a new alert under the same key.
    again = T + timedelta(minutes=9)
    _run(engine, _result(Status.BREACH, at=again, site=umc), at=again)
    rows = _alerts(engine)
    assert [r["status"] for r in rows] == ["resolved", "open"]
    assert rows[0]["dedup_key"] == rows[1]["dedup_key"]


def test_old_windows_recomputed_later_do_not_override_newer_evidence(engine: Engine) -> None:
    # A monitor that recomputes old days (labels settling) reports them after newer ones:
    # the alert follows the newest conclusive window in the store, not the batch order.
    days = [T - timedelta(days=d) for d in (3, 2, 1)]
    _run(engine, _result(Status.BREACH, at=days[1]), at=T)
    _run(engine, _result(Status.OK, at=days[2]), at=T)
    assert [a["status"] for a in _alerts(engine)] == ["resolved"]
    changes = _run(engine, _result(Status.BREACH, at=days[0]), at=T + timedelta(hours=1))
    assert not changes
    assert [a["status"] for a in _alerts(engine)] == ["resolved"]


def test_the_worst_metric_of_the_newest_window_decides_and_severity_falls_back_to_the_runbook(
    engine: Engine,
) -> None:
    results = [
        _result(Status.OK, at=T, monitor="feed_freshness", metric="feed:ADT", severity=None),
        _result(
            Status.BREACH, at=T, monitor="feed_freshness", metric="feed:LAB", severity=None,
            summary="LAB feed at UMC: newest event 75 min before its heartbeat",
        ),
    ]  # fmt: skip
    changes = _run(engine, *results, at=T)
    [opened] = changes.opened
    assert opened.summary.startswith("LAB feed")
    assert opened.severity == runbook_severity("stale-feed") == "page"
    assert opened.runbook == "stale-feed"


def test_unregistered_monitors_raise_nothing_and_a_full_sync_reconciles(engine: Engine) -> None:
    _run(engine, _result(Status.BREACH, at=T, monitor="not_a_monitor"), at=T)
    assert _alerts(engine) == []
    registry = MonitorRegistry()
    assert not sync_all_alerts(engine, now=T, registry=registry)
    with engine.begin() as conn:
        write_results(conn, [_result(Status.BREACH, at=T, site=2)], now=T)
    assert [c.kind for c in sync_all_alerts(engine, now=T).all()] == ["opened"]
    assert not sync_all_alerts(engine, now=T)


@pytest.mark.parametrize("slug", ["latency-burn", "stale-feed", "alert-volume", "site-outlier"])
def test_runbook_front_matter_names_its_monitor(slug: str) -> None:
    registry = {m.runbook: m.name for m in default_registry()}
    assert load_runbook(slug, RUNBOOKS).monitor == registry[slug]


def test_the_newest_conclusive_point_of_each_key_is_one_seek_of_the_partial_index(
    engine: Engine,
) -> None:
    # A year of insufficient-data points after the last conclusive one must not be walked:
    # the newest-window query matches the partial index's predicate on both databases.
    from incidents.alerts import _newest_query

    params = {"m0": "calibration", "o0": 1, "s0": 1, "a0": "all"}
    sql = _newest_query(1).element.text
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.execute(sa.text("EXPLAIN QUERY PLAN " + sql), params)
            plan = " ".join(str(row[-1]) for row in rows)
        else:  # tiny tables: show that the index answers the query, not that it is cheapest
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = " ".join(str(row[0]) for row in conn.execute(sa.text("EXPLAIN " + sql), params))
    assert "ix_metricpoint_conclusive" in plan, plan
