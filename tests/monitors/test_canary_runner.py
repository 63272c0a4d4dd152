"""The canary monitor on the seeded demo: loaded through the collectors, judged from rollups.

The demo's canary (deterioration 2.1.0 on UMC unit 5E from end - 12 days) over-predicts:
score = expit(logit p + 0.7). The judge must fail it for its alert rate (and, with 12 days of
settled outcomes, its O:E), not for latency or errors, which both arms share; and it must
pass an A/A comparison of two halves of the control arm running the same version.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from incidents.auth import Actor, Role
from incidents.killswitch import score_status
from incidents.promotion import promote, rollback
from monitors.canary import CanaryConfig, Classification, Verdict
from monitors.canary_runner import (
    P,
    aa_comparison,
    arm_data,
    arms_from_predictions,
    find_canaries,
    first_canary_hour,
    hour_of,
    planned_window_end,
    run_canary,
)
from monitors.config import MonitorConfig
from seed_data.generator import SeedConfig, generate
from store.models import CanaryJudgement, MetricPoint, table_of
from store.rollups import refresh
from tests.conftest import REPO

END = datetime(2026, 9, 1, tzinfo=UTC)
CONFIG = CanaryConfig.from_file(REPO / "config" / "canary.yaml")
CJ = table_of(CanaryJudgement)
MP = table_of(MetricPoint)


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 days of the demo at UMC alone (the canary's site), at full volume."""
    out = tmp_path_factory.mktemp("demo")
    generate(
        SeedConfig(end=END, days=20, sites=1, registry_path=REPO / "config" / "registry.yaml"),
        out,
    )
    return out


def _load(engine: Engine, files: Path) -> None:
    results = list(collect_files(engine, [files], secret="canary-test"))
    assert results and all(not isinstance(r, Exception) for r in results)
    refresh(engine, now=END)


