"""On PostgreSQL with a realistic volume, every query a steady-state cycle sends to the
prediction table uses an index: label settlement, the rollup rebuild of the new hour, and the
monitors' reads of raw windows (SLOs, alert burden, freshness, canary). The table is
partitioned by month (migration 0008): no partition may be scanned sequentially, and the
rollup rebuild's reads of given hours touch only those hours' month partitions.

The store holds 300,000 predictions over 60 days at five sites (generated in SQL), their
outcomes and closures, and is ANALYZEd; the history is marked as already rolled up, one new
hour of predictions and outcomes arrives, and a cycle (refresh, then every monitor) runs with
every statement captured. Each captured statement that reads or updates `prediction` is then
EXPLAINed with its own parameters, and no plan may scan the table sequentially.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from monitors.config import MonitorConfig
from monitors.registry import default_registry
from store.models import Model, Outcome, Prediction, Site, table_of
from store.partitions import maintain_partitions, month_of_hour, partition_name
from store.rollups import WM_OUTCOME, WM_PREDICTION, refresh, set_state

NOW = datetime(2026, 9, 1, tzinfo=UTC)
HISTORY = 200_000
HISTORY_START = NOW - timedelta(days=60)
NEW_HOUR = 250
READS_PREDICTION = re.compile(r"\b(FROM|UPDATE|JOIN)\s+prediction\b", re.IGNORECASE)
SEQ_SCAN = re.compile(r"Seq Scan on (prediction(_\w+)?)(\s|$)", re.MULTILINE)
SCANNED = re.compile(r" on (prediction_(\d{4}_\d{2}|default))\b")

# One row per generated prediction: model k alternates, sites cycle, twelve consecutive rows
# share an encounter; labels are settled once the horizon and the label lag have passed.
_PREDICTIONS = """
INSERT INTO prediction (prediction_id, model_id, version_id, site_id, unit, arm, encounter_key,
    trigger_at, scored_at, delivered_at, scored_hour, horizon_end, score, score_bin,
    score_logit, threshold, alert, status, latency_seconds, latency_bin, degraded,
    content_hash, label, settled_at, ingested_at)
SELECT :prefix || g, (CAST(:models AS int[]))[k + 1], (CAST(:versions AS int[]))[k + 1],
    (CAST(:sites AS int[]))[(g / 2) % 5 + 1], 'U' || (g % 4), 'control',
    md5('e' || (g / 12)), t, t, t + interval '90 seconds',
    floor(extract(epoch from t) / 3600)::int,
    t + make_interval(hours => (CAST(:horizons AS int[]))[k + 1]), 0.02 + 0.9 * r,
    least(19, floor(r * 20)::int), ln((0.02 + 0.9 * r) / (0.98 - 0.9 * r)), 0.5, r > 0.9, 'ok',
    90, 2, false, md5(g::text),
    CASE WHEN t + make_interval(hours => (CAST(:settle AS int[]))[k + 1]) < :now
         THEN (r > 0.85)::int END,
    CASE WHEN t + make_interval(hours => (CAST(:settle AS int[]))[k + 1]) < :now
         THEN t + make_interval(hours => (CAST(:settle AS int[]))[k + 1]) END,
    t
FROM (
    SELECT g, g % 2 AS k, random() AS r,
           CAST(:start AS timestamptz) + make_interval(secs => (g - :first) * :step) AS t
    FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS g
) AS generated
"""
_OUTCOMES = """
INSERT INTO outcome (encounter_key, site_id, outcome, outcome_at, recorded_at, ingested_at)
SELECT md5('e' || e), (CAST(:sites AS int[]))[e % 5 + 1], (CAST(:outcomes AS text[]))[e % 2 + 1],
    CAST(:start AS timestamptz) + make_interval(secs => e * 12 * :step + :late),
    CAST(:start AS timestamptz) + make_interval(secs => e * 12 * :step + :late + 3600), :now
FROM generate_series(CAST(:first AS int), CAST(:last AS int), 7) AS e
"""
_ENCOUNTERS = """
INSERT INTO encounter (encounter_key, site_id, unit, admitted_at, discharged_at, recorded_at,
    ingested_at)
SELECT md5('e' || e), (CAST(:sites AS int[]))[e % 5 + 1], 'U1',
    CAST(:start AS timestamptz) + make_interval(secs => e * 12 * :step),
    CAST(:start AS timestamptz) + make_interval(secs => e * 12 * :step + 86400 * 3),
    CAST(:start AS timestamptz) + make_interval(secs => e * 12 * :step + 86400 * 3 + 600), :now
FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS e
WHERE CAST(:start AS timestamptz) + make_interval(secs => e * 12 * :step + 86400 * 3) < :now
"""


def _load(engine: Engine) -> None:
    # The daily job has made the months' partitions (here: July to October 2026).
    maintain_partitions(engine, retention_days=None, now=HISTORY_START, months_ahead=3)
    with engine.begin() as conn:
        models = [
            Model.model_validate(dict(r))
            for r in conn.execute(sa.select(table_of(Model)).order_by("id")).mappings()
        ][:2]
        V = sa.table("modelversion", sa.column("id"), sa.column("model_id"))
        versions = [
            conn.execute(sa.select(sa.func.min(V.c.id)).where(V.c.model_id == m.id)).scalar_one()
            for m in models
        ]
        sites = list(conn.execute(sa.select(table_of(Site).c.id).order_by("id")).scalars())[:5]
        common = {
            "models": [m.id for m in models],
            "versions": versions,
            "sites": sites,
            "horizons": [m.horizon_hours for m in models],
            "settle": [m.horizon_hours + m.label_lag_hours for m in models],
            "now": NOW,
        }
        step = (NOW - timedelta(hours=1) - HISTORY_START).total_seconds() / HISTORY
        history = {"start": HISTORY_START, "step": step, "first": 1, "last": HISTORY}
        conn.execute(sa.text(_PREDICTIONS), {**common, **history, "prefix": "h"})
        encounters = {**history, "first": 0, "last": HISTORY // 12}
        outcomes = [m.outcome for m in models]
        conn.execute(
            sa.text(_OUTCOMES),
            {"sites": sites, "outcomes": outcomes, "now": NOW, "late": 3600, **encounters},
        )
        conn.execute(sa.text(_ENCOUNTERS), {"sites": sites, "now": NOW, **encounters})
        # The history has been rolled up before: the next refresh starts after it.
        top_p = conn.execute(sa.select(sa.func.max(table_of(Prediction).c.id))).scalar_one()
        top_o = conn.execute(sa.select(sa.func.max(table_of(Outcome).c.id))).scalar_one()
        set_state(conn, WM_PREDICTION, str(top_p))
        set_state(conn, WM_OUTCOME, str(top_o))
        # One new hour: predictions, and outcomes of encounters scored in the last day.
        new = {
            "start": NOW - timedelta(hours=1),
            "step": 3600 / NEW_HOUR,
            "first": HISTORY + 1,
            "last": HISTORY + NEW_HOUR,
        }
        conn.execute(sa.text(_PREDICTIONS), {**common, **new, "prefix": "n"})
        last_day = {**history, "first": (HISTORY - 1500) // 12, "last": HISTORY // 12}
        conn.execute(
            sa.text(_OUTCOMES),
            {"sites": sites, "outcomes": outcomes, "now": NOW, "late": 1800, **last_day},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))


def _capture(engine: Engine) -> tuple[list[tuple[str, Any]], Any]:
    captured: list[tuple[str, Any]] = []

    def listener(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                 executemany: bool) -> None:  # fmt: skip
        if not executemany and READS_PREDICTION.search(statement):
            captured.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", listener)
    return captured, listener


def _plan(engine: Engine, statement: str, parameters: Any) -> str:
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("EXPLAIN " + statement, parameters)
        return "\n".join(row[0] for row in cursor.fetchall())
    finally:
        raw.rollback()
        raw.close()


@pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_a_steady_state_cycle_never_scans_the_prediction_table(engine: Engine) -> None:
    _load(engine)
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(table_of(Prediction)))
        assert count.scalar_one() == HISTORY + NEW_HOUR
    captured, listener = _capture(engine)
    try:
        result = refresh(engine, now=NOW)
        config = MonitorConfig.from_file()
        for monitor in default_registry():
            monitor.run(engine, config, NOW)
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)
    assert result.new_predictions == NEW_HOUR
    assert result.settled_positive > 0  # the new outcomes reached settled history
    assert result.hours_rebuilt >= 2
    # Settlement, the rollup rebuild and the monitors' raw reads were all seen.
    text = "\n".join(s for s, _ in captured)
    for fragment in ("UPDATE prediction", "INSERT INTO predictionrollup", "scored_at >="):
        assert fragment in text, fragment
    with engine.connect() as conn:
        per_table: dict[str, int] = dict(
            conn.exec_driver_sql(
                "SELECT tableoid::regclass::text, count(*) FROM prediction GROUP BY 1"
            ).all()
        )
        # Each partition's index, named after the parent's (ix_prediction_pending, ...).
        parents: dict[str, str] = dict(
            conn.exec_driver_sql(
                "SELECT c.relname, p.relname FROM pg_inherits AS i "
                "JOIN pg_class AS c ON c.oid = i.inhrelid "
                "JOIN pg_class AS p ON p.oid = i.inhparent WHERE p.relkind = 'I'"
            ).all()
        )
    assert set(per_table) == {"prediction_2026_07", "prediction_2026_08"}, per_table
    index_name = re.compile("|".join(sorted(map(re.escape, parents), key=len, reverse=True)))
    scans, pending, pruned = [], 0, 0
    for statement, parameters in captured:
        plan = index_name.sub(lambda m: parents[m.group(0)], _plan(engine, statement, parameters))
        # An empty partition (the default one, September) may be "scanned": it has no rows.
        if any(m.group(1) in per_table for m in SEQ_SCAN.finditer(plan)):
            scans.append(f"{statement}\n{plan}")
        if "scored_hour IN" in statement and isinstance(parameters, dict):
            # The rollup rebuild reads given hours: only their months' partitions are read.
            hours = [v for k, v in parameters.items() if k.startswith("scored_hour_")]
            wanted = {partition_name(month_of_hour(int(h))) for h in hours}
            assert wanted and {m.group(1) for m in SCANNED.finditer(plan)} == wanted, plan
            pruned += 1
        # Settling negatives (horizon passed, or encounter closed) reads only pending rows,
        # through the partial index.
        negative = "prediction.horizon_end <" in statement or "FROM encounter" in statement
        if statement.startswith("UPDATE prediction") and negative:
            assert "ix_prediction_pending" in plan, f"{statement}\n{plan}"
            pending += 1
    assert not scans, "\n\n".join(scans)
    assert pending >= 2
    assert pruned >= 4  # rollup, score and latency histograms, inputs
