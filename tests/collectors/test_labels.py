"""Label settlement fed by the collectors: closures settle negatives, late labels update rollups."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from store.models import Prediction, PredictionRollup, table_of
from store.rollups import refresh
from tests.collectors.sources import NOW, SECRET, write_csv
from tests.factories import T0, encounter, outcome, prediction, write_jsonl

P, R = table_of(Prediction), table_of(PredictionRollup)


def _labels(engine: Engine) -> dict[str, int | None]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(P.c.prediction_id, P.c.label)).all()
    return {pid: label for pid, label in rows}


def _rollup(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(sa.func.sum(R.c.n), sa.func.sum(R.c.n_settled), sa.func.sum(R.c.n_positive))
        ).one()
    return tuple(int(v or 0) for v in row)  # type: ignore[return-value]


def test_closure_settles_negatives_and_a_late_label_turns_one_positive(
    engine: Engine, tmp_path: Path
) -> None:
    # Three scores at T0+1h, T0+2h, T0+3h on three encounters (12 h horizon, 48 h label lag).
    write_csv(tmp_path / "predictions-1.csv", [prediction(n) for n in (1, 2, 3)])
    write_jsonl(
        tmp_path / "encounters-1.jsonl",
        [encounter("UMC-E0000002", T0 + timedelta(hours=5))],  # closed before its horizon ended
    )
    list(collect_files(engine, [tmp_path], secret=SECRET, now=lambda: NOW))
    refresh(engine, now=T0 + timedelta(hours=56))  # the closure is older than the label lag
    assert _labels(engine) == {"det-UMC-000001": None, "det-UMC-000002": 0, "det-UMC-000003": None}
    refresh(engine, now=T0 + timedelta(days=4))  # horizon + label lag passed: all negative
    assert set(_labels(engine).values()) == {0}
    assert _rollup(engine) == (3, 3, 0)
    # A label recorded days late: the outcome happened 5 h after the first score.
    late = tmp_path / "late"
    late.mkdir()
    write_jsonl(
        late / "outcomes-late.jsonl",
        [outcome("UMC-E0000001", T0 + timedelta(hours=6), recorded_at="2026-09-05T00:00:00Z")],
    )
    list(collect_files(engine, [late], secret=SECRET, now=lambda: NOW))
    refresh(engine, now=T0 + timedelta(days=5))
    assert _labels(engine)["det-UMC-000001"] == 1
    assert _rollup(engine) == (3, 3, 1)
