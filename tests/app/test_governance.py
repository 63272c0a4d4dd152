"""AppTest of the Governance page, from the real entrypoint, on a real store: the month's
status by model and site, what the data cannot say, and the audited HTML and PDF download."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from store.models import AuditEvent, table_of
from store.rollups import refresh
from tests.app.operational import app_env, app_test
from tests.factories import encounter, outcome, prediction, write_jsonl

__all__ = ["app_env"]
PAGE = "app_pages/governance.py"
AUGUST = datetime(2026, 8, 1, tzinfo=UTC)


def _seed(engine: Engine, tmp_path: Path) -> None:
    """Two weeks of August scores at UMC; every encounter closed, some with the outcome."""
    records: list[dict[str, Any] | str | bytes] = []
    outcomes: list[dict[str, Any] | str | bytes] = []
    closures: list[dict[str, Any] | str | bytes] = []
    for n in range(1, 337):
        scored = AUGUST + timedelta(hours=n)
        encounter_id = f"UMC-E{n:09d}"
        score = 0.01 + (n % 7) * 0.01
        records.append(
            prediction(
                n, encounter_id=encounter_id, scored=scored, score=score, alert=score >= 0.02
            )
        )
        if n % 9 == 0:
            outcomes.append(outcome(encounter_id, scored + timedelta(hours=2)))
        closures.append(encounter(encounter_id, scored + timedelta(hours=6)))
    files = [
        write_jsonl(tmp_path / "predictions-a.jsonl", records),
        write_jsonl(tmp_path / "outcomes-a.jsonl", outcomes),
        write_jsonl(tmp_path / "encounters-a.jsonl", closures),
    ]
    assert all(not isinstance(o, Exception) for o in collect_files(engine, files, secret="s"))
    refresh(engine, now=datetime(2026, 9, 10, tzinfo=UTC))


def test_the_page_summarises_the_month_and_exports_both_files(
    app_env: None, engine: Engine, tmp_path: Path
) -> None:
    _seed(engine, tmp_path)
    at = app_test(role="viewer", default_timeout=90)
    at.switch_page(PAGE).run()
    assert not at.exception
    assert at.title[0].value == "Governance report"
    at.selectbox(key="governance_month").set_value("2026-08").run()
    assert not at.exception
    grid = at.dataframe[0].value
    assert list(grid["model"]) == ["deterioration", "readmission"]
    det = grid[grid["model"] == "deterioration"].iloc[0]
    assert det["UMC"] in {"GREEN", "AMBER", "RED"}
    assert det["RVH"] == "GREY"  # deployed, but nothing scored there in August
    said = " ".join(m.value for m in at.markdown)
    assert "no predictions for deterioration at RVH in 2026-08" in said
    assert "no predictions for readmission at UMC in 2026-08" in said

    assert not at.get("download_button")
    [generate] = [b for b in at.button if b.label.startswith("Generate")]
    generate.click().run()
    assert not at.exception, at.exception
    downloads = at.get("download_button")
    assert len(downloads) == 2
    with engine.connect() as conn:
        AE = table_of(AuditEvent)
        event = conn.execute(
            sa.select(AE.c.actor, AE.c.role, AE.c.action, AE.c.target).order_by(AE.c.id.desc())
        ).first()
    assert event is not None
    assert tuple(event) == ("Vera Viewer", "viewer", "export_report", "report:2026-08")


def test_a_month_without_data_says_so(app_env: None, engine: Engine) -> None:
    at = app_test(role="viewer", default_timeout=60)
    at.switch_page(PAGE).run()
    at.selectbox(key="governance_month").set_value("2026-05").run()
    assert not at.exception
    grid = at.dataframe[0].value
    assert set(grid.drop(columns=["model"]).to_numpy().ravel()) == {"GREY"}
    said = " ".join(m.value for m in at.markdown)
    assert "no predictions for deterioration at UMC in 2026-05" in said


# ---------------------------------------------------------------- the stored summary


def test_a_summary_is_fresh_for_an_hour_in_its_month_and_a_day_after_it() -> None:
    from reports.governance import Month
    from reports.summary import is_fresh

    november = Month.parse("2026-11")
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

    def made(at: datetime) -> dict[str, Any]:
        return {"generated_at": at.isoformat()}

    assert is_fresh(made(now - timedelta(minutes=59)), november, now)
    assert not is_fresh(made(now - timedelta(minutes=61)), november, now)
    october = Month.parse("2026-10")
    assert is_fresh(made(now - timedelta(hours=23)), october, now)
    assert not is_fresh(made(now - timedelta(hours=25)), october, now)
    # Gathered on the month's last evening: not final, whatever its age.
    december_1st = datetime(2026, 12, 1, 0, 10, tzinfo=UTC)
    assert not is_fresh(made(datetime(2026, 11, 30, 23, 50, tzinfo=UTC)), november, december_1st)


def test_the_page_reads_the_stored_summary_until_it_is_recomputed(
    app_env: None, engine: Engine, tmp_path: Path
) -> None:
    from reports import summary as governance_summary
    from reports.governance import Month, gather_report
    from store.models import JobState

    _seed(engine, tmp_path)
    at = app_test(role="viewer", default_timeout=90)
    at.query_params["model"] = "deterioration"
    at.switch_page(PAGE).run()
    at.selectbox(key="governance_month").set_value("2026-08").run()
    assert not at.exception
    assert at.dataframe[0].value.iloc[0]["RVH"] == "GREY"
    assert any("Summary as of" in c.value and "min ago" in c.value for c in at.caption)
    # What is stored is the report's own summary of that month.
    stored = governance_summary.load(engine, "2026-08", "deterioration")
    assert stored is not None
    made = datetime.fromisoformat(stored["generated_at"])
    again = governance_summary.summarise(
        gather_report(engine, Month.parse("2026-08"), model="deterioration", now=made)
    )
    assert stored == again

    # August gains RVH scores: a new session still reads the stored (fresh) summary ...
    late: list[dict[str, Any] | str | bytes] = [
        prediction(1000 + n, site="RVH", encounter_id=f"RVH-E{n:09d}",
                   scored=AUGUST + timedelta(days=20, hours=n), prediction_id=f"det-RVH-{n:06d}")
        for n in range(24)
    ]  # fmt: skip
    list(collect_files(engine, [write_jsonl(tmp_path / "predictions-b.jsonl", late)], secret="s"))
    refresh(engine, now=datetime(2026, 9, 10, tzinfo=UTC))
    import streamlit as st

    st.cache_data.clear()
    reopened = app_test(role="viewer", default_timeout=90)
    reopened.query_params["model"] = "deterioration"
    reopened.switch_page(PAGE).run()
    reopened.selectbox(key="governance_month").set_value("2026-08").run()
    assert reopened.dataframe[0].value.iloc[0]["RVH"] == "GREY"
    # ... until someone recomputes it; the new summary replaces the stored one.
    reopened.button(key="governance_recompute").click().run()
    assert not reopened.exception
    assert reopened.dataframe[0].value.iloc[0]["RVH"] != "GREY"
    with engine.connect() as conn:
        J = table_of(JobState)
        keys = list(conn.execute(sa.select(J.c.key).where(J.c.key.like("%:2026-08:%"))).scalars())
    assert keys == ["governance.summary:2026-08:deterioration"]  # replaced, one row
    newer = governance_summary.load(engine, "2026-08", "deterioration")
    assert newer is not None and newer["generated_at"] > stored["generated_at"]
