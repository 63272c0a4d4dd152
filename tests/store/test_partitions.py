"""Monthly partitions of `prediction` (PostgreSQL), the key table's idempotency across months,
retention on both backends, and migration 0008 with existing rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alembic import command
from collectors.runner import collect_files
from store.db import alembic_config, make_engine, upgrade
from store.models import (
    InputHistogram,
    LatencyHistogram,
    Prediction,
    PredictionRollup,
    ScoreHistogram,
    table_of,
)
from store.partitions import (
    DEFAULT_PARTITION,
    maintain_partitions,
    month_partitions,
    month_start_hour,
    retention_horizon,
)
from store.registry import sync_registry
from store.rollups import refresh
from tests.conftest import POSTGRES_URL, REGISTRY, _admin_engine
from tests.factories import prediction, write_jsonl

SECRET = "test-secret"
P = table_of(Prediction)
ROLLUP_TABLES = [table_of(m) for m in (PredictionRollup, ScoreHistogram, LatencyHistogram)]
ROLLUP_TABLES.append(table_of(InputHistogram))


def at(month: int, day: int, hour: int = 12) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def _collect(engine: Engine, *paths: Path) -> list[Any]:
    now = at(12, 1)
    return list(collect_files(engine, list(paths), secret=SECRET, now=lambda: now))


def _rows_per_table(engine: Engine) -> dict[str, int]:
    """Predictions per physical table (PostgreSQL: the partition each row is in)."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT tableoid::regclass::text, count(*) FROM prediction GROUP BY 1"
        ).all()
    return {name: int(n) for name, n in rows}


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


def _has_table(engine: Engine, name: str) -> bool:
    with engine.connect() as conn:
        return sa.inspect(conn).has_table(name)


def test_predictions_across_a_month_boundary_land_in_their_months_partitions(
    engine: Engine, tmp_path: Path
) -> None:
    scored = [at(8, 31, 22), at(8, 31, 23), at(9, 1, 0), at(9, 1, 1), at(9, 1, 2), at(10, 3)]
    path = write_jsonl(
        tmp_path / "predictions-1.jsonl",
        [prediction(n, scored=moment) for n, moment in enumerate(scored, 1)],
    )
    [result] = _collect(engine, path)
    assert (result.inserted, result.quarantined) == (6, 0)
    if engine.dialect.name == "sqlite":
        assert _count(engine, "prediction") == 6
        assert not _has_table(engine, "prediction_key")  # SQLite keeps its one table
        return
    assert _rows_per_table(engine) == {
        "prediction_2026_08": 2,
        "prediction_2026_09": 3,
        "prediction_2026_10": 1,
    }
    with engine.connect() as conn:
        assert {"prediction_2026_08", "prediction_2026_09", "prediction_2026_10"} <= set(
            month_partitions(conn)
        )
        keys: dict[str, int] = dict(
            conn.exec_driver_sql("SELECT prediction_id, scored_hour FROM prediction_key").all()
        )
        stored = dict(conn.execute(sa.select(P.c.prediction_id, P.c.scored_hour)).all())
    assert keys == stored and len(keys) == 6


def test_an_id_seen_again_in_another_month_is_a_duplicate_or_a_conflict(
    engine: Engine, tmp_path: Path
) -> None:
    august = at(8, 15)
    first = write_jsonl(
        tmp_path / "predictions-1.jsonl",
        [prediction(1, scored=august), prediction(2, scored=august)],
    )
    _collect(engine, first)
    # Again: id 1 as it was (a duplicate); id 2 scored in September (a conflict, whose month's
    # partition holds no row of id 2 yet); id 3 is new, in September.
    september = at(9, 20)
    again = write_jsonl(
        tmp_path / "predictions-2.jsonl",
        [
            prediction(1, scored=august),
            prediction(2, scored=september),
            prediction(3, scored=september),
        ],
    )
    [result] = _collect(engine, again)
    assert (result.inserted, result.duplicates, result.quarantined) == (1, 1, 1)
    assert result.reasons == {"duplicate_conflict": 1}
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(P.c.prediction_id, P.c.scored_at).order_by(P.c.prediction_id)
        ).all()
    assert [(pid, moment) for pid, moment in stored] == [
        ("det-UMC-000001", august),
        ("det-UMC-000002", august),  # the first version kept
        ("det-UMC-000003", september),
    ]
    if engine.dialect.name == "postgresql":
        assert _rows_per_table(engine) == {"prediction_2026_08": 2, "prediction_2026_09": 1}
        assert _count(engine, "prediction_key") == 3


