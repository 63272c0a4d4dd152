"""Runbooks parse and name real commands; the incident CLI acts through the checked actions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from incidents.runbooks import (
    RUNBOOK_DIR,
    RunbookError,
    list_runbooks,
    load_runbook,
    parse_runbook,
    render_markdown,
    runbook_url,
)
from store.models import KillSwitch, table_of
from tests.incidents.conftest import breach
from vigil.cli import app
from vigil.config import DEMO_API_TOKEN, get_settings

REPO = Path(__file__).resolve().parents[2]

runner = CliRunner()
GOOD = """---
id: x
title: X
monitor: m
severity: page
owner: team
---

# X

## Meaning
a
## Impact
b
## Diagnosis
c
## Mitigation
d
"""


def test_runbooks_parse_with_their_four_sections() -> None:
    runbooks = {r.id: r for r in list_runbooks()}
    assert {"disable-model", "failed-canary", "calibration-drift"} <= runbooks.keys()
    for runbook in runbooks.values():
        assert list(runbook.sections)[:4] == ["Meaning", "Impact", "Diagnosis", "Mitigation"]
    assert not render_markdown(runbooks["disable-model"]).startswith("# ")
    parsed = parse_runbook(GOOD)
    assert parsed.sections == {"Meaning": "a", "Impact": "b", "Diagnosis": "c", "Mitigation": "d"}


@pytest.mark.parametrize(
    "text, problem",
    [
        ("# no front matter", "no front matter"),
        (GOOD.replace("owner: team\n", ""), "lacks owner"),
        (GOOD.replace("## Impact\nb\n", ""), "sections missing: Impact"),
        (
            GOOD.replace("## Meaning\na\n", "").replace(
                "## Mitigation", "## Meaning\na\n## Mitigation"
            ),
            "order",
        ),
    ],
)
def test_malformed_runbooks_are_refused_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(RunbookError, match=problem):
        parse_runbook(text)


def test_runbook_ids_are_slugs_never_paths() -> None:
    for slug in ("../README", "/etc/passwd", "Disable-Model", ""):
        with pytest.raises(RunbookError, match="not a runbook id"):
            load_runbook(slug)
    assert runbook_url(
        "disable-model", dashboard_url="https://v.org/", template="{dashboard}/r/{id}"
    ) == ("https://v.org/r/disable-model")


def test_every_vigil_command_in_a_runbook_exists() -> None:
    commands = set()
    for path in Path(RUNBOOK_DIR).glob("*.md"):
        for match in re.finditer(r"`?vigil ((?:[a-z][a-z-]* ?){1,2})", path.read_text()):
            commands.add(tuple(match.group(1).split()))
    assert ("score", "disable") in commands and ("audit", "verify") in commands
    for words in commands:
        result = runner.invoke(app, [*words, "--help"])
        assert result.exit_code == 0, (words, result.output)


@pytest.fixture
def cli_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VIGIL_DATABASE_URL", db_url)
    monkeypatch.delenv("VIGIL_SLACK_BOT_TOKEN", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_cli_disables_only_for_a_responder_and_reports_status(
    cli_env: None, engine: Engine
) -> None:
    args = ["score", "disable", "deterioration", "--site", "UMC", "--reason", "O:E 1.6 at UMC",
            "--incident-title", "Drift at UMC", "--actor", "Olu"]  # fmt: skip
    refused = runner.invoke(app, [*args, "--role", "oncall"])
    assert refused.exit_code == 3 and "refused" in refused.output
    with engine.connect() as conn:
        assert conn.execute(sa.select(table_of(KillSwitch))).all() == []
    done = runner.invoke(app, [*args, "--role", "incident_responder"])
    assert done.exit_code == 0 and "score disabled" in done.output
    shown = runner.invoke(app, ["score", "status", "deterioration"])
    assert "deterioration 2.0.0 at UMC (control): suppressed since" in shown.output
    assert "deterioration 2.0.0 at RVH (control): enabled" in shown.output
    log = runner.invoke(app, ["audit", "log"])
    assert "disable_score score:deterioration@UMC — O:E 1.6 at UMC" in log.output
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0


def test_cli_alerts_and_the_outbox(cli_env: None, engine: Engine) -> None:
    alert_id = breach(engine)
    listed = runner.invoke(app, ["alert", "list"])
    assert f"#{alert_id} PAGE open deterioration at UMC [calibration-drift]" in listed.output
    ack = runner.invoke(app, ["alert", "ack", str(alert_id), "--actor", "Olu", "--role", "oncall"])
    assert ack.exit_code == 0 and "acknowledged" in ack.output
    queued = runner.invoke(app, ["page", "run"])
    assert queued.exit_code == 1 and "Slack is not configured" in queued.output
    status = runner.invoke(app, ["page", "status"])
    assert status.exit_code == 0 and "2 pending" in status.output


def test_vigil_api_starts_a_server_that_answers_over_http(engine: Engine, db_url: str) -> None:
    env = {**os.environ, "VIGIL_DATABASE_URL": db_url, "VIGIL_LOG_LEVEL": "INFO"}
    env.pop("VIGIL_API_TOKENS", None)  # demo mode: the demo token
    proc = subprocess.Popen(
        [sys.executable, "-m", "vigil", "api", "--port", "0"],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            url = found.group(1) if found else None
        assert url, "vigil api did not report its address"
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "database": "ok"}
        answer = httpx.get(
            f"{url}/v1/models/readmission/sites/PRR/status",
            headers={"Authorization": f"Bearer {DEMO_API_TOKEN}"},
        )
        assert answer.status_code == 200 and answer.json()["status"] == "enabled"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_cli_escalates_pages_and_resolves_with_a_note(cli_env: None, engine: Engine) -> None:
    alert_id = breach(engine, severity="ticket")
    who = ["--actor", "Olu", "--role", "oncall"]
    missing = runner.invoke(app, ["alert", "resolve", str(alert_id), *who])
    assert missing.exit_code == 2 and "--note" in missing.output
    for command, note, said in (
        ("escalate", "need the clinical lead", "escalated"),
        ("page", "please look now", "queued"),
        ("resolve", "lab mapping fixed", "resolved"),
    ):
        done = runner.invoke(app, ["alert", command, str(alert_id), "--note", note, *who])
        assert done.exit_code == 0 and f"alert #{alert_id} {said}" in done.output, done.output
    again = runner.invoke(app, ["alert", "escalate", str(alert_id), "--note", "again", *who])
    assert again.exit_code == 2 and "is resolved; open an incident instead" in again.output
    viewer = runner.invoke(
        app, ["alert", "ack", str(alert_id), "--actor", "Vera", "--role", "viewer"]
    )
    assert viewer.exit_code == 3 and "may not acknowledge_alert" in viewer.output
    log = runner.invoke(app, ["audit", "log", "--limit", "3"])
    assert [line.split()[5] for line in log.output.splitlines()] == [
        "resolve_alert",
        "page_now",
        "escalate_alert",
    ]
