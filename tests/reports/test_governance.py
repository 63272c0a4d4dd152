"""The governance report on the seeded demo: its figures equal the store's, it shows the
planted incidents and the canary decision, a month without data says so, and the HTML and
PDF hold what they should and no patient identifier.

The demo generator, 36 days ending 2026-09-03 ("D"), loaded through the collectors: August
2026 is then the last complete month, its deterioration labels have settled, and it holds
every planted incident: the LKS calibration drift (from D-30), the RVH alert-volume spike
(D-20), the RVH LAB outage (D-15), the UMC latency incident (D-10) and the UMC 5E canary (from
D-12). On top of the data, real actions: an incident, a kill-switch disablement and
re-enablement at LKS, and the live latency SLO monitor opening and resolving its alert.

Two module-scoped stores: `seeded`, at a tenth of the beds on both databases, for the
figures against independent store queries; `demo`, at half the beds on SQLite, for the
planted incidents (the alert spike is not visible at smaller sizes), the canary and the files.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from incidents import actions
from incidents.alerts import sync_alerts
from incidents.audit import verify_chain
from incidents.auth import Actor, Role
from monitors.canary_runner import run_canary
from monitors.config import MonitorConfig
from monitors.slo import run_slo_monitor
from reports.export import export_report
from reports.governance import GovernanceReport, ModelReport, Month, gather_report
from reports.render import render_html
from seed_data.generator import SeedConfig, generate
from store.db import make_engine
from store.models import Alert, AuditEvent, CanaryJudgement, Prediction, Site, table_of
from store.registry import sync_registry
from store.rollups import refresh
from tests.conftest import BACKENDS, POSTGRES_URL, REGISTRY, _admin_engine

D = datetime(2026, 9, 3, tzinfo=UTC)
DAYS = 36
AUGUST = Month(2026, 8)
LATENCY = (D - timedelta(days=10) + timedelta(hours=14), D - timedelta(days=10, hours=-17))
OUTAGE = (D - timedelta(days=15) + timedelta(hours=2), D - timedelta(days=15) + timedelta(hours=8))
SPIKE_DAY = (D - timedelta(days=20)).date().isoformat()
RECOVERED = LATENCY[1] + timedelta(days=4)
DISABLED = (datetime(2026, 8, 20, 9, 30, tzinfo=UTC), datetime(2026, 8, 21, 15, 0, tzinfo=UTC))
HOSTILE = "<script>alert('x')</script> & co"
P, A, AE = table_of(Prediction), table_of(Alert), table_of(AuditEvent)
RAW_ID = re.compile(r"\b[A-Z]{3}-E\d{9}\b")


@dataclass
class Seeded:
    engine: Engine
    report: GovernanceReport
    raw_ids: list[str]
    backend: str


def _fresh_url(request: pytest.FixtureRequest, backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copy(template, folder / "vigil.db")
        yield f"sqlite:///{folder / 'vigil.db'}"
        return
    template_name: str = request.getfixturevalue("postgres_template")
    admin = _admin_engine()
    name = f"vigil_report_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"'))
    yield make_engine(POSTGRES_URL).url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _act(engine: Engine) -> None:
    """What people and the live monitors did during the month, through the real functions."""
    responder = Actor("Dr. R. Okafor", Role.INCIDENT_RESPONDER)
    opened = actions.open_incident(
        engine,
        responder,
        title=f"LKS lactate unmapped {HOSTILE}",
        model="deterioration",
        site="LKS",
        now=DISABLED[0] - timedelta(minutes=10),
    )
    actions.disable_score(
        engine,
        responder,
        model="deterioration",
        site="LKS",
        reason=f"under-prediction after the lab-code change {HOSTILE}",
        incident_id=opened.incident_id,
        now=DISABLED[0],
    )
    actions.enable_score(
        engine,
        responder,
        model="deterioration",
        site="LKS",
        reason="lactate mapping restored",
        incident_id=opened.incident_id,
        now=DISABLED[1],
    )
    # The live latency SLO monitor during the UMC incident (the 1 h and 6 h page rules) and
    # once it has recovered.
    for at in (LATENCY[0] + timedelta(minutes=40), LATENCY[1], RECOVERED):
        sync_alerts(engine, run_slo_monitor(engine, "latency", at), now=at)


def _build(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    backend: str,
    bed_scale: float,
    *,
    heartbeats: bool,
    judged: bool,
) -> Iterator[Seeded]:
    folder = tmp_path_factory.mktemp(f"governance-{backend}")
    generate(SeedConfig(end=D, days=DAYS, bed_scale=bed_scale), folder / "demo")
    raw_ids = sorted(
        {
            json.loads(line)["encounter_id"]
            for path in (folder / "demo").glob("predictions-2026-08-2*.jsonl")
            for line in path.read_text().splitlines()[:50]
        }
    )
    urls = _fresh_url(request, backend, folder)
    engine = make_engine(next(urls))
    sync_registry(engine, REGISTRY)
    files = sorted(
        p
        for p in (folder / "demo").glob("*.jsonl")
        if heartbeats or not p.name.startswith("heartbeats-")
    )
    assert all(not isinstance(o, Exception) for o in collect_files(engine, files, secret="demo"))
    refresh(engine, now=D)
    if judged:
        config = MonitorConfig.from_file()
        run_canary(engine, config, AUGUST.end)  # the judgement standing when August closed
        run_canary(engine, config, D)
    _act(engine)
    report = gather_report(engine, AUGUST, now=D)
    yield Seeded(engine, report, raw_ids, backend)
    engine.dispose()
    next(urls, None)


@pytest.fixture(scope="module", params=BACKENDS)
def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Seeded]:
    """The demo at a tenth of the beds, without heartbeats or canary judgements, on each
    backend: for figures against the store."""
    yield from _build(
        request, tmp_path_factory, str(request.param), 0.1, heartbeats=False, judged=False
    )


@pytest.fixture(scope="module")
def demo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Seeded]:
    """The demo at half the beds, where every planted incident is as visible as at full size
    (the alert-volume spike is not at smaller sizes). SQLite only: loading is the slow part,
    and the reads are checked on both databases through `seeded`."""
    yield from _build(request, tmp_path_factory, "sqlite", 0.5, heartbeats=True, judged=True)


def _model(seeded: Seeded, name: str) -> ModelReport:
    return next(m for m in seeded.report.models if m.model == name)


def _site_ids(engine: Engine) -> dict[str, int]:
    S = table_of(Site)
    with engine.connect() as conn:
        return {str(c): int(i) for c, i in conn.execute(sa.select(S.c.code, S.c.id))}


def _august(query: sa.Select[Any]) -> sa.Select[Any]:
    return query.where(P.c.scored_at >= AUGUST.start, P.c.scored_at < AUGUST.end)


# ---------------------------------------------------------------- figures = the store's


def test_oe_per_site_equals_the_settled_predictions_in_the_store(seeded: Seeded) -> None:
    det = _model(seeded, "deterioration")
    ids = _site_ids(seeded.engine)
    with seeded.engine.connect() as conn:
        rows = conn.execute(
            _august(
                sa.select(
                    P.c.site_id,
                    sa.func.sum(P.c.label),
                    sa.func.sum(P.c.score),
                    sa.func.count(),
                ).where(P.c.model_id == 1, P.c.status == "ok", P.c.label.is_not(None))
            ).group_by(P.c.site_id)
        ).all()
    store = {int(s): (int(o), float(e), int(n)) for s, o, e, n in rows}
    checked = 0
    for q in det.quality:
        assert q.current is not None, q.site
        observed, expected, settled = store[ids[q.site]]
        assert q.current.observed == observed
        assert q.current.expected == pytest.approx(expected, rel=1e-9)
        assert q.current.settled == settled
        if q.current.oe.value is not None:
            assert q.current.oe.value == pytest.approx(observed / expected, rel=1e-9)
            checked += 1
    assert checked >= 3  # August's deterioration labels have settled by D


def test_slo_attainment_equals_the_raw_predictions(seeded: Seeded) -> None:
    det = _model(seeded, "deterioration")
    ids = _site_ids(seeded.engine)
    with seeded.engine.connect() as conn:
        rows = conn.execute(
            _august(
                sa.select(
                    P.c.site_id,
                    sa.func.sum(sa.case((P.c.status == "ok", 1), else_=0)),
                    sa.func.sum(
                        sa.case(
                            (sa.and_(P.c.status == "ok", P.c.latency_seconds <= 300), 1), else_=0
                        )
                    ),
                    sa.func.sum(sa.case((P.c.status.in_(["error", "timeout"]), 1), else_=0)),
                ).where(P.c.model_id == 1)
            ).group_by(P.c.site_id)
        ).all()
    store = {int(s): (int(ok), int(on_time), int(failed)) for s, ok, on_time, failed in rows}
    for slo in det.slos:
        ok, on_time, failed = store[ids[slo.site]]
        if slo.sli == "latency":
            assert (slo.good, slo.total) == (on_time, ok)
            assert slo.attainment == pytest.approx(on_time / ok)
        else:
            assert (slo.good, slo.total) == (ok, ok + failed)
        assert slo.budget_remaining == pytest.approx(
            1 - (slo.total - slo.good) / slo.total / (1 - slo.target)
        )
    assert len(det.slos) == 2 * 5


def test_incident_counts_and_durations_equal_the_store(seeded: Seeded) -> None:
    det = _model(seeded, "deterioration")
    with seeded.engine.connect() as conn:
        alerts = conn.execute(
            sa.select(A.c.opened_at, A.c.resolved_at, A.c.severity).where(
                A.c.model_id == 1, A.c.opened_at < AUGUST.end
            )
        ).all()
    shown = [e for e in det.episodes if e.kind == "alert"]
    assert len(shown) == len(alerts) >= 1
    assert sorted((e.start, e.end) for e in shown) == sorted(
        (o, r if r is not None and r < AUGUST.end else None) for o, r, _ in alerts
    )
    [page] = [e for e in shown if e.site == "UMC" and e.summary.startswith("latency_slo")]
    assert LATENCY[0] < page.start <= LATENCY[1] and page.end == RECOVERED
    assert page.severity == "page"
    assert page.duration(AUGUST.end) == RECOVERED - page.start
    off = [e for e in det.episodes if e.kind == "score switched off"]
    assert [(e.site, e.start, e.end) for e in off] == [("LKS", *DISABLED)]
    assert off[0].duration(AUGUST.end) == DISABLED[1] - DISABLED[0]
    incidents = [e for e in det.episodes if e.kind == "incident"]
    assert len(incidents) == 1 and incidents[0].end is None  # never closed: ongoing
    # The change log: what was done to the model, from the audit log, in order.
    assert [(c.action, c.target) for c in det.changes] == [
        ("open_incident", "incident:1"),
        ("disable_score", "score:deterioration@LKS"),
        ("enable_score", "score:deterioration@LKS"),
    ]
    assert [c.at for c in det.changes][1:] == list(DISABLED)
    assert _model(seeded, "readmission").changes == []


def test_the_planted_incidents_of_the_month_are_in_the_report(demo: Seeded) -> None:
    det = _model(demo, "deterioration")
    burns = [e for e in det.episodes if e.kind == "SLO page burn"]
    assert [(e.site, e.start, e.end) for e in burns] == [("UMC", *LATENCY)]
    lab = [e for e in det.episodes if e.kind == "feed error" and "LAB" in e.summary]
    rvh = [e for e in lab if e.site == "RVH"]
    assert len(rvh) == 1
    assert OUTAGE[0] - timedelta(minutes=20) <= rvh[0].start <= OUTAGE[0]
    assert rvh[0].end is not None and OUTAGE[1] <= rvh[0].end <= OUTAGE[1] + timedelta(minutes=20)
    page = next(e for e in det.episodes if e.kind == "alert" and e.severity == "page")
    assert page.site == "UMC" and LATENCY[0] < page.start < LATENCY[0] + timedelta(hours=1)
    lks = next(q for q in det.quality if q.site == "LKS").current
    assert lks is not None and lks.oe.ci_low is not None and lks.oe.ci_low > 1.25  # the drift
    assert lks.oe.status == "breach"
    spikes = [(e.site, e.start.date().isoformat()) for e in det.episodes if e.kind == "alert spike"]
    assert spikes == [("RVH", SPIKE_DAY)]
    lactate = next(d for d in det.drift if d.site == "LKS" and d.feature == "lactate")
    assert lactate.missing_share is not None and lactate.missing_share > 0.5
    status = {s.site: s.rag for s in det.status}
    assert status["UMC"] == status["RVH"] == status["LKS"] == "red"


def test_the_canary_decision_is_the_judges_standing_at_month_end(demo: Seeded) -> None:
    det = _model(demo, "deterioration")
    CJ = table_of(CanaryJudgement)
    month_end_hour = int(AUGUST.end.timestamp()) // 3600
    assert det.canary, "the UMC 5E canary was judged in August"
    assert {(c.site, c.version, c.control_version) for c in det.canary} == {
        ("UMC", "2.1.0", "2.0.0")
    }
    html = render_html(demo.report)
    with demo.engine.connect() as conn:
        for decision in det.canary:
            stored = conn.execute(
                sa.select(CJ.c.verdict, CJ.c.recommendation, CJ.c.window_end)
                .where(CJ.c.kind == decision.kind, CJ.c.evaluated_hour <= month_end_hour)
                .order_by(CJ.c.evaluated_hour.desc(), CJ.c.id.desc())
                .limit(1)
            ).one()
            assert (decision.verdict, decision.recommendation, decision.window_end) == tuple(stored)
            assert decision.window_end <= AUGUST.end  # nothing judged after the month
            assert f"<td>{decision.verdict}</td>" in html
            assert f"<td>{decision.recommendation}</td>" in html


def test_labels_not_yet_settled_are_said_not_shown(seeded: Seeded) -> None:
    rdm = _model(seeded, "readmission")
    # 30-day readmissions of August discharges cannot all be known by 3 September.
    assert all(q.current is not None and q.current.oe.value is None for q in rdm.quality)
    assert all("labels not yet settled" in q.current.oe.note for q in rdm.quality if q.current)
    assert any("labels not yet settled" in s for s in rdm.missing)


def test_a_month_without_data_says_so_rather_than_showing_zeros(seeded: Seeded) -> None:
    empty = gather_report(seeded.engine, Month(2026, 5), now=D)
    html = render_html(empty, interactive=False)
    for m in empty.models:
        assert m.volume == [] and m.slos == [] and m.burden == []
        assert {s.rag for s in m.status} == {"grey"}
        assert all(q.current is None for q in m.quality)
        for site in m.sites:
            statement = f"no predictions for {m.model} at {site} in 2026-05"
            assert statement in m.missing
            assert statement in html
    assert "0.00" not in html and "0.0%" not in html


# ---------------------------------------------------------------- files


def test_export_writes_html_and_pdf_audits_it_and_leaks_no_identifier(
    demo: Seeded, tmp_path: Path
) -> None:
    seeded = demo
    viewer = Actor("Board secretary", Role.VIEWER)
    result = export_report(seeded.engine, viewer, month=AUGUST, out_dir=tmp_path, now=D)
    html = result.html.read_text(encoding="utf-8")
    # plotly.js inlined exactly once; nothing loaded from the network.
    assert html.count("plotly.js v") == 1
    # plotly.js itself holds URLs (map tiles, its logo) it never fetches for these charts;
    # everything else in the file (markup, styles, the chart calls) names none.
    pieces = re.split(r"(<script[^>]*>.*?</script>)", html, flags=re.S)
    assert sum("plotly.js v" in p for p in pieces) == 1
    ours = "".join(p for p in pieces if "plotly.js v" not in p)
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", ours)
    assert "<script src" not in html and "<link" not in html
    # Free text is escaped, never executed.
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in html
    assert result.pdf is not None
    pages = int(
        re.search(
            r"Pages:\s+(\d+)",
            subprocess.run(["pdfinfo", result.pdf], capture_output=True, text=True).stdout,
        ).group(1)  # type: ignore[union-attr]
    )
    texts = [
        subprocess.run(
            ["pdftotext", "-layout", "-f", str(k), "-l", str(k), str(result.pdf), "-"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for k in range(1, pages + 1)
    ]
    # Page 1: title and summary; each model starts on a page of its own.
    assert "Vigil governance report — August 2026" in texts[0] and "Summary" in texts[0]
    starts = [k for k, t in enumerate(texts) if t.lstrip().startswith("Inpatient clinical")]
    starts += [k for k, t in enumerate(texts) if t.lstrip().startswith("30-day readmission")]
    assert len(starts) == 2 and 0 not in starts
    assert 3 <= pages <= 14
    text = "\n".join(texts)
    for phrase in ("SLO page burn", "score switched off", "alert spike", "2.1.0", "lactate"):
        assert phrase in text
    # No raw encounter id anywhere (the seed's own ids, and anything shaped like one).
    for ident in seeded.raw_ids:
        assert ident not in html and ident not in text
    assert not RAW_ID.search(html) and not RAW_ID.search(text)
    with seeded.engine.connect() as conn:
        event = conn.execute(
            sa.select(AE.c.actor, AE.c.action, AE.c.target, AE.c.detail)
            .order_by(AE.c.id.desc())
            .limit(1)
        ).one()
    assert (event.actor, event.action, event.target) == (
        "Board secretary",
        "export_report",
        "report:2026-08",
    )
    assert set(event.detail["files"]) == {"governance-2026-08.html", "governance-2026-08.pdf"}
    assert verify_chain(seeded.engine).ok
