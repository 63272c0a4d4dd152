"""The `vigil` CLI: every command has help; collect reports bad files and exits non-zero."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from store.models import Prediction, table_of
from tests.factories import prediction, write_jsonl
from vigil.cli import app
from vigil.config import get_settings

runner = CliRunner()
COMMANDS = [
    [],
    ["db", "upgrade"],
    ["registry", "sync"],
    ["seed"],
    ["collect"],
    ["refresh"],
    ["monitor"],
    ["schedule"],
    ["bootstrap"],
    ["serve"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "vigil")
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.fixture
def cli_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VIGIL_DATABASE_URL", db_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_collect_lands_good_files_and_fails_naming_the_unreadable_one(
    cli_env: None, engine: Engine, tmp_path: Path
) -> None:
    good = write_jsonl(tmp_path / "predictions-good.jsonl", [prediction(1), prediction(2)])
    empty = tmp_path / "predictions-empty.jsonl"
    empty.write_bytes(b"")
    result = runner.invoke(app, ["collect", str(good), str(empty)])
    assert result.exit_code == 1
    assert f"{empty}: file is empty" in result.output
    assert "2 rows inserted" in result.output
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(table_of(Prediction))).scalar()
    assert count == 2


def test_collect_with_no_files_is_an_error(cli_env: None, engine: Engine, tmp_path: Path) -> None:
    result = runner.invoke(app, ["collect", str(tmp_path)])
    assert result.exit_code == 2
    assert "no source files" in result.output
