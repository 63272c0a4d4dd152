"""Route source files to their collector, and watch the drop folder."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from collectors.base import FileUnreadable, IngestResult, RecordSink, ingest_jsonl
from collectors.sinks import EncounterSink, HeartbeatSink, OutcomeSink, PredictionSink
from store.models import utcnow
from store.registry import RegistryLookup

logger = logging.getLogger(__name__)

KINDS = ("predictions", "outcomes", "encounters", "heartbeats")


def kind_of(path: Path) -> str:
    """The source kind a file holds, from its name: `<kind>-<anything>.jsonl`."""
    name = path.name.lower()
    for kind in KINDS:
        if name.startswith(kind) and name.endswith(".jsonl"):
            return kind
    raise FileUnreadable(
        path, f"unknown source: expected a name like '<{'|'.join(KINDS)}>-*.jsonl'"
    )


def sink_for(kind: str, registry: RegistryLookup, secret: str) -> RecordSink[Any]:
    if kind == "predictions":
        return PredictionSink(registry, secret)
    if kind == "outcomes":
        return OutcomeSink(registry, secret)
    if kind == "encounters":
        return EncounterSink(registry, secret)
    return HeartbeatSink(registry)


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files named, and the source files inside folders named, in a stable ingest order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*.jsonl")) if p.is_file())
        else:
            found.append(path)
    # Predictions before outcomes so labels settle in one pass; then by name (time order).
    order = {k: i for i, k in enumerate(KINDS)}

    def sort_key(p: Path) -> tuple[str, int]:
        try:
            return (p.name.split("-", 1)[-1], order[kind_of(p)])
        except FileUnreadable:
            return (p.name, len(KINDS))

    return sorted(found, key=sort_key)


def collect_files(
    engine: Engine,
    paths: Iterable[Path],
    *,
    secret: str,
    now: Callable[[], datetime] = utcnow,
    on_file: Callable[[Path, IngestResult | FileUnreadable], None] | None = None,
) -> Iterator[IngestResult | FileUnreadable]:
    """Ingest each file; an unreadable file is reported and skipped, the others still land."""
    registry = RegistryLookup.load(engine)
    for path in expand(paths):
        outcome: IngestResult | FileUnreadable
        try:
            outcome = ingest_jsonl(engine, path, sink_for(kind_of(path), registry, secret), now=now)
        except FileUnreadable as exc:
            logger.error("%s", exc)
            outcome = exc
        if on_file is not None:
            on_file(path, outcome)
        yield outcome


def collect_inbox(
    engine: Engine,
    inbox: Path,
    processed: Path,
    *,
    secret: str,
    now: Callable[[], datetime] = utcnow,
) -> list[IngestResult | FileUnreadable]:
    """Ingest every file in the drop folder, then move each finished file out of it."""
    if not inbox.exists():
        return []
    results = []
    for outcome in collect_files(engine, [inbox], secret=secret, now=now):
        results.append(outcome)
        path = outcome.path
        sub = "rejected" if isinstance(outcome, FileUnreadable) else utcnow().strftime("%Y-%m-%d")
        target = processed / sub / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        serial = 1
        while target.exists():  # never overwrite an earlier file of the same name
            serial += 1
            target = processed / sub / f"{path.stem}.{serial}{path.suffix}"
        shutil.move(str(path), target)
    return results
