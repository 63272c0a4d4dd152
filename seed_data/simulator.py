"""The live demo: a pre-generated spool of future records, released into the inbox as time passes.

`prepare_demo` simulates the demo world from 90 days ago to two weeks ahead (one world, so
outcomes recorded next week belong to patients scored today), moves everything already in
the past into the inbox, and keeps the rest in the spool. `release` (every minute, from the
scheduler) moves the records whose own time has come. Files land atomically: they are
written under a temporary name and renamed, so a collector never reads half a file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_SPOOL = Path("data/spool")
TIME_FIELD = {
    "predictions": "scored_at",
    "outcomes": "recorded_at",
    "encounters": "recorded_at",
    "heartbeats": "received_at",
}
_DAILY = re.compile(r"^(predictions|outcomes|encounters|heartbeats)-(\d{4}-\d{2}-\d{2})\.jsonl$")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _atomic_write(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)


def release(spool: Path, inbox: Path, *, until: datetime) -> int:
    """Move spooled records whose own time is before `until` into the inbox; returns lines moved."""
    if not spool.exists():
        return 0
    inbox.mkdir(parents=True, exist_ok=True)
    cutoff_day, cutoff = until.astimezone(UTC).strftime("%Y-%m-%d"), _iso(until)
    moved = 0
    for path in sorted(spool.glob("*.jsonl")):
        match = _DAILY.match(path.name)
        if match is None or match.group(2) > cutoff_day:
            continue
        kind, day = match.groups()
        if day < cutoff_day:  # a whole past day: move the file as it is
            with path.open("rb") as handle:
                moved += sum(1 for _ in handle)
            shutil.move(str(path), inbox / path.name)
            continue
        due: list[str] = []
        later: list[str] = []
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            stamp = json.loads(line)[TIME_FIELD[kind]]
            (due if stamp < cutoff else later).append(line)
        if not due:
            continue
        target = inbox / f"{kind}-{day}-{until.astimezone(UTC):%H%M%S}.jsonl"
        _atomic_write(target, due)
        if later:
            _atomic_write(path, later)
        else:
            path.unlink()
        moved += len(due)
    return moved


def prepare_demo(
    inbox: Path,
    *,
    spool: Path = DEFAULT_SPOOL,
    now: datetime | None = None,
    days: int = 90,
    future_days: int = 14,
    bed_scale: float = 1.0,
    registry_path: Path = Path("config/registry.yaml"),
) -> int:
    """Simulate the demo world into the spool and release everything up to now into the inbox."""
    from seed_data.generator import SeedConfig, generate

    now = (now or datetime.now(UTC)).replace(second=0, microsecond=0)
    if spool.exists():
        shutil.rmtree(spool)
    config = SeedConfig(
        end=now,
        days=days,
        future_days=future_days,
        bed_scale=bed_scale,
        registry_path=registry_path,
    )
    summary = generate(config, spool)
    logger.info(
        "demo world simulated: %d predictions until %s",
        summary.predictions,
        now + timedelta(days=future_days),
    )
    return release(spool, inbox, until=now)


def drop_recent(inbox: Path, spool: Path = DEFAULT_SPOOL) -> int:
    """Release what has become due since the last call (the scheduler calls this each minute)."""
    moved = release(spool, inbox, until=datetime.now(UTC))
    if moved:
        logger.info("released %d demo records into %s", moved, inbox)
    elif spool.exists() and not any(spool.glob("*.jsonl")):
        logger.warning("the demo spool is used up; run `vigil bootstrap` on an empty store")
    return moved
