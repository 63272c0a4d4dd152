"""The scheduler at the target load: 40 sites, about 1 M predictions a day, 1 and 12 months.

What the store holds (the same for both history lengths, except the history itself):
- the registry's five sites plus synthetic sites S006..S040, both models deployed at each;
- a slab of raw data: the last `slab_days` days before END of the seed generator's world at
  40 sites, its bed scale chosen so that it makes about 1 M predictions a day, loaded through
  the collectors (predictions, outcomes, encounter closures, heartbeats), labels settled and
  rolled up;
- history older than the slab as rollup rows only: every rollup table (prediction rollups,
  score, latency and input histograms, hourly alert counts) holds a copy of the slab's first
  whole day for each earlier day, shifted by whole days, back to 1 month (30 days) or 12
  months (365 days) before END. A year of raw rows at this load is 365 M rows, which this
  machine cannot hold; a cycle must not need them, because monitors read rollups. The
  canary arm's rows are copied back 1 month in both stores: the canary monitor judges a
  canary's whole period so far, so what it reads grows with the canary's age (a canary runs
  days to weeks), and the two stores differ only in the store's history. The canary's site
  also holds raw rows of the canary's model for that month (copies of the slab's day of both
  arms, with their own encounter keys: about 1.8 M rows at full size), as a real store would:
  the canary's per-encounter counts come from raw rows (kept up to date from the new ones,
  monitors/canary_clusters.py).
Every monitor then runs once (the catch-up a freshly started scheduler does; untimed).

Timed, the median of three, each on the next hour of the same simulated world (about 42,000
predictions, collected untimed beforehand, then on PostgreSQL analyzed as autovacuum would;
then every dirty page is written out, so the writeback of the store's build is not timed):
one scheduler cycle without its collect step --
settle labels and rebuild the changed rollups, run every monitor and sync its alerts -- on
the 12-month store, against the same cycle on the 1-month store (ratio ≈ 1: flat in history).
The process first freezes its start-up heap, as the scheduler process does
(monitors.scheduler.settle_heap).
Also: the rollup rebuild of the new hour and a full recompute of the whole slab's rollups,
each against one scan of the same rows through the raw driver (GROUP BY of the same raw rows
with `sqlite3` / psycopg), and the Python-heap peak (tracemalloc) of each step in a separate
untimed run. PostgreSQL when VIGIL_BENCH_POSTGRES_URL (or VIGIL_TEST_POSTGRES_URL) is set;
VIGIL_BENCH_SCALE_BACKENDS=postgresql (or sqlite) runs one backend only.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Engine

from bench.core import Figure, postgres_url, timed_median
from collectors.runner import collect_files
from incidents.alerts import sync_all_alerts
from monitors.alert_burden import WM_ROLLUP as ALERT_BURDEN_WATERMARK
from monitors.canary_runner import find_canaries
from monitors.config import MonitorConfig
from monitors.durations import epoch_seconds
from monitors.registry import default_registry
from monitors.scheduler import CycleReport, run_cycle, settle_heap
from seed_data.generator import SeedConfig, generate, predictions_per_day_estimate
from store.db import REPO_ROOT, make_engine, upgrade
from store.models import (
    AlertBurdenHour,
    CusumLimit,
    InputHistogram,
    LatencyHistogram,
    Model,
    Prediction,
    PredictionRollup,
    ScoreHistogram,
    table_of,
)
from store.registry import sync_registry
from store.rollups import WM_PREDICTION, rebuild_hours, refresh, set_state

logger = logging.getLogger(__name__)

AREA = "Scheduler at the target load: 40 sites, 1 M predictions/day"
END = datetime(2026, 9, 1, tzinfo=UTC)
SECRET = "bench-secret"
REGISTRY = REPO_ROOT / "config" / "registry.yaml"
REPEATS = 3
TARGET_CYCLE_S = 2.0
BACKENDS_ENV = "VIGIL_BENCH_SCALE_BACKENDS"  # "sqlite", "postgresql" or both (the default)
TARGET_FLATNESS = 1.5  # 12-month cycle / 1-month cycle
HISTORY_STAMP = END - timedelta(days=400)  # updated_at of the copied history rows
ROLLUP_TABLES = [
    table_of(PredictionRollup),
    table_of(ScoreHistogram),
    table_of(LatencyHistogram),
    table_of(InputHistogram),
    table_of(AlertBurdenHour),
]
P = table_of(Prediction)
CL = table_of(CusumLimit)


@dataclass(frozen=True)
class Size:
    sites: int
    per_day: int
    slab_days: int
    short_days: int
    long_days: int


FULL = Size(sites=40, per_day=1_000_000, slab_days=1, short_days=30, long_days=365)
SMOKE = Size(sites=3, per_day=5_000, slab_days=1, short_days=2, long_days=4)


@dataclass
class StoreFigures:
    cycle_s: float
    steps: dict[str, float]
    runs: int
    cycle_peak_mb: float
    new_predictions: int
    rollup_hour_s: float
    rollup_hour_scan_s: float
    rollup_hour_peak_mb: float
    history_rows: int


def run(*, smoke: bool) -> list[Figure]:
    size = SMOKE if smoke else FULL
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="vigil-bench-scale-") as tmp:
        folder = Path(tmp)
        registry = write_registry(folder / "registry.yaml", size.sites)
        seed = seed_config(size)
        generate(seed, folder / "slab")
        # Each backend's run takes most of an hour at full size: one may be run on its own.
        backends = os.environ.get(BACKENDS_ENV, "sqlite,postgresql").lower().split(",")
        if "sqlite" in backends:
            figures += backend_figures(
                "SQLite", SqliteStores(folder), folder, registry, seed, size, smoke=smoke
            )
        url = postgres_url()
        if "postgresql" in backends and url:
            figures += backend_figures(
                "PostgreSQL", PostgresStores(url), folder, registry, seed, size, smoke=smoke
            )
        elif "postgresql" in backends:
            logger.warning("no PostgreSQL for the scale benchmark (VIGIL_BENCH_POSTGRES_URL)")
    return figures


def seed_config(size: Size, *, end: datetime = END) -> SeedConfig:
    """The generator's world at `size.sites` sites, scaled to about `size.per_day` a day."""
    unit = predictions_per_day_estimate(SeedConfig(end=END, sites=size.sites))
    return SeedConfig(end=end, days=size.slab_days, sites=size.sites, bed_scale=size.per_day / unit)


