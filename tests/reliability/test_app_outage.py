"""The dashboard while its database goes away and comes back: on every page, a database
restart (PostgreSQL: every backend terminated) and then an unreachable database show a
banner, never a traceback, and the page recovers once the database is back."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
import streamlit as st
from sqlalchemy.engine import Engine

from tests.app.operational import ENTRYPOINT, app_test
from tests.app.test_every_page import PAGES, UNREACHABLE
from tests.reliability.conftest import Record, database_of
from vigil.config import get_settings


def _unreachable_banner(at: object) -> bool:
    return any("database is unreachable" in e.value for e in at.error)  # type: ignore[attr-defined]


def _point_at(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_DATABASE_URL", url)
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()


def test_every_page_through_a_database_outage(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, record: Record
) -> None:
    monkeypatch.chdir(Path(ENTRYPOINT).parents[1])
    database = database_of(db_url)
    misses: list[str] = []
    try:
        for page in PAGES:
            _point_at(db_url, monkeypatch)
            at = app_test(role="viewer")
            at.switch_page(page).run()
            if at.exception or _unreachable_banner(at):
                misses.append(f"{page}: not clean before the outage")
            if database == "postgresql":  # a restart: every open connection dropped
                with engine.connect() as conn:
                    conn.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    )
                    conn.commit()
                st.cache_data.clear()
                at.run()
                if at.exception:
                    misses.append(f"{page}: traceback after a restart")
            _point_at(UNREACHABLE, monkeypatch)
            at.run()
            if at.exception or not _unreachable_banner(at):
                misses.append(f"{page}: no banner while unreachable ({len(at.exception)} exc.)")
            _point_at(db_url, monkeypatch)
            at.run()
            if at.exception or _unreachable_banner(at):
                misses.append(f"{page}: did not recover")
    finally:
        _point_at(db_url, monkeypatch)
        get_settings.cache_clear()
    steps = "restart, unreachable, back" if database == "postgresql" else "unreachable, back"
    record(
        area="database",
        fault="the database goes away and comes back while the dashboard is open",
        database=database,
        expected="a banner, never a traceback, on every page; the page recovers",
        observed=f"{len(PAGES)} pages × ({steps}): "
        + ("banner every time, no traceback, every page recovered" if not misses else f"{misses}"),
        trials=len(PAGES),
        failures=len({m.split(":")[0] for m in misses}),
    )
    assert not misses, misses
