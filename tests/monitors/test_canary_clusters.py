"""The canary's kept per-encounter counts against the same sums straight from raw predictions.

The seeded demo's canary (deterioration 2.1.0 at UMC) is loaded in stages through the
collectors: its period so far, then six more hours, then an outcome that turns an encounter's
negative labels positive. After each stage's refresh the kept sums must equal the database's
own GROUP BY over every raw row of the period (`cluster_query`), and after the first they
must have been brought up to date, not rebuilt.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from collectors.pseudonym import encounter_key
from collectors.runner import collect_files
from monitors import canary_clusters
from monitors.canary_clusters import (
    CE,
    Arms,
    Clusters,
    add_encounters,
    cluster_query,
    clusters_of,
    forget_others,
    maintained_clusters,
)
from monitors.canary_runner import P, find_canaries, first_canary_hour, hour_of, raw_window
from seed_data.generator import SeedConfig, generate
from store.rollups import refresh
from tests.conftest import REPO

SECRET = "canary-clusters-test"
T1 = datetime(2026, 8, 31, tzinfo=UTC)
T2 = T1 + timedelta(hours=6)
T3 = T2 + timedelta(hours=1)


def _world(end: datetime) -> SeedConfig:
    return SeedConfig(end=end, days=13, sites=1, registry_path=REPO / "config" / "registry.yaml")


@pytest.fixture(scope="module")
def drops(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The canary period up to T1 (13 days at UMC), and the six hours after it."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    generate(_world(T1), first)
    generate(_world(T2), second, start=T1)
    return first, second


def _collect(engine: Engine, folder: Path, now: datetime, **refresh_args: Any) -> None:
    outcomes = list(collect_files(engine, [folder], secret=SECRET))
    assert outcomes and not [o for o in outcomes if isinstance(o, Exception)]
    refresh(engine, now=now, **refresh_args)


def _raw(conn: Connection, arms: Arms, first: int, end_hour: int) -> Clusters:
    return cluster_query(
        conn,
        group=arms.label(),
        where=sa.and_(
            raw_window(conn.dialect.name, arms.model_id, arms.site_id, first, end_hour),
            arms.member(),
        ),
        latency_slo_seconds=arms.latency_slo_seconds,
    )


def _both(conn: Connection, now: datetime) -> tuple[Clusters, Clusters]:
    """(kept, from raw rows) over the canary period up to `now`'s hour, inclusive; and the
    same check for a fixed window of its first three days (as the planned analysis's)."""
    (canary,) = find_canaries(conn)
    first = first_canary_hour(conn, canary)
    assert first is not None
    end_hour = hour_of(now) + 1
    arms = canary.arms
    planned = arms.kept("planned")
    fixed = maintained_clusters(conn, planned, first_hour=first, end_hour=first + 72)
    assert fixed == _raw(conn, planned, first, first + 72)
    kept = maintained_clusters(conn, arms, first_hour=first, end_hour=end_hour)
    return kept, _raw(conn, arms, first, end_hour)


def _rebuilds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls of the from-scratch path (still running it)."""
    calls: list[int] = []
    rebuild = canary_clusters._rebuild

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return rebuild(*args, **kwargs)

    monkeypatch.setattr(canary_clusters, "_rebuild", counted)
    return calls


def _a_negative_canary_encounter(folder: Path, conn: Connection) -> tuple[str, datetime]:
    """A raw encounter id with an ok score of the canary arm settled negative, and the time
    of that score."""
    (canary,) = find_canaries(conn)
    key, scored = conn.execute(
        sa.select(P.c.encounter_key, P.c.scored_at)
        .where(
            P.c.arm == "canary",
            P.c.version_id == canary.version_id,
            P.c.label == 0,
            P.c.status == "ok",
        )
        .order_by(P.c.scored_at)
        .limit(1)
    ).one()
    for path in sorted(folder.glob("predictions-*.jsonl")):
        for line in path.read_text().splitlines():
            raw_id = json.loads(line)["encounter_id"]
            if encounter_key(raw_id, SECRET) == key:
                return raw_id, scored
    raise AssertionError("the encounter is not in the drop")


def test_kept_sums_follow_new_rows_and_settlements_and_equal_raw_sums(
    engine: Engine, drops: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_drop, second_drop = drops
    _collect(engine, first_drop, T1)
    with engine.begin() as conn:
        kept, raw = _both(conn, T1)  # the first run: from raw rows
    assert kept == raw
    assert kept["canary"]["scores"][0] > 1000 and kept["control"]["scores"][0] > 1000
    assert kept["canary"]["scores"][1] > kept["canary"]["scores"][0]  # encounters repeat

    rebuilds = _rebuilds(monkeypatch)
    _collect(engine, second_drop, T2)  # six more hours, and what settled meanwhile
    with engine.begin() as conn:
        kept, raw = _both(conn, T2)
    assert kept == raw
    assert rebuilds == []
    scores_after_six_hours = kept["canary"]["scores"][0]

    # A late outcome within the horizon turns an encounter's negative labels positive.
    with engine.connect() as conn:
        raw_id, scored = _a_negative_canary_encounter(first_drop, conn)
    positives_before = sum(arm["positives"][0] for arm in kept.values())
    outcome = {
        "encounter_id": raw_id,
        "site": "UMC",
        "outcome": "deterioration",
        "outcome_at": (scored + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "recorded_at": T3.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    late = tmp_path / "late"
    late.mkdir()
    (late / "outcomes-late.jsonl").write_text(json.dumps(outcome) + "\n")
    _collect(engine, late, T3)
    with engine.begin() as conn:
        (canary,) = find_canaries(conn)
        flipped = conn.execute(
            sa.select(sa.func.count()).where(
                P.c.encounter_key == encounter_key(raw_id, SECRET),
                P.c.label == 1,
                P.c.status == "ok",
                P.c.settled_at == T3,
                P.c.scored_hour >= first_canary_hour(conn, canary),
                canary.arms.member(),
            )
        ).scalar_one()
        kept, raw = _both(conn, T3)
    assert flipped > 0
    assert kept == raw
    assert sum(arm["positives"][0] for arm in kept.values()) == positives_before + flipped
    assert kept["canary"]["scores"][0] == scores_after_six_hours  # no new scores
    assert rebuilds == []

    # A refresh that re-stamps settlements (not in place) makes the next run start over.
    _collect(engine, late, T3, incremental=False)
    with engine.begin() as conn:
        kept, raw = _both(conn, T3)
    assert kept == raw
    assert rebuilds == [1, 1]  # both windows

    # A canary no longer deployed loses its kept counts.
    with engine.begin() as conn:
        assert forget_others(conn, []) == 2  # the period so far and the fixed window
        assert conn.execute(sa.select(sa.func.count()).select_from(CE)).scalar_one() == 0


def test_sums_of_encounters_add_and_take_back() -> None:
    rows = [("canary", 3, 1, 0, 0, 0, 1, 1, 1), ("canary", 2, 0, 1, 0, 0, 0, 0, 0)]
    sums = add_encounters({}, rows)
    clusters = clusters_of(sums)["canary"]
    assert clusters["scores"] == (5.0, 13.0)  # 3 + 2, 9 + 4
    assert clusters["errors"] == (1.0, 1.0)
    assert clusters["alerts_settled"] == (1.0, 1.0)
    add_encounters(sums, rows[:1], sign=-1)
    assert clusters_of(sums)["canary"]["scores"] == (2.0, 4.0)
    assert clusters_of(sums)["canary"]["alerts_settled"] == (0.0, 0.0)
