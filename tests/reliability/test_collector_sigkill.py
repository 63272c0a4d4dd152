"""SIGKILL of a collector at random points, twenty times per database: after a rerun no row
is lost or doubled and no quarantine row appears twice.

Each round writes new files (new prediction ids, a bad line every BAD_EVERY lines), kills a
collector process KILLS_PER_ROUND times at random shares of the file, then reruns it to the
end and compares the store with the files. The collector is a forked process running the
same `collect_files` the CLI and the scheduler run (tests/collectors/test_sigkill.py kills the
`vigil collect` command itself, with its helper processes).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from store.db import make_engine
from store.models import Prediction, Quarantine, table_of
from tests.factories import prediction
from tests.reliability.conftest import Record, database_of

ROUNDS, KILLS_PER_ROUND = 5, 4
ROWS, BAD_EVERY, BATCH = 6_000, 397, 250
SECRET = "reliability-sigkill"


def _round_files(folder: Path, round_no: int, rng: random.Random) -> tuple[list[Path], int, int]:
    folder.mkdir(parents=True)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    good = bad = 0
    path = folder / f"predictions-round{round_no}.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for i in range(1, ROWS + 1):
            n = round_no * ROWS + i
            if i % BAD_EVERY == 0:
                handle.write('{"prediction_id": "cut off\n')
                bad += 1
                continue
            record = prediction(n, scored=start + timedelta(seconds=5 * i), score=rng.random())
            handle.write(json.dumps(record) + "\n")
            good += 1
    return [path], good, bad


def _counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(table_of(Prediction))
                ).scalar_one()
            ),
            int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(table_of(Quarantine))
                ).scalar_one()
            ),
        )


def _collect(db_url: str, files: list[Path]) -> None:
    engine = make_engine(db_url)
    for outcome in collect_files(engine, files, secret=SECRET, batch_units=BATCH, helper=False):
        assert not isinstance(outcome, Exception), outcome
    engine.dispose()
    os._exit(0)


def test_sigkill_of_the_collector_at_random_points(
    engine: Engine, db_url: str, tmp_path: Path, record: Record
) -> None:
    rng = random.Random(20261127)
    fork = multiprocessing.get_context("fork")
    expected = (0, 0)
    kills = mid_file = failures = 0
    wrong: list[str] = []
    for round_no in range(ROUNDS):
        files, good, bad = _round_files(tmp_path / f"round{round_no}", round_no, rng)
        before = _counts(engine)[0]
        for share in sorted(rng.uniform(0.05, 0.95) for _ in range(KILLS_PER_ROUND)):
            engine.dispose()  # the child must not share the parent's pooled connections
            child = fork.Process(target=_collect, args=(db_url, files))
            child.start()
            target = before + int(share * good)
            deadline = time.monotonic() + 120
            while _counts(engine)[0] < target and child.is_alive():
                assert time.monotonic() < deadline, "the collector made no progress"
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.02))  # anywhere inside a batch
            if child.is_alive():
                os.kill(child.pid or 0, signal.SIGKILL)
                mid_file += 1
            child.join(timeout=30)
            kills += 1
        engine.dispose()
        rerun = fork.Process(target=_collect, args=(db_url, files))
        rerun.start()
        rerun.join(timeout=300)
        assert rerun.exitcode == 0
        expected = (expected[0] + good, expected[1] + bad)
        observed = _counts(engine)
        if observed != expected:
            failures += KILLS_PER_ROUND
            wrong.append(f"round {round_no}: {observed} rows/quarantined, expected {expected}")
    record(
        area="collectors",
        fault="collector killed with SIGKILL at a random point, then rerun",
        database=database_of(db_url),
        expected="after the rerun every good row once, every bad line quarantined once",
        observed=f"{kills} kills ({mid_file} mid-file) over {ROUNDS} rounds of {ROWS} lines; "
        f"final store {expected[0]} predictions, {expected[1]} quarantined"
        + (f"; {'; '.join(wrong)}" if wrong else ", exactly as written"),
        trials=kills,
        failures=failures,
    )
    assert not wrong, wrong
    assert mid_file >= kills * 3 // 4, "most kills must land mid-file"
