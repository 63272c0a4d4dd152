"""Label settlement and hourly rollups against hand-worked cases and a pandas recomputation."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from store.models import (
    SCORE_BIN_EDGES,
    InputHistogram,
    LatencyHistogram,
    Prediction,
    PredictionRollup,
    ScoreHistogram,
    latency_bin,
    score_bin,
    table_of,
)
from store.rollups import refresh
from tests.factories import T0, encounter, outcome, prediction, write_jsonl

SECRET = "test-secret"
P = table_of(Prediction)


def _collect(engine: Engine, *paths: Path) -> None:
    list(collect_files(engine, list(paths), secret=SECRET, now=lambda: T0 + timedelta(days=60)))


def _labels(engine: Engine) -> dict[str, int | None]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(P.c.prediction_id, P.c.label)).all())


def test_settlement_follows_horizon_label_lag_closure_and_late_outcomes(
    engine: Engine, tmp_path: Path
) -> None:
    h = lambda hours: T0 + timedelta(hours=hours)  # noqa: E731
    _collect(
        engine,
        write_jsonl(
            tmp_path / "predictions-1.jsonl",
            [
                prediction(1, encounter_id="E1", scored=h(1)),  # outcome at 5 h: positive
                prediction(2, encounter_id="E1", scored=h(6)),  # after the outcome: negative later
                prediction(3, encounter_id="E2", scored=h(1)),  # discharged at 3 h: closure
                prediction(4, encounter_id="E3", scored=h(1)),  # late outcome flips it
                prediction(
                    5, encounter_id="E4", scored=h(1), status="error", score=None, delivered_at=None
                ),
            ],
        ),
        write_jsonl(tmp_path / "outcomes-1.jsonl", [outcome("E1", h(5))]),
        write_jsonl(tmp_path / "encounters-1.jsonl", [encounter("E2", h(3))]),
    )
    refresh(engine, now=h(10))
    assert _labels(engine) == {
        "det-UMC-000001": 1,
        "det-UMC-000002": None,
        "det-UMC-000003": None,
        "det-UMC-000004": None,
        "det-UMC-000005": None,
    }
    # 48 h label lag after the 3 h discharge: closure settles E2 before its horizon would.
    refresh(engine, now=h(3 + 48 + 1))
    assert _labels(engine)["det-UMC-000003"] == 0
    assert _labels(engine)["det-UMC-000002"] is None  # horizon ends at 18 h, lag runs to 66 h
    refresh(engine, now=h(18 + 48 + 1))
    labels = _labels(engine)
    assert labels["det-UMC-000002"] == 0
    assert labels["det-UMC-000004"] == 0
    assert labels["det-UMC-000005"] == 0  # failed scores settle too, but never count as scored
    # A prediction that arrives after its horizon and lag passed settles at the next run,
    # though its horizon lies before the cutoff the runs so far have settled up to.
    _collect(
        engine,
        write_jsonl(
            tmp_path / "predictions-late.jsonl",
            [prediction(6, encounter_id="E5", scored=h(2))],
        ),
    )
    refresh(engine, now=h(18 + 48 + 2))
    assert _labels(engine)["det-UMC-000006"] == 0
    # An outcome recorded very late still corrects the settled negative.
    _collect(
        engine,
        write_jsonl(
            tmp_path / "outcomes-late.jsonl",
            [outcome("E3", h(5), recorded_at="2026-09-05T00:00:00Z")],
        ),
    )
    result = refresh(engine, now=h(100))
    assert result.settled_positive == 1
    assert _labels(engine)["det-UMC-000004"] == 1


def test_rollups_equal_a_pandas_recomputation_from_raw_rows(engine: Engine, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    records = []
    for n in range(1, 401):
        score = float(rng.beta(1, 20))
        status = rng.choice(["ok", "ok", "ok", "ok", "error"])
        heart_rate = None if rng.random() < 0.1 else round(float(rng.normal(85, 20)), 1)
        records.append(
            prediction(
                n,
                encounter_id=f"E{n % 60}",
                unit=str(rng.choice(["4W", "5E"])),
                inputs={"heart_rate": heart_rate, "lactate": 1.0},
                scored=T0 + timedelta(minutes=int(rng.integers(0, 72 * 60))),
                site=str(rng.choice(["UMC", "RVH"])),
                arm=str(rng.choice(["control", "canary"])),
                model_version=str(rng.choice(["2.0.0", "2.1.0"])),
                score=None if status == "error" else round(score, 6),
                status=str(status),
                alert=bool(score > 0.1),
            )
        )
    outcomes = [
        outcome(f"E{k}", T0 + timedelta(hours=int(rng.integers(0, 72)))) for k in range(0, 60, 7)
    ]
    _collect(
        engine,
        write_jsonl(tmp_path / "predictions-r.jsonl", records),
        write_jsonl(tmp_path / "outcomes-r.jsonl", outcomes),
    )
    refresh(engine, now=T0 + timedelta(days=7))
    with engine.connect() as conn:
        raw = pd.read_sql(sa.select(P), conn)
        rollup = pd.read_sql(sa.select(table_of(PredictionRollup)), conn)
        hist = pd.read_sql(sa.select(table_of(ScoreHistogram)), conn)
        latency = pd.read_sql(sa.select(table_of(LatencyHistogram)), conn)
        inputs = pd.read_sql(sa.select(table_of(InputHistogram)), conn)
    assert raw["label"].notna().all()  # a week on, everything has settled
    raw["ok"] = raw["status"] == "ok"
    raw["settled_ok"] = raw["ok"] & raw["label"].notna()
    raw["p_settled"] = np.where(raw["settled_ok"], raw["score"].fillna(0), 0.0)
    raw["pos"] = raw["settled_ok"] & (raw["label"] == 1)
    expected = (
        raw.groupby(["model_id", "version_id", "site_id", "unit", "arm", "scored_hour"])
        .agg(
            n=("id", "size"),
            n_ok=("ok", "sum"),
            n_alert=("alert", "sum"),
            n_positive=("pos", "sum"),
            sum_p_settled=("p_settled", "sum"),
        )
        .reset_index()
        .rename(columns={"scored_hour": "hour"})
    )
    got = rollup.merge(
        expected,
        on=["model_id", "version_id", "site_id", "unit", "arm", "hour"],
        suffixes=("", "_pandas"),
        how="outer",
        indicator=True,
    )
    assert (got["_merge"] == "both").all()
    for column in ["n", "n_ok", "n_alert", "n_positive"]:
        assert (got[column] == got[f"{column}_pandas"]).all(), column
    np.testing.assert_allclose(got["sum_p_settled"], got["sum_p_settled_pandas"], rtol=1e-9)
    # The histogram partitions the scored predictions into the documented bins.
    ok = raw[raw["ok"]]
    assert hist["n"].sum() == len(ok)
    bins = ok["score"].map(score_bin).value_counts().sort_index()
    assert hist.groupby("bin")["n"].sum().sort_index().to_dict() == bins.to_dict()
    # Latency: the factory delivers 63 s after the trigger: every scored row is in one bin.
    assert latency.groupby("bin")["n"].sum().to_dict() == {latency_bin(63.0): len(ok)}
    # Inputs: heart rate binned with the registry's edges, missing values in bin -1.
    edges = [40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 160]
    rates = ok["inputs"].map(lambda d: d.get("heart_rate"))
    expected_bins = np.where(rates.isna(), -1, np.searchsorted(edges, rates.fillna(0), "right"))
    got_bins = inputs[inputs["feature"] == "heart_rate"].groupby("bin")["n"].sum().to_dict()
    want = pd.Series(expected_bins).value_counts().to_dict()
    assert got_bins == want
    assert set(inputs["feature"]) == {
        "heart_rate", "resp_rate", "sbp", "spo2", "lactate", "age"
    }  # fmt: skip


def test_refresh_only_rebuilds_hours_touched_since_the_last_run(
    engine: Engine, tmp_path: Path
) -> None:
    _collect(
        engine,
        write_jsonl(
            tmp_path / "predictions-a.jsonl",
            [prediction(n, scored=T0 + timedelta(hours=n)) for n in range(1, 11)],
        ),
    )
    first = refresh(engine, now=T0 + timedelta(hours=11))
    assert first.hours_rebuilt == 10
    assert refresh(engine, now=T0 + timedelta(hours=11, minutes=1)).hours_rebuilt == 0
    _collect(
        engine,
        write_jsonl(
            tmp_path / "predictions-b.jsonl",
            [prediction(99, scored=T0 + timedelta(hours=3, minutes=30))],
        ),
    )
    assert refresh(engine, now=T0 + timedelta(hours=11, minutes=2)).hours_rebuilt == 1


@pytest.mark.parametrize(
    ("score", "expected"),
    [(0.0, 0), (0.0004, 0), (0.0005, 1), (0.02, 13), (0.5, 31), (0.9999, 39), (1.0, 39)],
)
def test_score_bins(score: float, expected: int) -> None:
    assert score_bin(score) == expected
    assert SCORE_BIN_EDGES[expected] <= score


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(-3.0, 0), (0.0, 0), (4.9, 0), (5.0, 1), (299.0, 12), (300.0, 13), (9999.0, 22)],
)
def test_latency_bins(seconds: float, expected: int) -> None:
    assert latency_bin(seconds) == expected