def write_registry(path: Path, sites: int) -> Path:
    """The shipped registry plus the generator's synthetic sites, both models at every site."""
    data: dict[str, Any] = yaml.safe_load(REGISTRY.read_text(encoding="utf-8"))
    known = [s["code"] for s in data["sites"]]
    for i in range(len(known), sites):
        data["sites"].append(
            {
                "code": f"S{i + 1:03d}",
                "name": f"Synthetic site {i + 1}",
                "kind": ("community", "critical-access")[(i - len(known)) % 2],
                "timezone": "America/Chicago",
                "beds": 100,
            }
        )
    codes = [s["code"] for s in data["sites"]][:sites]
    for deployment in data["deployments"]:
        if deployment.get("arm", "control") == "control" and "unit" not in deployment:
            deployment["sites"] = codes
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------- stores


class SqliteStores:
    """Fresh SQLite stores in `folder`; `clone` copies a finished one (the file)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def new(self, name: str) -> str:
        return f"sqlite:///{self.folder / (name + '.db')}"

    def clone(self, source: str, name: str) -> str:
        target = self.folder / (name + ".db")
        shutil.copy(sa.engine.make_url(source).database or "", target)
        return f"sqlite:///{target}"

    def drop_all(self) -> None:
        for path in self.folder.glob("*.db*"):
            path.unlink()


class PostgresStores:
    """Scratch PostgreSQL databases on the server `url` names; clones are TEMPLATE copies."""

    def __init__(self, url: str) -> None:
        self.url = make_engine(url).url
        self.names: list[str] = []

    def _admin(self) -> Engine:
        return sa.create_engine(self.url, isolation_level="AUTOCOMMIT")

    def _create(self, sql: str, name: str) -> str:
        admin = self._admin()
        with admin.connect() as conn:
            conn.execute(sa.text(sql))
        admin.dispose()
        self.names.append(name)
        return self.url.set(database=name).render_as_string(hide_password=False)

    def new(self, name: str) -> str:
        scratch = f"vigil_bench_{name}_{uuid.uuid4().hex[:8]}"
        return self._create(f'CREATE DATABASE "{scratch}"', scratch)

    def clone(self, source: str, name: str) -> str:
        template = sa.engine.make_url(source).database
        scratch = f"vigil_bench_{name}_{uuid.uuid4().hex[:8]}"
        return self._create(f'CREATE DATABASE "{scratch}" TEMPLATE "{template}"', scratch)

    def drop_all(self) -> None:
        admin = self._admin()
        with admin.connect() as conn:
            for name in reversed(self.names):
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def load_slab(url: str, folder: Path, registry: Path) -> int:
    """Migrate, sync the registry, collect the slab's files and refresh; returns predictions."""
    upgrade(url)
    with _engine(url) as engine:
        sync_registry(engine, registry)
        outcomes = list(collect_files(engine, [folder / "slab"], secret=SECRET))
        failed = [o for o in outcomes if isinstance(o, Exception)]
        if failed:
            raise RuntimeError(f"the slab did not load: {failed[0]}")
        refresh(engine, now=END)
        analyze(engine)
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(P)).scalar_one())