def _rollups(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    snapshot = {}
    with engine.connect() as conn:
        for table in ROLLUP_TABLES:
            columns = [c for c in table.c if c.name not in ("id", "updated_at")]
            snapshot[table.name] = [tuple(r) for r in conn.execute(sa.select(*columns)).all()]
            snapshot[table.name].sort(key=repr)
    return snapshot


def test_retention_removes_exactly_the_expired_months_and_keeps_the_rollups(
    engine: Engine, tmp_path: Path
) -> None:
    months = {6: 3, 7: 4, 8: 2, 9: 5}  # month → predictions scored in it
    records: list[dict[str, Any] | str | bytes] = []
    n = 0
    for month, count in months.items():
        for day in range(1, count + 1):
            n += 1
            records.append(prediction(n, scored=at(month, 10 + day)))
    _collect(engine, write_jsonl(tmp_path / "predictions-1.jsonl", records))
    refresh(engine, now=at(9, 25))
    before = _rollups(engine)
    assert sum(row[6] for row in before["predictionrollup"]) == 14  # n, summed over hours

    now = at(9, 25)
    # 50 days before 25 Sep is 6 Aug: August is partly within retention, so it stays whole.
    report = maintain_partitions(engine, retention_days=50, now=now)
    horizon = month_start_hour((2026, 8))
    assert report.horizon_hour == horizon == retention_horizon(now, 50)
    with engine.connect() as conn:
        hours = list(conn.execute(sa.select(P.c.scored_hour)).scalars())
    assert len(hours) == 2 + 5 and min(hours) >= horizon
    if engine.dialect.name == "postgresql":
        assert report.dropped == {"prediction_2026_06": 3, "prediction_2026_07": 4}
        assert report.deleted_rows == 0
        with engine.connect() as conn:
            partitions = month_partitions(conn)
        assert "prediction_2026_06" not in partitions and "prediction_2026_07" not in partitions
        # The coming months are ready, and the keys left are exactly the rows left.
        assert {"prediction_2026_08", "prediction_2026_10", "prediction_2026_11"} <= set(partitions)
        assert _count(engine, "prediction_key") == 7
    else:
        assert (report.dropped, report.deleted_rows) == ({}, 7)
    assert _rollups(engine) == before
    refresh(engine, now=at(9, 26))  # nothing new: no expired hour is rebuilt from nothing
    assert _rollups(engine) == before
    again = maintain_partitions(engine, retention_days=50, now=now)
    assert (again.dropped, again.deleted_rows) == ({}, 0)
    # A file replayed after the removal: its June rows are refused, not stored (a refresh
    # would otherwise rebuild June's hours from them alone); its August row is new.
    replay = write_jsonl(
        tmp_path / "predictions-2.jsonl",
        [records[0], prediction(99, scored=at(6, 11)), prediction(100, scored=at(8, 20))],
    )
    [result] = _collect(engine, replay)
    assert (result.inserted, result.quarantined, result.reasons) == (1, 2, {"expired": 2})
    refresh(engine, now=at(9, 27))
    after = _rollups(engine)
    assert sum(row[6] for row in after["predictionrollup"]) == 15
    assert [r for r in after["predictionrollup"] if r[5] < horizon] == [
        r for r in before["predictionrollup"] if r[5] < horizon
    ]


@pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_rows_of_a_month_without_partition_wait_in_the_default_one(engine: Engine) -> None:
    hour = month_start_hour((2031, 1)) + 5
    row = {
        "prediction_id": "p-1", "model_id": 1, "version_id": 1, "site_id": 1,
        "encounter_key": "k", "trigger_at": at(1, 1), "scored_at": at(1, 1),
        "scored_hour": hour, "horizon_end": at(1, 2), "content_hash": "h",
    }  # fmt: skip
    with engine.begin() as conn:  # written outside the collectors: no partition made first
        conn.execute(sa.insert(P), [row])
    assert _rows_per_table(engine) == {DEFAULT_PARTITION: 1}
    report = maintain_partitions(engine, retention_days=None, now=at(11, 1))
    assert "prediction_2031_01" in report.created and report.moved_rows == 1
    assert _rows_per_table(engine) == {"prediction_2031_01": 1}


@pytest.fixture
def postgres_at_0007() -> Iterator[str]:
    """A PostgreSQL database migrated to 0007_ingest only, with the registry loaded."""
    if not POSTGRES_URL:
        pytest.skip("VIGIL_TEST_POSTGRES_URL is not set")
    admin = _admin_engine()
    name = f"vigil_part_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_engine(POSTGRES_URL).url.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url, "0007_ingest")
        engine = make_engine(url)
        sync_registry(engine, REGISTRY)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# 3,000 predictions every 30 minutes from 1 July 2026 (into 1 September), generated in SQL.
_HISTORY = """
INSERT INTO prediction (prediction_id, model_id, version_id, site_id, unit, arm, encounter_key,
    trigger_at, scored_at, scored_hour, horizon_end, score, alert, status, degraded,
    content_hash, ingested_at)
SELECT 'h' || g, m.id, v.id, s.id, '', 'control', md5('e' || g), t, t,
    floor(extract(epoch from t) / 3600)::int, t + interval '12 hours', (g % 100) / 100.0,
    false, 'ok', false, md5(g::text), t
FROM generate_series(1, 3000) AS g,
    LATERAL (SELECT TIMESTAMPTZ '2026-07-01 00:00+00' + g * interval '30 minutes') AS x(t),
    (SELECT min(id) AS id FROM model) AS m,
    LATERAL (SELECT min(id) AS id FROM modelversion WHERE model_id = m.id) AS v,
    (SELECT min(id) AS id FROM site) AS s
"""
_CONTENT = (
    "SELECT count(*), sum(id), md5(string_agg(id || prediction_id || content_hash || scored_hour"
    " || score, ',' ORDER BY id)) FROM prediction"
)


@pytest.mark.postgres
def test_migration_0008_keeps_every_row_and_its_key(postgres_at_0007: str, tmp_path: Path) -> None:
    engine = make_engine(postgres_at_0007)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(_HISTORY))
            before = conn.exec_driver_sql(_CONTENT).one()
            top = conn.execute(sa.select(sa.func.max(P.c.id))).scalar_one()
        upgrade(postgres_at_0007)
        with engine.connect() as conn:
            assert conn.exec_driver_sql(_CONTENT).one() == before
            assert (
                conn.exec_driver_sql(
                    "SELECT count(*) FROM prediction_key k JOIN prediction p USING (prediction_id) "
                    "WHERE k.content_hash = p.content_hash AND k.scored_hour = p.scored_hour"
                ).scalar_one()
                == before[0]
                == 3000
            )
        per_table = _rows_per_table(engine)
        assert per_table.pop(DEFAULT_PARTITION, 0) == 0
        assert set(per_table) == {"prediction_2026_07", "prediction_2026_08", "prediction_2026_09"}
        assert sum(per_table.values()) == 3000
        # The sequence went along: a new prediction's id follows the copied ones.
        path = write_jsonl(tmp_path / "predictions-1.jsonl", [prediction(1, scored=at(9, 2))])
        [result] = _collect(engine, path)
        assert result.inserted == 1
        with engine.connect() as conn:
            new_id = conn.execute(
                sa.select(P.c.id).where(P.c.prediction_id == "det-UMC-000001")
            ).scalar_one()
        assert new_id > top
        # And back: the plain table with its unique prediction_id, every row kept.
        command.downgrade(alembic_config(postgres_at_0007), "0007_ingest")
        with engine.connect() as conn:
            count = conn.exec_driver_sql("SELECT count(*) FROM prediction").scalar_one()
            assert count == 3001
            kinds = conn.exec_driver_sql(
                "SELECT relkind FROM pg_class WHERE relname = 'prediction'"
            ).scalar_one()
            assert kinds == "r"
            assert not sa.inspect(conn).has_table("prediction_key")
            unique = sa.inspect(conn).get_unique_constraints("prediction")
        assert [u["column_names"] for u in unique] == [["prediction_id"]]
    finally:
        engine.dispose()
