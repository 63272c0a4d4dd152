"""Incremental refresh against a full recompute: label sums added in place, closures found by
the closures, and inputs binned in SQL must leave every rollup table as rebuilding every hour
from raw rows would, and every label as the settlement rule says."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from store.models import (
    InputHistogram,
    JobState,
    LatencyHistogram,
    Model,
    Prediction,
    PredictionRollup,
    ScoreHistogram,
    table_of,
)
from store.rollups import CLOSURE_CUTOFF, rebuild_hours, refresh
from tests.factories import T0, encounter, outcome, prediction, write_jsonl

SECRET = "test-secret"
P = table_of(Prediction)
TABLES = {
    "rollup": table_of(PredictionRollup),
    "score": table_of(ScoreHistogram),
    "latency": table_of(LatencyHistogram),
    "inputs": table_of(InputHistogram),
}
STEP = timedelta(hours=6)
DAY = timedelta(days=1)
STEPS = 24
MODELS = {"deterioration": (12, "deterioration"), "readmission": (720, "readmission_30d")}


def _world(rng: np.random.Generator) -> list[tuple[datetime, str, dict[str, Any]]]:
    """(arrival time, kind, record): predictions, outcomes and closures, some arriving late."""
    events: list[tuple[datetime, str, dict[str, Any]]] = []
    for n in range(1, 501):
        model = str(rng.choice(list(MODELS)))
        horizon, outcome_name = MODELS[model]
        site = str(rng.choice(["UMC", "RVH"]))
        enc = f"{site}-E{int(rng.integers(0, 80)):04d}"
        scored = T0 + timedelta(minutes=int(rng.integers(0, STEPS * 6 * 60 - 600)))
        status = str(rng.choice(["ok"] * 5 + ["error"]))
        score = float(rng.beta(1, 8))
        late = timedelta(hours=float(rng.choice([0, 0, 0, 9])))  # late deliveries
        events.append(
            (
                scored + timedelta(minutes=5) + late,
                "predictions",
                prediction(
                    n,
                    model=model,
                    model_version="2.0.0" if model == "deterioration" else "1.4.0",
                    site=site,
                    unit=str(rng.choice(["4W", "5E"])),
                    encounter_id=enc,
                    scored=scored,
                    status=status,
                    score=None if status == "error" else round(score, 6),
                    alert=bool(score > 0.2),
                    arm="control",
                    inputs={
                        "heart_rate": None
                        if rng.random() < 0.1
                        else round(float(rng.normal(85, 25)), 1),
                        "age": float(rng.integers(15, 95)),
                        "los_days": float(rng.integers(0, 35)),
                    },
                ),
            )
        )
        if rng.random() < 0.25:  # an outcome within or beyond the horizon, maybe recorded late
            at = scored + timedelta(hours=float(rng.uniform(0, 1.3 * horizon)))
            recorded = at + timedelta(hours=float(rng.choice([1, 1, 60, 100])))
            events.append(
                (
                    recorded,
                    "outcomes",
                    outcome(enc, at, site=site, outcome=outcome_name, recorded_at=_iso(recorded)),
                )
            )
    for k in range(80):  # closures, some recorded days after discharge
        for site in ("UMC", "RVH"):
            discharged = T0 + timedelta(hours=float(rng.uniform(2, STEPS * 6)))
            recorded = discharged + timedelta(hours=float(rng.choice([1, 1, 1, 80])))
            events.append(
                (
                    recorded,
                    "encounters",
                    encounter(
                        f"{site}-E{k:04d}", discharged, site=site, recorded_at=_iso(recorded)
                    ),
                )
            )
    return events


def _clock(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _tables(engine: Engine) -> dict[str, pd.DataFrame]:
    out = {}
    with engine.connect() as conn:
        for name, table in TABLES.items():
            columns = [c for c in table.columns if c.name not in ("id", "updated_at")]
            frame = pd.read_sql(sa.select(*columns), conn)
            keys = [
                c.name
                for c in columns
                if c.name in ("model_id", "version_id", "site_id", "unit", "arm", "hour")
                or c.name in ("bin", "feature")
            ]
            out[name] = frame.sort_values(keys).reset_index(drop=True)
    return out


def test_incremental_refresh_equals_a_full_recompute(engine: Engine, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    events = sorted(_world(rng), key=lambda e: e[0])
    done = 0
    updated_in_place = 0
    # Every 6 hours while the world runs, then daily until the last label has settled.
    times = [T0 + k * STEP for k in range(1, 41)] + [T0 + 40 * STEP + k * DAY for k in range(1, 37)]
    for step, now in enumerate(times):
        batch = [e for e in events[done:] if e[0] <= now]
        done += len(batch)
        files = []
        for kind in ("predictions", "outcomes", "encounters"):
            records: list[dict[str, Any] | str | bytes] = [r for _, k, r in batch if k == kind]
            if records:
                files.append(write_jsonl(tmp_path / f"{kind}-{step}.jsonl", records))
        if files:
            list(collect_files(engine, files, secret=SECRET, now=_clock(now)))
        updated_in_place += refresh(engine, now=now).hours_updated
    assert done == len(events)
    assert updated_in_place > 0  # the in-place path was taken
    incremental = _tables(engine)

    with engine.begin() as conn:
        models = [
            Model.model_validate(dict(r))
            for r in conn.execute(sa.select(table_of(Model))).mappings()
        ]
        hours = list(conn.execute(sa.select(P.c.scored_hour).distinct()).scalars())
        for model in models:
            rebuild_hours(conn, model, hours, now=now)
    full = _tables(engine)
    for name, frame in incremental.items():
        other = full[name]
        assert len(frame) == len(other), name
        for column in frame.columns:
            if frame[column].dtype.kind == "f":
                np.testing.assert_allclose(frame[column], other[column], rtol=1e-9, err_msg=name)
            else:
                assert (frame[column] == other[column]).all(), (name, column)

    # Labels follow the rule: positive when the outcome fell within the horizon, else negative
    # (everything has settled by now); and a full closure scan finds nothing left to settle.
    with engine.connect() as conn:
        raw = pd.read_sql(sa.select(P.c.model_id, P.c.encounter_key, P.c.scored_at,
                                    P.c.horizon_end, P.c.label), conn)  # fmt: skip
        outcomes = pd.read_sql(
            sa.text("SELECT encounter_key, outcome, outcome_at FROM outcome"), conn
        )
        names = dict(conn.execute(sa.select(table_of(Model).c.id, table_of(Model).c.outcome)).all())
    raw["outcome"] = raw["model_id"].map(names)
    joined = raw.reset_index().merge(outcomes, on=["encounter_key", "outcome"], how="left")
    joined["hit"] = (joined["outcome_at"] >= joined["scored_at"]) & (
        joined["outcome_at"] <= joined["horizon_end"]
    )
    expected = joined.groupby("index")["hit"].any().sort_index().astype(int)
    assert raw["label"].notna().all()
    assert (raw["label"].astype(int).to_numpy() == expected.to_numpy()).all()
    assert expected.sum() > 0

    J = table_of(JobState)
    with engine.begin() as conn:
        conn.execute(sa.delete(J).where(J.c.key.like(CLOSURE_CUTOFF.format(model_id="%"))))
    again = refresh(engine, now=now)
    assert (again.settled_positive, again.settled_negative) == (0, 0)


def test_closures_settle_when_their_lag_passes_and_when_they_arrive_late(
    engine: Engine, tmp_path: Path
) -> None:
    h = lambda hours: T0 + timedelta(hours=hours)  # noqa: E731

    def collect(name: str, records: list[dict[str, Any] | str | bytes], at: datetime) -> None:
        list(collect_files(engine, [write_jsonl(tmp_path / name, records)], secret=SECRET,
                           now=lambda: at))  # fmt: skip

    def labels() -> dict[str, int | None]:
        with engine.connect() as conn:
            return dict(conn.execute(sa.select(P.c.prediction_id, P.c.label)).all())

    collect(
        "predictions-1.jsonl",
        [
            prediction(1, encounter_id="E1", scored=h(1)),  # closure on time
            prediction(2, encounter_id="E2", scored=h(1)),  # closure recorded late
            prediction(3, encounter_id="E3", scored=h(1)),  # no closure: the horizon decides
        ],
        h(1),
    )
    collect("encounters-1.jsonl", [encounter("E1", h(4))], h(5))
    refresh(engine, now=h(5))  # the first run reads every pending prediction
    refresh(engine, now=h(4 + 48 - 1))  # the 48 h label lag has not passed
    assert labels() == {"det-UMC-000001": None, "det-UMC-000002": None, "det-UMC-000003": None}
    refresh(engine, now=h(4 + 48 + 1))  # it has: E1 is due by time
    assert labels()["det-UMC-000001"] == 0
    collect("encounters-2.jsonl", [encounter("E2", h(6))], h(60))
    # E2 was discharged before the last cutoff but arrived after it: due by arrival.
    refresh(engine, now=h(60))
    assert labels() == {"det-UMC-000001": 0, "det-UMC-000002": 0, "det-UMC-000003": None}
    # A prediction of an already closed encounter, delivered late, settles on arrival.
    collect("predictions-2.jsonl", [prediction(4, encounter_id="E1", scored=h(2))], h(61))
    refresh(engine, now=h(61))
    assert labels()["det-UMC-000004"] == 0