def write_out(engine: Engine) -> None:
    """Every dirty page written out before the clock starts: PostgreSQL's buffers (a
    checkpoint, where the role may ask for one), then the kernel's. Otherwise the writeback
    of the store's build (gigabytes, just written) runs during the first timed cycles, on the
    same two cores, which a running scheduler never meets."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            try:
                conn.exec_driver_sql("CHECKPOINT")
            except sa.exc.DBAPIError as exc:  # not a superuser (or pg_checkpoint member)
                logger.warning("no checkpoint before the timed cycle: %s", exc.orig)
    os.sync()


def analyze(engine: Engine) -> None:
    """PostgreSQL: fresh planner statistics after a bulk step, as autovacuum would gather on a
    normally configured server (a scratch server may run with autovacuum off, and then the
    planner would take a freshly loaded table for empty)."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")


def add_history(engine: Engine, *, first_day: int, days: int, canary_days: int) -> int:
    """Copy every rollup table's rows of `first_day` (days since the epoch) to each of the
    `days` days before it, shifted by whole days; returns the rows written.

    The canary arm's rows go back `canary_days` days only: a canary is judged over its whole
    period so far (by design), so its age, not the store's history, sets what the canary
    monitor reads; both stores hold a canary of the same age.
    """
    written = 0
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA cache_size = -1048576")  # 1 GiB for the bulk copy
        # Secondary indexes are dropped for the copy and built again after it (a bulk load's
        # usual order); the unique constraints stay.
        indexes = _secondary_indexes(conn, [t.name for t in ROLLUP_TABLES])
        for name, _ in indexes:
            conn.exec_driver_sql(f'DROP INDEX "{name}"')
        for table in ROLLUP_TABLES:
            columns = [c for c in table.columns if c.name != "id"]
            template = sa.and_(table.c.hour >= 24 * first_day, table.c.hour < 24 * first_day + 24)
            for k in range(1, days + 1):
                where = template if k <= canary_days else sa.and_(template, table.c.arm != "canary")
                values = [
                    (c - 24 * k).label("hour")
                    if c.name == "hour"
                    else (
                        sa.literal(HISTORY_STAMP, type_=c.type).label(c.name)
                        if c.name == "updated_at"
                        else c
                    )
                    for c in columns
                ]
                conn.execute(
                    sa.insert(table).from_select(
                        [c.name for c in columns], sa.select(*values).where(where)
                    )
                )
            written += conn.execute(
                sa.select(sa.func.count()).select_from(table).where(table.c.hour < 24 * first_day)
            ).scalar_one()
        for _, create in indexes:
            conn.exec_driver_sql(create)
        # The hourly alert counts of the copied hours are already there (copied, not counted
        # from raw rows that do not exist): only hours newer than the copies are recounted.
        set_state(conn, ALERT_BURDEN_WATERMARK, HISTORY_STAMP.isoformat())
    return written


