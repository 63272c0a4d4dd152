"""Every page of the dashboard: renders on an empty store with its empty states explained,
shows the late-heartbeat banner, and shows a banner — never a traceback — when the database
is unreachable. Deep links: a URL with ?model=&site=&days= opens that view."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy.engine import Engine

from monitors.scheduler import record_heartbeat
from tests.app.operational import ENTRYPOINT, app_env, app_test
from vigil.config import get_settings

__all__ = ["app_env"]
PAGES = sorted(
    f"app_pages/{p.name}"
    for p in (Path(ENTRYPOINT).parent / "app_pages").glob("*.py")
    if p.name != "__init__.py"
)
UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/nowhere?connect_timeout=2"


@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VIGIL_DATABASE_URL", UNREACHABLE)
    monkeypatch.chdir(Path(ENTRYPOINT).parents[1])
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()


def test_every_page_is_in_the_navigation() -> None:
    source = Path(ENTRYPOINT).read_text()
    missing = [p for p in PAGES if f'page("{Path(p).name}"' not in source]
    assert not missing


@pytest.mark.parametrize("page", PAGES)
def test_an_unreachable_database_is_a_banner_on_every_page(unreachable: None, page: str) -> None:
    at = app_test(role="viewer")
    at.switch_page(page).run()
    assert not at.exception
    [error] = at.error
    assert "database is unreachable" in error.value and "OperationalError" in error.value


def test_a_late_heartbeat_is_a_banner_on_every_page(app_env: None, engine: Engine) -> None:
    beat = datetime.now(UTC) - timedelta(minutes=20)
    record_heartbeat(engine, started_at=beat, now=beat)
    for page in PAGES:
        at = app_test(role="viewer")
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        banners = [w.value for w in at.warning if "heartbeat is late" in w.value]
        assert len(banners) == 1, page
        assert "20 min ago" in banners[0], banners


def test_deep_links_open_the_named_view(app_env: None, engine: Engine) -> None:
    """Each page that picks a model, site or time range starts from the URL's values."""
    record_heartbeat(engine, started_at=datetime.now(UTC))
    views = {
        "app_pages/models.py": {"model": "readmission"},
        "app_pages/live.py": {"model": "readmission", "site": "LKS"},
        "app_pages/slo.py": {"model": "readmission"},
        "app_pages/sites.py": {"model": "readmission"},
        "app_pages/calibration.py": {"model": "readmission"},
        "app_pages/discrimination.py": {"model": "readmission"},
        "app_pages/drift.py": {"model": "readmission"},
        "app_pages/alert_burden.py": {"model": "readmission"},
    }
    for page, params in views.items():
        at = app_test(role="viewer")
        at.query_params.update(params)
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        chosen = {s.key: s.value for s in at.selectbox}
        for name, value in params.items():
            assert chosen.get(f"link_{name}") == value, (page, chosen)
        # An unknown value in the URL falls back to the first option, never an error.
    at = app_test(role="viewer")
    at.query_params.update({"model": "no-such-model"})
    at.switch_page("app_pages/models.py").run()
    assert not at.exception
    assert at.selectbox(key="link_model").value == "deterioration"
    assert at.query_params["model"] == "deterioration"
