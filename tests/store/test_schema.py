"""The schema: migrations match the models, timestamps stay aware UTC, the registry syncs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from store.db import current_revision, make_engine
from store.models import JobState, Model, ModelVersion, Site
from store.partitions import is_partition_object
from store.registry import sync_registry
from tests.conftest import REGISTRY

UNIQUE_PREDICTION_ID = "uq_prediction_prediction_id"


def _modelled(name: str | None, type_: str, parent_names: Any) -> bool:
    """Leave out PostgreSQL's physical prediction tables (month partitions, the default
    partition, prediction_key), which no model describes; test_partitions checks them."""
    if type_ == "table":
        return not is_partition_object(name)
    if type_ in ("index", "unique_constraint", "column", "foreign_key_constraint"):
        return not is_partition_object(parent_names.get("table_name"))
    return True


def test_migrations_reach_head_and_match_the_models(engine: Engine) -> None:
    assert current_revision(engine) is not None
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": _modelled})
        diff = compare_metadata(context, SQLModel.metadata)
    if engine.dialect.name == "postgresql":
        # The partitioned table cannot hold a unique prediction_id (prediction_key does).
        unique_id = [
            d for d in diff if d[0] == "add_constraint" and d[1].name == UNIQUE_PREDICTION_ID
        ]
        assert len(unique_id) == 1, diff
        diff = [d for d in diff if d not in unique_id]
    assert diff == []


def test_timestamps_round_trip_as_aware_utc(engine: Engine) -> None:
    eastern = timezone(timedelta(hours=-5))
    written = datetime(2026, 3, 1, 7, 30, tzinfo=eastern)
    with Session(engine) as session:
        session.add(JobState(key="k", value="v", updated_at=written))
        session.commit()
    with Session(engine) as session:
        row = session.exec(select(JobState)).one()
    assert row.updated_at.tzinfo is not None
    assert row.updated_at == written
    assert row.updated_at.utcoffset() == timedelta(0)
    assert row.updated_at.hour == 12


def test_naive_timestamps_are_refused(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(JobState(key="k", value="v", updated_at=datetime(2026, 3, 1, 7, 30)))
        with pytest.raises(sa.exc.StatementError, match="naive datetime"):
            session.commit()


def test_registry_sync_is_idempotent(engine: Engine) -> None:
    again = sync_registry(engine, REGISTRY)
    assert again == {"sites": 5, "models": 2, "versions": 3, "deployments": 11}
    with Session(engine) as session:
        assert len(session.exec(select(Site)).all()) == 5
        assert len(session.exec(select(Model)).all()) == 2
        versions = session.exec(select(ModelVersion)).all()
    assert sorted(v.version for v in versions) == ["1.4.0", "2.0.0", "2.1.0"]


def test_sqlite_store_uses_wal(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/wal.db")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_utc_now_is_aware() -> None:
    from store.models import utcnow

    assert utcnow().tzinfo == UTC
