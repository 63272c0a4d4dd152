"""The daily tables against the hourly rollups they sum: after every refresh of a random store
(new hours rebuilt, label sums added in place), after rollup rows copied in with an old stamp,
and after an hour whose rows a rebuild removed, each daily row is its day's hourly sums."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from collectors.runner import collect_files
from store.models import (
    DailyInputHistogram,
    DailyRollup,
    DailyScoreHistogram,
    InputHistogram,
    Model,
    Prediction,
    PredictionRollup,
    ScoreHistogram,
    table_of,
)
from store.rollups import daily_backlog, rebuild_hours, refresh, sync_daily
from tests.factories import T0, write_jsonl
from tests.store.test_rollups_incremental import DAY, SECRET, STEP, _clock, _world

P = table_of(Prediction)
R, H, I = table_of(PredictionRollup), table_of(ScoreHistogram), table_of(InputHistogram)  # noqa: E741
DR, DH, DI = table_of(DailyRollup), table_of(DailyScoreHistogram), table_of(DailyInputHistogram)
ROLLUP_SUMS = (
    "n_ok", "n_on_time", "n_settled", "n_positive", "sum_p_settled", "sum_p2_settled",
    "sum_yp_settled", "n_alert_settled", "n_alert_positive",
)  # fmt: skip


def _expected(conn: Connection) -> dict[str, pd.DataFrame]:
    """The daily sums computed here, in pandas, from every hourly row."""
    rollup = pd.read_sql(sa.select(R), conn)
    rollup["n_failed"] = rollup["n_error"] + rollup["n_timeout"]
    score = pd.read_sql(sa.select(H), conn)
    inputs = pd.read_sql(sa.select(I), conn)
    out = {}
    for name, frame, keys, values in (
        ("rollup", rollup, [], [*ROLLUP_SUMS, "n_failed"]),
        ("score", score, ["bin"], ["n", "n_settled", "n_positive", "sum_p_settled",
                                    "sum_logit_settled"]),
        ("inputs", inputs, ["feature", "bin"], ["n"]),
    ):  # fmt: skip
        frame = frame.assign(day=frame["hour"] // 24)
        group = ["model_id", "site_id", "day", *keys]
        out[name] = (
            frame.groupby(group, as_index=False)[values]
            .sum()
            .sort_values(group)
            .reset_index(drop=True)
        )
    return out


def _stored(conn: Connection) -> dict[str, pd.DataFrame]:
    out = {}
    for name, table, keys in (
        ("rollup", DR, []),
        ("score", DH, ["bin"]),
        ("inputs", DI, ["feature", "bin"]),
    ):
        group = ["model_id", "site_id", "day", *keys]
        frame = pd.read_sql(sa.select(table), conn).drop(columns=["id"])
        out[name] = frame.sort_values(group).reset_index(drop=True)
    return out


def _assert_daily_equals_hourly(engine: Engine) -> int:
    with engine.connect() as conn:
        expected, stored = _expected(conn), _stored(conn)
    for name, frame in expected.items():
        other = stored[name]
        assert len(frame) == len(other), name
        for column in frame.columns:
            if frame[column].dtype.kind == "f":
                np.testing.assert_allclose(
                    other[column], frame[column], rtol=1e-12, atol=1e-12, err_msg=name
                )
            else:
                assert (frame[column].to_numpy() == other[column].to_numpy()).all(), (name, column)
    return len(expected["score"])


def _sync(engine: Engine) -> int:
    with engine.begin() as conn:
        return sync_daily(conn)


def test_daily_tables_follow_every_refresh(engine: Engine, tmp_path: Path) -> None:
    rng = np.random.default_rng(23)
    events = sorted(_world(rng), key=lambda e: e[0])
    done = 0
    times = [T0 + k * STEP for k in range(1, 41)] + [T0 + 40 * STEP + k * DAY for k in range(1, 37)]
    with engine.connect() as conn:
        models = [
            Model.model_validate(dict(r))
            for r in conn.execute(sa.select(table_of(Model))).mappings()
        ]
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
        refresh(engine, now=now)
        if step == 20:
            # Another job rebuilds hours stamped by the wall clock, far ahead of this world's
            # `now`: later refreshes stamp their label updates earlier than that.
            with engine.begin() as conn:
                hours = list(conn.execute(sa.select(R.c.hour).distinct()).scalars())
                for model in models:
                    rebuild_hours(conn, model, hours[::3], now=datetime.now(UTC))
            assert _sync(engine) > 0
        # Each refresh leaves the daily tables current: nothing is left for a sync.
        with engine.connect() as conn:
            assert daily_backlog(conn).days == {}, step
        assert _assert_daily_equals_hourly(engine) > 0
    assert _sync(engine) == 0

    # Rows copied in with an old stamp (as a bulk history load writes them) are found by id.
    with engine.begin() as conn:
        first_day = int(conn.execute(sa.select(sa.func.min(R.c.hour))).scalar_one()) // 24
        for table in (R, H, I):
            columns = [c for c in table.columns if c.name != "id"]
            values = [
                (c - 24 * 3).label("hour")
                if c.name == "hour"
                else (
                    sa.literal(T0 - timedelta(days=400), type_=c.type).label(c.name)
                    if c.name == "updated_at"
                    else c
                )
                for c in columns
            ]
            conn.execute(
                sa.insert(table).from_select(
                    [c.name for c in columns],
                    sa.select(*values).where(
                        table.c.hour >= 24 * first_day, table.c.hour < 24 * first_day + 24
                    ),
                )
            )
        assert daily_backlog(conn).days
    assert _sync(engine) > 0
    _assert_daily_equals_hourly(engine)

    # An hour whose every prediction is gone: its rebuild leaves no row behind to be found, so
    # the rebuild itself redoes the day.
    with engine.begin() as conn:
        model_id, hour = conn.execute(
            sa.select(R.c.model_id, R.c.hour).where(R.c.n_ok > 0).order_by(R.c.hour.desc()).limit(1)
        ).one()
        conn.execute(sa.delete(P).where(P.c.model_id == model_id, P.c.scored_hour == hour))
        model = Model.model_validate(
            dict(conn.execute(sa.select(table_of(Model)).where(table_of(Model).c.id == model_id))
                 .mappings().one())
        )  # fmt: skip
        before = conn.execute(
            sa.select(sa.func.sum(DR.c.n_ok)).where(
                DR.c.model_id == model_id, DR.c.day == hour // 24
            )
        ).scalar_one()
        rebuild_hours(conn, model, [hour], now=times[-1] + DAY)
        after = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(DR.c.n_ok), 0)).where(
                DR.c.model_id == model_id, DR.c.day == hour // 24
            )
        ).scalar_one()
    assert after < before
    _assert_daily_equals_hourly(engine)
