"""Shared fixtures: every store test runs on SQLite and on PostgreSQL.

PostgreSQL runs when VIGIL_TEST_POSTGRES_URL is set (CI sets it). Then a PostgreSQL that
cannot be reached is an error, never a skip. Each test gets a fresh database cloned from a
migrated template, so tests are isolated and migrations run once per session.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from store.db import make_engine, upgrade
from store.registry import sync_registry

os.environ.setdefault("DO_NOT_TRACK", "1")
REPO = Path(__file__).resolve().parent.parent
REGISTRY = REPO / "config" / "registry.yaml"
POSTGRES_URL = os.environ.get("VIGIL_TEST_POSTGRES_URL", "").strip()
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _admin_engine() -> Engine:
    return sa.create_engine(
        make_engine(POSTGRES_URL).url, isolation_level="AUTOCOMMIT", pool_pre_ping=True
    )


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("VIGIL_TEST_POSTGRES_URL is not set (CI sets it; PostgreSQL tests skipped)")
    admin = _admin_engine()
    name = f"vigil_tmpl_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:  # errors here fail the test: CI must really run PostgreSQL
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_engine(POSTGRES_URL).url.set(database=name)
    upgrade(url.render_as_string(hide_password=False))
    yield name
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated, empty database URL on each backend."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "vigil.db"
        shutil.copy(template, path)
        yield f"sqlite:///{path}"
        return
    template_name: str = request.getfixturevalue("postgres_template")
    admin = _admin_engine()
    name = f"vigil_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"'))
    yield make_engine(POSTGRES_URL).url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a fresh database with the registry loaded."""
    eng = make_engine(db_url)
    sync_registry(eng, REGISTRY)
    yield eng
    eng.dispose()


# Files whose tests run for minutes: collected first, so that under `make test` (pytest-xdist,
# whole files per worker, handed out in collection order) one worker starts them while the
# others work through the rest, instead of the run waiting on them at the end.
SLOW_FILES_FIRST = ("tests/monitors/test_operational_demo_90d.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(SLOW_FILES_FIRST))  # stable


def pytest_report_header(config: pytest.Config) -> str:
    if POSTGRES_URL:
        return f"PostgreSQL store tests: ON ({make_engine(POSTGRES_URL).url.render_as_string()})"
    return "PostgreSQL store tests: OFF (set VIGIL_TEST_POSTGRES_URL to run them)"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for outcome in counts:
        for report in terminalreporter.stats.get(outcome, []):
            if "[postgresql" in getattr(report, "nodeid", ""):
                counts[outcome] += 1
    terminalreporter.write_line(
        "PostgreSQL store tests: {passed} passed, {failed} failed, {skipped} skipped".format(
            **counts
        )
    )