def test_the_seeded_canary_fails_for_its_alert_rate_and_an_aa_split_passes(
    engine: Engine, demo_files: Path
) -> None:
    _load(engine, demo_files)
    results = run_canary(engine, MonitorConfig(), END, canary_config=CONFIG)

    # One canary: deterioration 2.1.0 on unit 5E at UMC against 2.0.0, from end - 12 days.
    with engine.connect() as conn:
        (canary,) = find_canaries(conn)
        start_hour = first_canary_hour(conn, canary)
    assert (canary.version, canary.control_version, canary.unit) == ("2.1.0", "2.0.0", "5E")
    assert start_hour is not None
    assert abs(start_hour - hour_of(END - timedelta(days=12))) <= 1

    # The period so far (12 days): Fail, for the alert rate (High, critical) and the O:E
    # (Low: the canary over-predicts), with the score distribution shifted up.
    verdict = next(r for r in results if r.metric == "verdict")
    assert verdict.status == "breach"
    assert verdict.detail["verdict"] == "Fail"
    assert verdict.detail["recommendation"]["action"] == "rollback"
    by_metric = {r.metric: r for r in results if r.metric != "verdict"}
    alert = by_metric["alert_rate"].detail
    assert alert["classification"] == "High" and alert["failed"]
    assert 2.0 < alert["effect"] < 4.0  # README: about 3.5x in alerts per score
    assert alert["canary"] > 2 * alert["control"]  # alerts per 100 patient-days
    oe = by_metric["oe_ratio"].detail
    assert oe["classification"] == "Low" and oe["failed"]
    assert oe["canary"] < 0.6 and 0.8 < oe["control"] < 1.4
    assert by_metric["score_distribution"].detail["classification"] == "High"
    assert by_metric["score_distribution"].detail["effect"] > 0.25  # log-odds, canary higher
    for shared in ("error_rate", "latency_sli", "latency_p95", "degraded", "calibration_slope"):
        assert not by_metric[shared].detail["failed"], shared

    # The planned analysis (first 7 days, labels settled) is the decision: Fail on the
    # critical alert rate; it is stored once.
    with engine.connect() as conn:
        rows = conn.execute(sa.select(CJ).order_by(CJ.c.kind)).mappings().all()
    kinds = [r["kind"] for r in rows]
    assert kinds == ["interim", "planned"]
    planned = next(r for r in rows if r["kind"] == "planned")
    assert planned["verdict"] == "Fail"
    assert planned["window_end"] - planned["window_start"] == timedelta(days=7)
    planned_detail = planned["detail"]["planned"]
    assert "alert_rate" in planned_detail["critical_failed"]
    assert planned["detail"]["planned_completeness"] >= 0.9
    assert planned["recommendation"] == "rollback"
    assert planned["detail"]["randomised"] is False
    assert "not randomised" in planned["detail"]["assignment"]

    # A/A: two halves of the control arm by encounter, same version, same period: Pass,
    # nothing fails, and the always-valid test stays quiet.
    aa = aa_comparison(
        engine,
        model="deterioration",
        site="UMC",
        start=END - timedelta(days=12),
        end=END,
        config=CONFIG,
    )
    assert aa.judgement.verdict == Verdict.PASS, aa.judgement.to_json()
    assert aa.judgement.failed == []
    assert not any(s.rejected for s in aa.sequential)
    assert aa.arms[0].n_ok > 5000 and aa.arms[1].n_ok > 5000
    judged = {m.metric for m in aa.judgement.metrics if m.classification != Classification.NODATA}
    assert judged >= {"score_distribution", "alert_rate", "error_rate", "oe_ratio"}

    # The judge's inputs from rollups equal the same sums straight from predictions.
    with engine.connect() as conn:
        first = int(start_hour)
        end_hour = hour_of(END)
        from_rollups = arm_data(conn, canary, first_hour=first, end_hour=end_hour)
        arm = sa.case((P.c.version_id == canary.version_id, "canary"), else_="control")
        raw = arms_from_predictions(
            conn,
            group=arm,
            where=sa.and_(
                P.c.model_id == canary.model_id,
                P.c.site_id == canary.site_id,
                P.c.scored_hour >= first,
                P.c.scored_hour < end_hour,
            ),
            latency_slo_seconds=canary.latency_slo_seconds,
        )
    for mine, theirs in zip(from_rollups, (raw["canary"], raw["control"]), strict=True):
        assert mine.summary() == pytest.approx(theirs.summary())
        np.testing.assert_allclose(mine.score_counts, theirs.score_counts)
        np.testing.assert_allclose(mine.settled_logit, theirs.settled_logit, rtol=1e-9)
        np.testing.assert_allclose(mine.latency_counts, theirs.latency_counts)
        assert mine.cluster == theirs.cluster

    # Looking again an hour later adds one interim row and keeps the one planned analysis;
    # the always-valid test's largest e-value never falls.
    first_seq = {(s["metric"], s["direction"]): s for s in verdict.detail["sequential"]}
    again = run_canary(engine, MonitorConfig(), END + timedelta(hours=1), canary_config=CONFIG)
    second_seq = next(r for r in again if r.metric == "verdict").detail["sequential"]
    # A third look in the same hour with no new data reads nothing and writes nothing.
    later = END + timedelta(hours=1, minutes=5)
    assert run_canary(engine, MonitorConfig(), later, canary_config=CONFIG) == []
    for s in second_seq:
        assert s["max_evalue"] >= first_seq[(s["metric"], s["direction"])]["max_evalue"] - 1e-9
    with engine.connect() as conn:
        kinds_now = list(conn.execute(sa.select(CJ.c.kind).order_by(CJ.c.id)).scalars())
        points = conn.execute(
            sa.select(sa.func.count()).select_from(MP).where(MP.c.monitor == "canary")
        ).scalar_one()
    assert sorted(kinds_now) == ["interim", "interim", "planned"]
    assert points == len(CONFIG.metrics) + 1  # upserted: one point per metric, one verdict

    # The recorded evidence refuses promotion, and the roll back it recommends switches the
    # canary version off at UMC through the kill switch; the monitor then leaves it alone.
    lead = Actor("Dr. Lee Lead", Role.CLINICAL_LEAD)
    with pytest.raises(ValueError, match="judge verdict"):
        promote(engine, lead, model="deterioration", version="2.1.0", reason="ship it",
                config=CONFIG, now=END)  # fmt: skip
    responder = Actor("Riley Responder", Role.INCIDENT_RESPONDER)
    done = rollback(engine, responder, model="deterioration", site="UMC", version="2.1.0",
                    reason="planned analysis failed on alert rate", now=END)  # fmt: skip
    assert done.changed
    with engine.connect() as conn:
        assert not score_status(conn, model="deterioration", site="UMC", version="2.1.0").enabled
        assert score_status(conn, model="deterioration", site="UMC", version="2.0.0").enabled
    assert run_canary(engine, MonitorConfig(), END + timedelta(hours=2), canary_config=CONFIG) == []


def test_the_planned_window_is_fixed_by_duration_and_volume_not_by_the_data() -> None:
    per_hour = np.full(24 * 10, 10.0)  # 240 canary scores a day
    # 7 days hold 1,680 scores: enough for 1,500, so the window is exactly 7 days...
    assert planned_window_end(per_hour, first_hour=100, min_hours=168, min_scores=1500,
                              now_hour=100 + 240) == 100 + 168  # fmt: skip
    # ...for 2,000 it runs on to the hour the 2,000th score arrived (200 hours)...
    assert planned_window_end(per_hour, first_hour=100, min_hours=168, min_scores=2000,
                              now_hour=100 + 240) == 100 + 200  # fmt: skip
    # ...and until that hour is complete there is no planned analysis yet.
    assert planned_window_end(per_hour, first_hour=100, min_hours=168, min_scores=2000,
                              now_hour=100 + 199) is None  # fmt: skip
