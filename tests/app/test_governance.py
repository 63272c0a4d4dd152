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