def add_canary_raw(engine: Engine, *, first_day: int, days: int) -> int:
    """Copy every canary's site's raw rows of `first_day` (both arms) to each of the `days`
    days before it, shifted by whole days, each copy with its own encounter keys and
    prediction ids; returns the rows written.

    The canary's rollups go back as far (`add_history`), and so, in a real store, do its raw
    rows: its per-encounter counts would be read from them. Labels still pending on the
    template day are settled negative in the copies (those days are long past their
    horizon), and the refresh watermark moves past the copies, so no cycle takes them for new
    predictions (their hours' rollups are the copied history).
    """
    dialect = engine.dialect.name
    names = [c.name for c in P.columns if c.name != "id"]
    moments = {"trigger_at", "scored_at", "delivered_at", "horizon_end"}

    def shifted(name: str, k: int) -> str:
        if dialect == "sqlite":  # text timestamps: microseconds as six digits, as stored
            return f"strftime('%Y-%m-%d %H:%M:%f', {name}, '-{k} days') || '000'"
        return f"{name} - interval '{k} days'"

    def select_list(k: int) -> str:
        key_suffix = f"printf('%08d', {k})" if dialect == "sqlite" else f"lpad('{k}', 8, '0')"
        expressions = {
            **{name: shifted(name, k) for name in moments},
            "scored_hour": f"scored_hour - {24 * k}",
            "encounter_key": f"substr(encounter_key, 1, 56) || {key_suffix}",
            "prediction_id": f"prediction_id || '-d{k}'",
            "label": "coalesce(label, 0)",
            "settled_at": f"coalesce({shifted('settled_at', k)}, :settled)",
        }
        return ", ".join(expressions.get(name, name) for name in names)

    written = 0
    with engine.begin() as conn:
        for canary in find_canaries(conn):
            arms = canary.arms
            template = (
                f"FROM prediction WHERE model_id = {arms.model_id} AND site_id = {arms.site_id} "
                f"AND scored_hour >= {24 * first_day} AND scored_hour < {24 * first_day + 24} "
                f"AND ((arm = 'canary' AND version_id = {arms.version_id}) "
                f"OR (arm = 'control' AND version_id = {arms.control_version_id}))"
            )
            for k in range(1, days + 1):
                if dialect == "postgresql":  # every stored id once (store/partitions.py)
                    conn.execute(
                        sa.text(
                            "INSERT INTO prediction_key (prediction_id, content_hash, "
                            f"scored_hour) SELECT prediction_id || '-d{k}', content_hash, "
                            f"scored_hour - {24 * k} {template}"
                        )
                    )
                written += conn.execute(
                    sa.text(
                        f"INSERT INTO prediction ({', '.join(names)}) "
                        f"SELECT {select_list(k)} {template}"
                    ).bindparams(sa.bindparam("settled", END, type_=P.c.settled_at.type)),
                ).rowcount
        top = conn.execute(sa.select(sa.func.max(P.c.id))).scalar() or 0
        set_state(conn, WM_PREDICTION, str(top))
    return written


def _secondary_indexes(conn: Any, tables: list[str]) -> list[tuple[str, str]]:
    """(name, CREATE statement) of the tables' indexes that back no constraint."""
    if conn.dialect.name == "sqlite":
        rows = conn.execute(
            sa.text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                "AND tbl_name IN :tables"
            ).bindparams(sa.bindparam("tables", expanding=True)),
            {"tables": tables},
        ).all()
    else:
        rows = conn.execute(
            sa.text(
                "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
                "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
                "WHERE t.relname IN :tables AND NOT EXISTS "
                "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid)"
            ).bindparams(sa.bindparam("tables", expanding=True)),
            {"tables": tables},
        ).all()
    return [(str(name), str(create)) for name, create in rows]


def copy_cusum_limits(source: Engine, target: Engine, *, shift: timedelta) -> int:
    """The CUSUM limits simulated on `source`, for the same reference case mix `shift` earlier.

    Both stores' reference windows (their first days) are copies of the same day, so the
    simulation (minutes at 40 sites) would only repeat itself; the limits are moved instead.
    """
    with source.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(CL)).mappings()]
    for row in rows:
        row.pop("id")
        row["reference_start"] -= shift
        row["reference_end"] -= shift
    if rows:
        with target.begin() as conn:
            conn.execute(sa.insert(CL), rows)
    return len(rows)


def catch_up(engine: Engine) -> None:
    registry = default_registry()
    config = MonitorConfig.from_file()
    for monitor in registry:
        started = time.perf_counter()
        monitor.run(engine, config, END)
        logger.info("catch-up %s: %.1f s", monitor.name, time.perf_counter() - started)
    sync_all_alerts(engine, now=END, registry=registry)


def raw_group_by(engine: Engine, hours: list[int]) -> float:
    """Seconds for a GROUP BY scan of the raw rows of `hours` through the raw driver, per
    model (as the rollup rebuild reads them, through the same index)."""
    with engine.connect() as conn:
        model_ids = list(conn.execute(sa.select(table_of(Model).c.id)).scalars())
    low, high = int(min(hours)), int(max(hours))
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        started = time.perf_counter()
        for model_id in model_ids:
            cursor.execute(
                "SELECT site_id, unit, arm, scored_hour, count(*), sum(score), "
                "sum(score * score), sum(latency_seconds) FROM prediction "
                f"WHERE model_id = {int(model_id)} AND scored_hour BETWEEN {low} AND {high} "
                "GROUP BY site_id, unit, arm, scored_hour"
            )
            cursor.fetchall()
        return time.perf_counter() - started
    finally:
        raw.close()


