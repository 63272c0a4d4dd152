"""Clock skew and files out of order at the collectors.

- Timestamps ahead of the collector's clock: within the contract's allowed skew (5 min) they
  land; beyond it they are quarantined as future_timestamp, and the rest of the file lands.
- Files arriving in reverse order (labels before the predictions they settle, newest day
  first, with a refresh after each file as the scheduler would run): the settled labels are
  the same as for the files in order, and match the outcomes as written.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.base import IngestResult
from collectors.contracts import ALLOWED_CLOCK_SKEW
from collectors.runner import collect_files
from store.models import Prediction, Quarantine, table_of
from store.rollups import refresh
from tests.collectors.sources import NOW, SECRET
from tests.factories import T0, encounter, iso, outcome, prediction, write_jsonl
from tests.reliability.conftest import Record, database_of

P, Q = table_of(Prediction), table_of(Quarantine)

SKEWS = {
    "1 min ahead": (timedelta(minutes=1), True),
    "4 min 59 s ahead": (ALLOWED_CLOCK_SKEW - timedelta(seconds=1), True),
    "5 min 1 s ahead": (ALLOWED_CLOCK_SKEW + timedelta(seconds=1), False),
    "1 h ahead": (timedelta(hours=1), False),
    "1 day ahead": (timedelta(days=1), False),
    "scored 4 min before its trigger": (-timedelta(minutes=4), True),
    "scored 6 min before its trigger": (-timedelta(minutes=6), False),
}


def test_clock_skew(engine: Engine, db_url: str, tmp_path: Path, record: Record) -> None:
    misses: list[str] = []
    for n, (name, (offset, lands)) in enumerate(SKEWS.items()):
        if name.startswith("scored"):  # the scoring service's clock behind the EHR's
            scored = NOW - timedelta(hours=1)
            row = prediction(700_000 + n, scored=scored, trigger_at=iso(scored - offset))
        else:
            row = prediction(700_000 + n, scored=NOW + offset)
            row["delivered_at"] = row["scored_at"]
        around = [prediction(710_000 + 2 * n + k, scored=NOW - timedelta(hours=2)) for k in (0, 1)]
        path = write_jsonl(tmp_path / f"predictions-skew{n}.jsonl", [around[0], row, around[1]])
        [result] = list(collect_files(engine, [path], secret=SECRET, now=lambda: NOW))
        assert isinstance(result, IngestResult)
        with engine.connect() as conn:
            reasons = list(
                conn.execute(
                    sa.select(Q.c.reason).where(Q.c.source_file.like(f"%{path.name}"))
                ).scalars()
            )
        want_reason = (
            [] if lands else ["time_order" if name.startswith("scored") else "future_timestamp"]
        )
        if (result.inserted, reasons) != (3 if lands else 2, want_reason):
            misses.append(f"{name}: {result.inserted} landed, quarantined {reasons}")
    record(
        area="collectors",
        fault="clock skew: timestamps ahead of the collector's clock, scoring before its trigger",
        database=database_of(db_url),
        expected=f"within the allowed skew ({ALLOWED_CLOCK_SKEW.total_seconds() / 60:.0f} min) "
        "the row lands; beyond it "
        "quarantined with its reason (future_timestamp, time_order); the rest lands",
        observed=f"{len(SKEWS)} skews ({', '.join(SKEWS)}): "
        + ("as expected" if not misses else f"{misses}"),
        trials=len(SKEWS),
        failures=len(misses),
    )
    assert not misses, misses


DAYS, PER_DAY = 3, 12


def _day_files(folder: Path, first_id: int, tag: str) -> tuple[list[Path], dict[str, int]]:
    """Per day: predictions, outcomes (a third of encounters, 2 h after scoring) and closures
    (another third, discharged without the outcome). Returns the files and expected labels."""
    expected: dict[str, int] = {}
    files: list[Path] = []
    for day in range(DAYS):
        preds, outs, closures = [], [], []
        for i in range(PER_DAY):
            n = first_id + day * PER_DAY + i
            scored = T0 + timedelta(days=day, hours=i)
            enc = f"UMC-E{tag}{n:07d}"
            record = prediction(n, scored=scored, encounter_id=enc)
            preds.append(record)
            if i % 3 == 0:
                outs.append(outcome(enc, scored + timedelta(hours=2)))
                expected[record["prediction_id"]] = 1
            else:
                if i % 3 == 1:
                    closures.append(encounter(enc, scored + timedelta(hours=1)))
                expected[record["prediction_id"]] = 0
        files.append(write_jsonl(folder / f"predictions-day{day}.jsonl", preds))
        files.append(write_jsonl(folder / f"outcomes-day{day}.jsonl", outs))
        files.append(write_jsonl(folder / f"encounters-day{day}.jsonl", closures))
    return files, expected


def _labels(engine: Engine, ids: list[str]) -> dict[str, int | None]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                sa.select(P.c.prediction_id, P.c.label).where(P.c.prediction_id.in_(ids))
            ).all()
        )


def test_files_out_of_order_settle_the_same(
    engine: Engine, db_url: str, tmp_path: Path, record: Record
) -> None:
    in_order, expected_a = _day_files(tmp_path / "a", 800_000, "A")
    reverse, expected_b = _day_files(tmp_path / "b", 900_000, "B")
    list(collect_files(engine, in_order, secret=SECRET, now=lambda: NOW))
    refresh(engine, now=NOW)
    for path in reversed(reverse):  # labels first, newest day first, a refresh after each
        list(collect_files(engine, [path], secret=SECRET, now=lambda: NOW))
        refresh(engine, now=NOW)
    labels_a = _labels(engine, list(expected_a))
    labels_b = _labels(engine, list(expected_b))
    wrong = [k for k, v in expected_a.items() if labels_a.get(k) != v] + [
        k for k, v in expected_b.items() if labels_b.get(k) != v
    ]
    positives = sum(expected_b.values())
    right_a = len(expected_a) - sum(k in wrong for k in expected_a)
    record(
        area="collectors",
        fault="files out of order: labels before their predictions, newest day first",
        database=database_of(db_url),
        expected="every prediction lands and settles as it would in order (positive iff the "
        "outcome came within the horizon)",
        observed=f"{len(reverse)} files in reverse, {len(expected_b)} predictions: "
        f"{len(expected_b) - sum(k in wrong for k in expected_b)} settled right "
        f"({positives} positive); in order: {right_a} of "
        f"{len(expected_a)}",
        trials=len(reverse),
        failures=min(len(reverse), len({k for k in wrong if k in expected_b})),
    )
    assert len(labels_a) == len(labels_b) == DAYS * PER_DAY
    assert not wrong, wrong
