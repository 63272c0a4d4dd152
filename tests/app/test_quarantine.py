"""AppTest of the quarantine page, from the real entrypoint, on a real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from tests.app.operational import app_test
from tests.collectors.sources import NOW, SECRET, adt_message, write_hl7
from tests.factories import prediction, write_jsonl
from vigil.config import get_settings

ENTRYPOINT = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")
PAGE = "app_pages/quarantine.py"


@pytest.fixture
def app_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VIGIL_DATABASE_URL", db_url)
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()


def test_quarantine_page_counts_per_source_and_reason_and_filters_rows(
    app_env: None, engine: Engine, tmp_path: Path
) -> None:
    files = [
        write_jsonl(
            tmp_path / "predictions-a.jsonl",
            [prediction(1), prediction(2, score=1.7), prediction(3, score=9.0), "{oops"],
        ),
        write_hl7(tmp_path / "adt-a.hl7", [adt_message(1), adt_message(2, facility="NOWHERE")]),
    ]
    list(collect_files(engine, files, secret=SECRET, now=lambda: NOW))
    at = app_test(default_timeout=30)
    at.switch_page(PAGE).run()
    assert not at.exception
    assert at.title[0].value == "Quarantined input"
    assert [(m.label, m.value) for m in at.metric] == [
        ("Rows quarantined", "4"),
        ("Sources", "2"),
        ("Reasons", "3"),
    ]
    counts = at.dataframe[0].value
    assert sorted(zip(counts["source"], counts["reason"], counts["rows"], strict=True)) == [
        ("adt", "unknown_site", 1),
        ("predictions", "invalid_json", 1),
        ("predictions", "out_of_range", 2),
    ]
    assert at.dataframe[1].value.shape[0] == 4
    at.selectbox[1].select("out_of_range").run()
    assert not at.exception
    latest = at.dataframe[1].value
    assert sorted(latest["location"]) == ["line 2", "line 3"]
    assert all("<redacted>" in raw for raw in latest["raw"])


def test_quarantine_page_says_when_nothing_is_quarantined(app_env: None, engine: Engine) -> None:
    at = app_test(default_timeout=30)
    at.switch_page(PAGE).run()
    assert not at.exception
    assert "No input rows" in at.success[0].value
