"""The governance report's parts: months, episodes, month-over-month change, the status rules,
the `vigil report` command and the scheduler's monthly job."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from monitors.scheduler import build_scheduler
from reports.export import monthly_report_job
from reports.governance import (
    Episode,
    Measure,
    Month,
    QualityChange,
    SiteQuality,
    SLOAttainment,
    Volume,
    episodes_from_flags,
    gather_report,
    site_status,
)
from reports.model_cards import REQUIRED_ATTRIBUTES
from reports.render import render_html
from store.db import make_engine
from store.models import AuditEvent, table_of
from store.registry import sync_registry
from tests.conftest import REGISTRY
from vigil.cli import app
from vigil.config import get_settings

runner = CliRunner()
T0 = datetime(2026, 8, 1, tzinfo=UTC)


def test_months_parse_and_step_across_the_year() -> None:
    m = Month.parse("2026-12")
    assert (m.start, m.end, m.days) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
        31,
    )
    assert Month.parse("2028-02").days == 29
    assert Month.parse("2026-01").previous() == Month(2025, 12)
    assert Month.last_complete(datetime(2026, 9, 1, 0, 15, tzinfo=UTC)).label == "2026-08"
    for bad in ("2026-13", "2026-8", "August", ""):
        with pytest.raises(ValueError, match="not a month"):
            Month.parse(bad)


def test_flagged_hours_join_into_episodes() -> None:
    hours = [T0 + timedelta(hours=k) for k in range(8)]
    flags = [False, True, True, False, True, False, False, True]
    assert episodes_from_flags(hours, flags, timedelta(hours=1)) == [
        (hours[1], hours[3]),
        (hours[4], hours[5]),
        (hours[7], hours[7] + timedelta(hours=1)),
    ]
    # A gap in the series (an hour with no scores) ends an episode.
    gappy = [hours[0], hours[1], hours[5]]
    assert episodes_from_flags(gappy, [True, True, True], timedelta(hours=1)) == [
        (hours[0], hours[2]),
        (hours[5], hours[6]),
    ]


def _quality(oe: float | None, status: str = "ok") -> SiteQuality:
    none = Measure(None, note="not computed")
    return SiteQuality("UMC", 100, 100, 1.0, 10, 10.0, Measure(oe, status=status), *[none] * 5)


def test_month_over_month_change_only_when_both_months_have_a_value() -> None:
    assert QualityChange("UMC", _quality(1.3), _quality(1.0)).change("oe") == pytest.approx(0.3)
    assert QualityChange("UMC", _quality(1.3), None).change("oe") is None
    assert QualityChange("UMC", _quality(None), _quality(1.0)).change("oe") is None


def test_status_rules() -> None:
    volume = Volume("UMC", 100, 99, 1, 3, 0)
    slo = SLOAttainment("lat", "latency", "UMC", 0.99, 995, 1000, 0.995, 0.5, True)
    assert site_status("UMC", volume=None, slos=[], quality=None, episodes=[], drift=[],
                       canary=[]).rag == "grey"  # fmt: skip
    kwargs = {"volume": volume, "drift": [], "canary": []}
    green = site_status("UMC", slos=[slo], quality=_quality(1.0), episodes=[], **kwargs)
    assert green.rag == "green"
    warn = site_status("UMC", slos=[slo], quality=_quality(1.2, "warn"), episodes=[], **kwargs)
    assert warn.rag == "amber"
    missed = SLOAttainment("lat", "latency", "UMC", 0.99, 980, 1000, 0.98, -1.0, False)
    assert site_status("UMC", slos=[missed], quality=None, episodes=[], **kwargs).rag == "red"
    off = Episode("score switched off", "all sites", T0, None, "page", "lab change")
    red = site_status("UMC", slos=[slo], quality=_quality(1.0), episodes=[off], **kwargs)
    assert red.rag == "red" and "lab change" in red.reasons[0]


@pytest.fixture
def cli_env(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Engine:
    monkeypatch.setenv("VIGIL_DATABASE_URL", db_url)
    monkeypatch.setenv("VIGIL_REPORTS_DIR", str(tmp_path / "reports"))
    get_settings.cache_clear()
    engine = make_engine(db_url)
    sync_registry(engine, REGISTRY)
    return engine


def test_the_command_writes_the_month_and_refuses_a_bad_one(
    cli_env: Engine, tmp_path: Path
) -> None:
    try:
        out = tmp_path / "out"
        result = runner.invoke(app, ["report", "--month", "2026-05", "--out", str(out), "--no-pdf"])
        assert result.exit_code == 0, result.output
        assert "report for 2026-05 written" in result.output
        html = (out / "governance-2026-05.html").read_text(encoding="utf-8")
        assert "no predictions for deterioration at UMC in 2026-05" in html
        assert not (out / "governance-2026-05.pdf").exists()
        bad = runner.invoke(app, ["report", "--month", "2026-13", "--out", str(out)])
        assert bad.exit_code == 2 and "not a month" in bad.output
        unknown = runner.invoke(
            app, ["report", "--month", "2026-05", "--model", "nope", "--out", str(out)]
        )
        assert unknown.exit_code == 2 and "no model named 'nope'" in unknown.output
        AE = table_of(AuditEvent)
        with cli_env.connect() as conn:
            events = conn.execute(sa.select(AE.c.actor, AE.c.action, AE.c.target)).all()
        assert [tuple(e) for e in events] == [("vigil-cli", "export_report", "report:2026-05")]
    finally:
        cli_env.dispose()
        get_settings.cache_clear()


def test_the_scheduler_writes_last_months_report_on_the_first(
    sqlite_template: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shutil.copy(sqlite_template, tmp_path / "vigil.db")
    url = f"sqlite:///{tmp_path / 'vigil.db'}"
    monkeypatch.setenv("VIGIL_DATABASE_URL", url)
    monkeypatch.setenv("VIGIL_REPORTS_DIR", str(tmp_path / "reports"))
    get_settings.cache_clear()
    try:
        engine = make_engine(url)
        sync_registry(engine, REGISTRY)
        jobs = {job.id: job for job in build_scheduler().get_jobs()}
        job = jobs["governance-report"]
        assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, 86400)
        fields = {f.name: str(f) for f in job.trigger.fields}
        assert (fields["day"], fields["hour"], fields["minute"]) == ("1", "0", "15")
        first = job.trigger.get_next_fire_time(None, datetime(2026, 8, 20, tzinfo=UTC))
        assert first == datetime(2026, 9, 1, 0, 15, tzinfo=UTC)
        result = monthly_report_job(now=first)
        assert result.html == tmp_path / "reports" / "governance-2026-08.html"
        assert result.pdf is not None and result.pdf.read_bytes().startswith(b"%PDF")
        # Without a browser the board still gets the HTML, and the error is logged.
        monkeypatch.setattr("reports.export.CHROMIUM_CANDIDATES", ("no-such-browser",))
        later = monthly_report_job(now=first + timedelta(days=31))
        assert later.pdf is None and later.html.name == "governance-2026-09.html"
        assert "no Chromium found" in caplog.text
        engine.dispose()
    finally:
        get_settings.cache_clear()


def test_the_scheduler_keeps_the_governance_summary_fresh(
    sqlite_template: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from reports import summary

    shutil.copy(sqlite_template, tmp_path / "vigil.db")
    url = f"sqlite:///{tmp_path / 'vigil.db'}"
    monkeypatch.setenv("VIGIL_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        engine = make_engine(url)
        sync_registry(engine, REGISTRY)
        jobs = {job.id: job for job in build_scheduler().get_jobs()}
        job = jobs["governance-summary"]
        assert job.trigger.interval == timedelta(minutes=summary.REFRESH_MINUTES)
        assert (job.coalesce, job.max_instances) == (True, 1)
        now = datetime(2026, 9, 10, 8, 0, tzinfo=UTC)
        assert summary.refresh_job(now=now) == ["2026-09", "2026-08"]
        stored = summary.load(engine, "2026-08", None)
        assert stored is not None
        assert stored == summary.summarise(gather_report(engine, Month.parse("2026-08"), now=now))
        # Fresh summaries are not gathered again; the running month is redone before it
        # goes stale (an hour), the month before it daily.
        assert summary.refresh_job(now=now + timedelta(minutes=10)) == []
        assert summary.refresh_job(now=now + timedelta(minutes=31)) == ["2026-09"]
        assert summary.refresh_job(now=now + timedelta(hours=23, minutes=40)) == [
            "2026-09",
            "2026-08",
        ]
        current = summary.load(engine, "2026-09", None)
        assert current is not None
        assert summary.is_fresh(current, Month.parse("2026-09"), now + timedelta(hours=24))
        engine.dispose()
    finally:
        get_settings.cache_clear()


def test_missing_card_attributes_are_flagged_and_free_text_is_escaped(
    engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "deterioration.yaml").write_text(
        "model: deterioration\nname: Deterioration\n"
        "developer: '<img src=x onerror=alert(1)> Lab'\nintended_use: Ward triage\n"
    )
    report = gather_report(engine, Month(2026, 5), cards_dir=tmp_path, now=T0)
    det = next(m for m in report.models if m.model == "deterioration")
    assert "Known risks and limitations" in det.card_missing
    assert "Developer" not in det.card_missing and "Intended use" not in det.card_missing
    rdm = next(m for m in report.models if m.model == "readmission")
    assert len(rdm.card_missing) == len(REQUIRED_ATTRIBUTES)  # no card file at all
    html = render_html(report, interactive=False)
    assert "&lt;img src=x onerror=alert(1)&gt; Lab" in html and "<img" not in html
    assert html.count(">MISSING<") == (len(REQUIRED_ATTRIBUTES) - 2) + len(REQUIRED_ATTRIBUTES)
    assert any("does not state" in s and "Known risks" in s for s in det.missing)
