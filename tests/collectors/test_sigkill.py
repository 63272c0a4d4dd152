"""A real `python -m vigil collect` killed with SIGKILL at random points, then rerun, ends with
exactly the right rows: nothing lost, nothing doubled, no quarantine row twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.pseudonym import encounter_key
from store.models import IngestCheckpoint, Prediction, Quarantine, table_of
from tests.collectors.sources import write_csv
from tests.factories import prediction

REPO = Path(__file__).resolve().parents[2]
JSONL_ROWS, CSV_ROWS, BAD_EVERY = 12_000, 3_000, 499
SECRET = "sigkill-secret"


def _files(folder: Path) -> tuple[list[Path], int, int]:
    """A big JSON Lines file and a CSV file, with a bad line every BAD_EVERY lines."""
    folder.mkdir()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=5)
    rng = random.Random(5)
    good = bad = 0
    path = folder / "predictions-big.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for n in range(1, JSONL_ROWS + 1):
            if n % BAD_EVERY == 0:
                handle.write('{"prediction_id": "broken"\n')
                bad += 1
                continue
            record = prediction(
                n,
                scored=start + timedelta(seconds=10 * n),
                encounter_id=f"UMC-E{rng.randrange(10**7):07d}",
                score=round(rng.random(), 6),
            )
            handle.write(json.dumps(record) + "\n")
            good += 1
    records = [
        prediction(n, scored=start + timedelta(seconds=10 * n), score=round(rng.random(), 6))
        for n in range(JSONL_ROWS + 1, JSONL_ROWS + CSV_ROWS + 1)
    ]
    for i in range(0, len(records), BAD_EVERY):
        records[i]["score"] = 5.0
        bad += 1
    good += len(records) - len(range(0, len(records), BAD_EVERY))
    csv_path = write_csv(folder / "predictions-more.csv", records)
    return [path, csv_path], good, bad


def _counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.execute(sa.select(sa.func.count()).select_from(table_of(m))).scalar_one())
            for m in (Prediction, Quarantine)
        )


def _collect(db_url: str, files: list[Path], *, helper: bool) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "VIGIL_DATABASE_URL": db_url,
        "VIGIL_PSEUDONYM_KEY": SECRET,
        "VIGIL_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "vigil", "collect", *map(str, files)]
    command += ["--batch-size", "500", "--no-refresh", "--helper" if helper else "--no-helper"]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def test_sigkill_at_random_points_then_rerun_gives_exact_counts(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    files, good, bad = _files(tmp_path / "in")
    rng = random.Random(20260901)
    # Kill once the store holds a random share of the rows, at increasing shares.
    shares = sorted(rng.uniform(0.05, 0.9) for _ in range(3))
    killed_at = []
    # With and without the helper process that validates while the collector writes.
    for share, helper in zip(shares, (True, False, True), strict=True):
        process = _collect(db_url, files, helper=helper)
        target = int(share * good)
        deadline = time.monotonic() + 120
        while _counts(engine)[0] < target and process.poll() is None:
            assert time.monotonic() < deadline, "the collector made no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))  # land anywhere inside a chunk
        assert process.poll() is None, "the collector finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        killed_at.append(_counts(engine)[0])
    assert killed_at[0] > 0 and killed_at[-1] < good  # every kill was mid-ingest
    final = _collect(db_url, files, helper=True)
    _, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr.decode()
    assert _counts(engine) == (good, bad)
    with engine.connect() as conn:
        checkpoints = conn.execute(
            sa.select(table_of(IngestCheckpoint).c.complete, table_of(IngestCheckpoint).c.lines)
        ).all()
        first_key = conn.execute(
            sa.select(table_of(Prediction).c.encounter_key).where(
                table_of(Prediction).c.prediction_id == "det-UMC-000001"
            )
        ).scalar_one()
    assert sorted(tuple(c) for c in checkpoints) == [
        (True, CSV_ROWS + 1),
        (True, JSONL_ROWS),
    ]
    first_id = f"UMC-E{random.Random(5).randrange(10**7):07d}"
    assert first_key == encounter_key(first_id, SECRET)
