"""Runbooks: Markdown files with front matter, one per alert kind, linked from every page."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import yaml

RUNBOOK_DIR = Path(__file__).resolve().parent.parent / "runbooks"
SECTIONS = ("Meaning", "Impact", "Diagnosis", "Mitigation")
FRONT_MATTER_KEYS = ("id", "title", "monitor", "severity", "owner")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class RunbookError(ValueError):
    """A runbook is missing, unreadable or lacks its front matter or sections."""


@dataclass(frozen=True)
class Runbook:
    id: str
    title: str
    monitor: str
    severity: str
    owner: str
    body: str  # Markdown after the front matter
    sections: dict[str, str] = field(default_factory=dict)


def parse_runbook(text: str, *, source: str = "runbook") -> Runbook:
    """Parse front matter and the four sections; raise RunbookError naming what is wrong."""
    if not text.startswith("---\n") or text.count("---\n") < 2:
        raise RunbookError(f"{source}: no front matter")
    _, front, body = text.split("---\n", 2)
    try:
        meta = yaml.safe_load(front) or {}
    except yaml.YAMLError as exc:
        raise RunbookError(f"{source}: front matter is not YAML: {exc}") from exc
    missing = [key for key in FRONT_MATTER_KEYS if not meta.get(key)]
    if missing:
        raise RunbookError(f"{source}: front matter lacks {', '.join(missing)}")
    sections: dict[str, str] = {}
    parts = re.split(r"^## +(.+?)\s*$", body, flags=re.MULTILINE)
    for name, content in zip(parts[1::2], parts[2::2], strict=True):
        sections[name.strip()] = content.strip()
    absent = [name for name in SECTIONS if name not in sections]
    if absent:
        raise RunbookError(f"{source}: sections missing: {', '.join(absent)}")
    order = [list(sections).index(name) for name in SECTIONS]
    if order != sorted(order):
        raise RunbookError(f"{source}: sections must come in the order {', '.join(SECTIONS)}")
    return Runbook(
        id=str(meta["id"]),
        title=str(meta["title"]),
        monitor=str(meta["monitor"]),
        severity=str(meta["severity"]),
        owner=str(meta["owner"]),
        body=body.strip(),
        sections=sections,
    )


def load_runbook(slug: str, directory: Path = RUNBOOK_DIR) -> Runbook:
    """The runbook `slug` (its file name without .md); slugs are checked, never paths."""
    if not _SLUG.match(slug):
        raise RunbookError(f"not a runbook id: {slug!r}")
    path = directory / f"{slug}.md"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RunbookError(f"runbook {slug!r} not found ({path.name})") from exc
    runbook = parse_runbook(text, source=path.name)
    if runbook.id != slug:
        raise RunbookError(f"{path.name}: front matter id is {runbook.id!r}, not {slug!r}")
    return runbook


def list_runbooks(directory: Path = RUNBOOK_DIR) -> list[Runbook]:
    return [load_runbook(path.stem, directory) for path in sorted(directory.glob("*.md"))]


def runbook_title(slug: str, directory: Path = RUNBOOK_DIR) -> str:
    """The runbook's title, or the slug itself if the runbook cannot be read."""
    try:
        return load_runbook(slug, directory).title
    except RunbookError:
        return slug


def runbook_url(slug: str, *, dashboard_url: str, template: str) -> str:
    return template.format(dashboard=dashboard_url.rstrip("/"), id=quote(slug))


def render_markdown(runbook: Runbook) -> str:
    """The body for inline display, without its top-level title (the page shows that)."""
    return re.sub(r"\A# .*\n+", "", runbook.body)
