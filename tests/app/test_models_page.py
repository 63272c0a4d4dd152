"""AppTest of the Models registry page: lineage, deployments, score status and the model card."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy.engine import Engine

from tests.app.operational import app_test
from vigil.config import get_settings

ENTRYPOINT = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")


@pytest.fixture
def app_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VIGIL_DATABASE_URL", db_url)
    monkeypatch.chdir(Path(ENTRYPOINT).parents[1])
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()


def test_models_page_shows_lineage_deployments_and_the_card(app_env: None, engine: Engine) -> None:
    at = app_test(default_timeout=30)
    at.query_params["model"] = "deterioration"
    at.switch_page("app_pages/models.py").run()
    assert not at.exception
    assert at.title[0].value == "Models"
    assert at.selectbox[0].value == "deterioration"
    versions, deployments = at.dataframe[0].value, at.dataframe[1].value
    assert set(versions["version"]) == {"2.0.0", "2.1.0"}
    assert versions.loc[versions["version"] == "2.1.0", "stage"].item() == "canary"
    canary = deployments[deployments["arm"] == "canary"]
    assert list(canary["site"]) == ["UMC"] and list(canary["unit"]) == ["5E"]
    assert set(deployments["status"]) == {"enabled"}
    text = " ".join(m.value for m in at.markdown)
    assert "Intended use." in text and "Fairness approach." in text
    assert not at.error  # the shipped card is complete

    at.selectbox[0].set_value("readmission").run()
    assert not at.exception
    assert at.query_params["model"] == "readmission"
    assert set(at.dataframe[0].value["version"]) == {"1.4.0"}
