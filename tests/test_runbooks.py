"""Every registered monitor links exactly one runbook, and each runbook has its four sections."""

from __future__ import annotations

from pathlib import Path

import yaml

from monitors.registry import default_registry

RUNBOOKS = Path(__file__).resolve().parent.parent / "runbooks"
SECTIONS = ["## Meaning", "## Impact", "## Diagnosis", "## Mitigation"]


def _front_matter(text: str) -> dict[str, str]:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_every_monitor_has_a_runbook_with_front_matter_and_sections() -> None:
    for monitor in default_registry():
        path = RUNBOOKS / f"{monitor.runbook}.md"
        assert path.exists(), f"{monitor.name} links a missing runbook {path.name}"
        text = path.read_text(encoding="utf-8")
        meta = _front_matter(text)
        assert {"id", "title", "monitor", "severity", "owner"} <= meta.keys()
        assert meta["id"] == monitor.runbook
        positions = [text.find(s) for s in SECTIONS]
        assert all(p > 0 for p in positions) and positions == sorted(positions)