def rebuild(engine: Engine, hours: list[int]) -> None:
    with engine.begin() as conn:
        models = [
            Model.model_validate(dict(row))
            for row in conn.execute(sa.select(table_of(Model))).mappings()
        ]
        for model in models:
            rebuild_hours(conn, model, hours, now=END)


def _peak_mb(action: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def measure_store(
    url: str, folder: Path, seed: SeedConfig, *, history_rows: int, repeats: int
) -> StoreFigures:
    """Cycles on the store at `url`, each after collecting the next hour of the world."""
    inbox, processed = folder / "inbox", folder / "processed"
    shutil.rmtree(inbox, ignore_errors=True)
    inbox.mkdir()
    registry = default_registry()
    hour = {"k": 0}
    reports: list[CycleReport] = []
    new_hours: list[list[int]] = []
    with _engine(url) as engine:

        def next_hour() -> None:
            start = END + timedelta(hours=hour["k"])
            hour["k"] += 1
            hour_folder = folder / f"hour-{hour['k']}"
            generate(
                SeedConfig(
                    end=start + timedelta(hours=1),
                    days=seed.days,
                    sites=seed.sites,
                    bed_scale=seed.bed_scale,
                ),
                hour_folder,
                start=start,
            )
            list(collect_files(engine, [hour_folder], secret=SECRET))
            # PostgreSQL's autovacuum would analyze the month's partition as the hour lands (a
            # new one first holds nothing, and its plans would take it for empty); this
            # scratch server may run with autovacuum off, so the same is done here, untimed.
            analyze(engine)
            write_out(engine)
            first = epoch_seconds(start) // 3600
            new_hours.append([first - 1, first])

        def one_cycle() -> None:
            reports.append(
                run_cycle(
                    engine,
                    inbox=inbox,
                    processed=processed,
                    secret=SECRET,
                    now=END + timedelta(hours=hour["k"]),
                    registry=registry,
                )
            )

        settle_heap()  # as the scheduler process does once it has started
        try:
            timing = timed_median(one_cycle, repeats=repeats, setup=next_hour)
            next_hour()
            cycle_peak = _peak_mb(one_cycle)
            # The rollups of the newest hour again, alone, against a raw scan of its rows.
            hours = new_hours[-1]
            rollup = timed_median(lambda: rebuild(engine, hours), repeats=repeats)
            scan = timed_median(lambda: raw_group_by(engine, hours), repeats=repeats)
            rollup_peak = _peak_mb(lambda: rebuild(engine, hours))
        finally:
            gc.unfreeze()  # this process goes on to build other stores
    median = sorted(reports[:repeats], key=lambda r: r.total_seconds)[repeats // 2]
    if median.new_predictions <= 0:
        raise RuntimeError("the cycle found no new predictions")
    steps = {k: v for k, v in median.timings.items() if k != "collect"}
    return StoreFigures(
        cycle_s=timing.median_s,
        steps=steps,
        runs=len(timing.runs),
        cycle_peak_mb=cycle_peak,
        new_predictions=median.new_predictions,
        rollup_hour_s=rollup.median_s,
        rollup_hour_scan_s=scan.median_s,
        rollup_hour_peak_mb=rollup_peak,
        history_rows=history_rows,
    )


def backend_figures(
    backend: str,
    stores: Any,
    folder: Path,
    registry: Path,
    seed: SeedConfig,
    size: Size,
    *,
    smoke: bool,
) -> list[Figure]:
    try:
        base = stores.new("base")
        started = time.perf_counter()
        slab_rows = load_slab(base, folder, registry)
        logger.info("%s: slab of %d predictions loaded in %.0f s", backend, slab_rows,
                    time.perf_counter() - started)  # fmt: skip
        slab_first_day = (epoch_seconds(END) // 86400) - size.slab_days
        slab_hours = list(range(24 * slab_first_day, epoch_seconds(END) // 3600))

        # Full recompute of the slab's rollups, against one raw GROUP BY scan of its rows.
        with _engine(base) as engine:
            full = timed_median(lambda: rebuild(engine, slab_hours), repeats=1)
            full_scan = timed_median(lambda: raw_group_by(engine, slab_hours), repeats=REPEATS)
            full_peak = _peak_mb(lambda: rebuild(engine, slab_hours))
            # The canary's raw rows back as far as its rollups (in both stores, below).
            started = time.perf_counter()
            canary_rows = add_canary_raw(
                engine, first_day=slab_first_day, days=size.short_days - size.slab_days
            )
            analyze(engine)
            logger.info("%s: %d canary-site raw rows copied in %.0f s", backend, canary_rows,
                        time.perf_counter() - started)  # fmt: skip

        measured: dict[int, StoreFigures] = {}
        urls: dict[int, str] = {}
        for days in (size.short_days, size.long_days):
            url = urls[days] = stores.clone(base, f"h{days}")
            with _engine(url) as engine:
                started = time.perf_counter()
                rows = add_history(
                    engine,
                    first_day=slab_first_day,
                    days=days - size.slab_days,
                    canary_days=size.short_days - size.slab_days,
                )
                logger.info("%s, %d days: %d history rows copied in %.0f s", backend, days, rows,
                            time.perf_counter() - started)  # fmt: skip
                if days == size.long_days:
                    with _engine(urls[size.short_days]) as short_engine:
                        shift = timedelta(days=size.long_days - size.short_days)
                        copy_cusum_limits(short_engine, engine, shift=shift)
                analyze(engine)
                catch_up(engine)
                analyze(engine)
            measured[days] = measure_store(
                url, folder, seed, history_rows=rows, repeats=1 if smoke else REPEATS
            )
            logger.info("%s, %d days: %s", backend, days, measured[days])
    finally:
        stores.drop_all()

    short, long = measured[size.short_days], measured[size.long_days]
    steps = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in long.steps.items())
    history = (
        f"{size.sites} sites, {slab_rows:,} raw predictions over the last {size.slab_days} d "
        f"(≈{size.per_day:,}/day), older history as {long.history_rows:,} copied rollup rows; "
        f"the canary's site also holds {canary_rows:,} raw rows copied into the "
        f"{size.short_days - size.slab_days} days before the slab"
    )
    flat = long.cycle_s / short.cycle_s if short.cycle_s > 0 else float("inf")
    return [
        Figure(
            area=AREA,
            name=f"one cycle (settle, roll up, every monitor, alerts), 12 months ({backend})",
            value=long.cycle_s,
            unit="s",
            baseline_name="same cycle, 1 month of history",
            baseline_value=short.cycle_s,
            higher_is_better=False,
            runs=long.runs,
            peak_mb=long.cycle_peak_mb,
            target=f"≤ {TARGET_CYCLE_S:.0f} s; ratio ≈ 1 (flat in history)",
            met=long.cycle_s <= TARGET_CYCLE_S and flat <= TARGET_FLATNESS,
            note=f"{long.new_predictions:,} new predictions a cycle; {history}; Python-heap peak "
            f"{long.cycle_peak_mb:.0f} MB (1 month: {short.cycle_peak_mb:.0f} MB); steps: {steps}",
            extra={"short_steps": short.steps, "short_peak_mb": short.cycle_peak_mb},
        ),
        Figure(
            area=AREA,
            name=f"rollup rebuild of one new hour ({backend})",
            value=long.rollup_hour_s,
            unit="s",
            baseline_name="raw-driver GROUP BY of the same rows",
            baseline_value=long.rollup_hour_scan_s,
            higher_is_better=False,
            runs=long.runs,
            peak_mb=long.rollup_hour_peak_mb,
            note="rollups, score/latency/input histograms of both models for the newest hour "
            "(and the one before, which late scores reach)",
        ),
        Figure(
            area=AREA,
            name=f"full recompute of the slab's rollups ({backend})",
            value=full.median_s,
            unit="s",
            baseline_name="raw-driver GROUP BY of the same rows",
            baseline_value=full_scan.median_s,
            higher_is_better=False,
            runs=len(full.runs),
            peak_mb=full_peak,
            note=f"{slab_rows:,} predictions, {len(slab_hours)} hours, one run (it takes "
            "minutes at full size); memory is bounded by "
            "a chunk of hours (store/rollups.py HOURS_PER_STATEMENT), and by one hour's rows "
            "where the inputs are binned in Python, not by the history",
        ),
    ]
