"""Dashboard pages: the server-side render time of every page (Streamlit AppTest) on a store
of 10,000,000 predictions, on SQLite and on PostgreSQL.

Each store's predictions are not loaded through the collectors — that is bench.ingest's
subject and would take most of the run — but bulk-inserted directly as generated rows (every
control and canary deployment of the registry, 90 days up to now, scores, latencies and labels
already settled), then the rollups are built by `store.rollups.refresh` and every registered
monitor runs once, as the scheduler would. Each page is then rendered from the real entrypoint
by AppTest, signed in as an admin (so every action form is drawn too), after one warm-up
render: the median of three reruns of the same AppTest, with the pages' data caches cleared
before each, so every render runs its queries.

- SQLite (the embedded default): a file in a temporary folder, rows inserted with the raw
  sqlite3 driver. Baseline: the raw sqlite3 driver's `SELECT count(*) FROM prediction` on the
  same store — one pass over the raw rows, which a page that reads aggregates should beat.
- PostgreSQL (when VIGIL_BENCH_POSTGRES_URL or VIGIL_TEST_POSTGRES_URL names a server): a
  scratch database on it, dropped at the end, migrated (so `prediction` is partitioned by
  month; the months of the generated rows get their partitions before loading), the same
  generated rows loaded with psycopg's COPY in chunks (their ids into `prediction_key` too, as
  the collectors leave a store), then ANALYZE, rollups, monitors and ANALYZE again (a scratch
  server may run with autovacuum off, and its planner would take fresh tables for empty).
  Baseline: raw psycopg's `SELECT count(*) FROM prediction` on the same store, same process.
VIGIL_BENCH_PAGES_BACKENDS=sqlite (or postgresql) runs one backend only.

Building 10 M rows takes a long time on a busy machine. With `VIGIL_BENCH_PAGES_STORE` naming
a file (SQLite) or `VIGIL_BENCH_PAGES_PG_DATABASE` naming a database on the PostgreSQL server,
the store is built there and kept; a later run whose store already holds the requested number
of generated predictions reuses them (their last hour as the end of the world), and only
brings rollups up to date, runs the monitors and renders the pages again.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import sqlalchemy as sa

from bench.core import Figure, Timing, postgres_url, timed_median
from bench.scale import PostgresStores, analyze
from monitors.config import MonitorConfig
from monitors.registry import default_registry
from monitors.scheduler import record_heartbeat
from store.db import REPO_ROOT, make_engine, upgrade
from store.models import (
    LATENCY_BIN_EDGES,
    SCORE_BIN_EDGES,
    SCORE_BINS,
    Deployment,
    Model,
    Prediction,
    table_of,
)
from store.partitions import ensure_partitions_for_write
from store.registry import sync_registry
from store.rollups import refresh

logger = logging.getLogger(__name__)

AREA = "Dashboard: server-side render of each page"
REGISTRY = REPO_ROOT / "config" / "registry.yaml"
ENTRYPOINT = REPO_ROOT / "app" / "streamlit_app.py"
PAGES_DIR = REPO_ROOT / "app" / "app_pages"
FULL_PREDICTIONS = 10_000_000
SMOKE_PREDICTIONS = 50_000
DAYS = 90
REPEATS = 3
TARGET_SECONDS = 1.0
CHUNK = 250_000
STORE_ENV = "VIGIL_BENCH_PAGES_STORE"  # SQLite: a file to build the store in and keep
PG_DATABASE_ENV = "VIGIL_BENCH_PAGES_PG_DATABASE"  # PostgreSQL: a database to keep and reuse
BACKENDS_ENV = "VIGIL_BENCH_PAGES_BACKENDS"  # "sqlite", "postgresql" or both (the default)
COLUMNS = (
    "prediction_id", "model_id", "version_id", "site_id", "unit", "arm", "encounter_key",
    "trigger_at", "scored_at", "delivered_at", "scored_hour", "horizon_end", "score",
    "score_bin", "score_logit", "threshold", "alert", "status", "latency_seconds",
    "latency_bin", "degraded", "content_hash", "label", "settled_at", "ingested_at",
)  # fmt: skip


def run(*, smoke: bool, predictions: int | None = None) -> list[Figure]:
    """Render every page on a store of `predictions` rows (default: 10 M, smoke 50 k), on
    SQLite and, when a server is configured, on PostgreSQL."""
    size = predictions or (SMOKE_PREDICTIONS if smoke else FULL_PREDICTIONS)
    backends = os.environ.get(BACKENDS_ENV, "sqlite,postgresql").lower().split(",")
    figures: list[Figure] = []
    if "sqlite" in backends:
        figures += sqlite_figures(size)
    url = postgres_url()
    if "postgresql" in backends and url:
        figures += postgres_figures(url, size)
    elif "postgresql" in backends and os.environ.get(BACKENDS_ENV):
        logger.warning("no PostgreSQL for the pages benchmark (VIGIL_BENCH_POSTGRES_URL)")
    return figures


def sqlite_figures(size: int) -> list[Figure]:
    """The pages on a SQLite file in a temporary folder, or the kept file STORE_ENV names."""
    kept = os.environ.get(STORE_ENV, "").strip()
    with tempfile.TemporaryDirectory(prefix="vigil-bench-pages-") as tmp:
        path = Path(kept) if kept else Path(tmp) / "vigil.db"
        url = f"sqlite:///{path}"
        build_store(url, size)
        baseline = timed_median(lambda: _raw_count(path), repeats=REPEATS)
        timings = render_pages(url)
    return page_figures(
        "SQLite", size, timings, "raw sqlite3 SELECT count(*) FROM prediction", baseline
    )


def postgres_figures(server: str, size: int) -> list[Figure]:
    """The pages on a scratch database of the server `server` names (dropped at the end), or on
    the kept database PG_DATABASE_ENV names (made if missing, never dropped)."""
    kept = os.environ.get(PG_DATABASE_ENV, "").strip()
    stores = PostgresStores(server)
    try:
        url = _kept_database(server, kept) if kept else stores.new("pages")
        build_store(url, size)
        engine = make_engine(url)
        try:
            baseline = _raw_pg_count(engine)
        finally:
            engine.dispose()
        timings = render_pages(url)
    finally:
        stores.drop_all()
    return page_figures(
        "PostgreSQL", size, timings, "raw psycopg SELECT count(*) FROM prediction", baseline
    )


def page_figures(
    backend: str,
    size: int,
    timings: dict[str, tuple[float, int, str | None, float]],
    baseline_name: str,
    baseline: Timing,
) -> list[Figure]:
    return [
        Figure(
            area=AREA,
            name=f"{page} page, {size:,} predictions ({backend})",
            value=seconds,
            unit="s",
            baseline_name=baseline_name,
            baseline_value=baseline.median_s,
            higher_is_better=False,
            runs=runs,
            peak_mb=peak_mb,
            target=f"< {TARGET_SECONDS:g} s",
            met=problem is None and seconds < TARGET_SECONDS,
            note=problem or "AppTest from the entrypoint, caches cleared before each render",
        )
        for page, (seconds, runs, problem, peak_mb) in timings.items()
    ]


# ---------------------------------------------------------------- the store


def _text(moments: np.ndarray) -> list[str]:
    """UTC timestamps as SQLite stores them ('YYYY-MM-DD HH:MM:SS.ffffff')."""
    return [str(m).replace("T", " ") for m in moments.astype("datetime64[us]")]


def generated_rows(
    deployments: list[tuple[int, int, int, float, float, float, str, str]],
    *,
    count: int,
    start: int,
    end: datetime,
    rng: np.random.Generator,
) -> list[tuple[object, ...]]:
    """`count` synthetic predictions spread over the deployments and the last DAYS days.

    `deployments`: (model_id, version_id, site_id, threshold, horizon_h, label_lag_h, arm, unit).
    """
    pick = rng.integers(0, len(deployments), count)
    deps = np.array([d[:6] for d in deployments], dtype=float)[pick]
    arms = [deployments[k][6] for k in pick.tolist()]
    units = [deployments[k][7] for k in pick.tolist()]
    end_us = np.datetime64(end.replace(tzinfo=None), "us")
    scored = end_us - (rng.random(count) * DAYS * 86_400e6).astype("timedelta64[us]")
    trigger = scored - (rng.uniform(5, 120, count) * 1e6).astype("timedelta64[us]")
    delivered = scored + (rng.uniform(0.2, 30, count) * 1e6).astype("timedelta64[us]")
    latency = (delivered - trigger).astype(float) / 1e6
    horizon_end = scored + (deps[:, 4] * 3600e6).astype("timedelta64[us]")
    settled_at = horizon_end + (deps[:, 5] * 3600e6).astype("timedelta64[us]")
    score = rng.beta(2, 25, count)
    label = (rng.random(count) < score).astype(int)
    pending = settled_at > end_us  # labels that could not have settled yet stay pending
    edges = np.asarray(SCORE_BIN_EDGES)
    score_bin = np.minimum(np.searchsorted(edges, score, side="right") - 1, SCORE_BINS - 1)
    lat_bin = np.maximum(np.searchsorted(np.asarray(LATENCY_BIN_EDGES), latency, "right") - 1, 0)
    logit = np.log(np.clip(score, 1e-6, 1 - 1e-6) / (1 - np.clip(score, 1e-6, 1 - 1e-6)))
    hour = (scored.astype("datetime64[h]").astype(np.int64)).tolist()
    texts = {name: _text(v) for name, v in
             (("t", trigger), ("s", scored), ("d", delivered), ("h", horizon_end),
              ("a", settled_at))}  # fmt: skip
    now_text = str(end_us).replace("T", " ")
    rows: list[tuple[object, ...]] = []
    for i in range(count):
        n = start + i
        rows.append(
            (
                f"bench-{n}", int(deps[i, 0]), int(deps[i, 1]), int(deps[i, 2]), units[i], arms[i],
                f"{n // 4:016x}", texts["t"][i], texts["s"][i], texts["d"][i], hour[i],
                texts["h"][i], float(score[i]), int(score_bin[i]), float(logit[i]),
                float(deps[i, 3]), bool(score[i] >= deps[i, 3]), "ok", float(latency[i]),
                int(lat_bin[i]), False, f"{n:032x}",
                None if pending[i] else int(label[i]),
                None if pending[i] else texts["a"][i], now_text,
            )
        )  # fmt: skip
    return rows


def build_store(url: str, predictions: int) -> None:
    """A migrated store with the registry and `predictions` rows, rollups and monitor points."""
    upgrade(url)
    engine = make_engine(url)
    sync_registry(engine, REGISTRY)
    where = engine.url.render_as_string(hide_password=True)
    held = _held(engine)
    if held:
        if held != predictions:
            raise ValueError(f"{where} holds {held:,} predictions, not {predictions:,}")
        end = _end_of_generated(engine)
        logger.info("reusing %s: %d predictions up to %s", where, held, end)
    else:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        started = time.perf_counter()
        _insert_generated(engine, predictions, end)
        analyze(engine)
        logger.info("load: %.1f s", time.perf_counter() - started)
    started = time.perf_counter()
    refresh(engine, now=end)
    logger.info("rollups: %.1f s", time.perf_counter() - started)
    config = MonitorConfig.from_file()
    for entry in default_registry():
        started = time.perf_counter()
        entry.run(engine, config, end)
        logger.info("monitor %s: %.1f s", entry.name, time.perf_counter() - started)
    record_heartbeat(engine, started_at=datetime.now(UTC), monitor_ran=True)
    analyze(engine)  # the rollups and monitor points the pages read, as autovacuum would
    engine.dispose()


def _held(engine: sa.Engine) -> int:
    count = sa.select(sa.func.count()).select_from(table_of(Prediction))
    with engine.connect() as conn:
        return int(conn.execute(count).scalar_one())


def _end_of_generated(engine: sa.Engine) -> datetime:
    """The hour the generated rows end at (every score is in the DAYS before it)."""
    P = table_of(Prediction)
    with engine.connect() as conn:
        last = conn.execute(sa.select(sa.func.max(P.c.scored_at))).scalar_one()
    return last.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


Deployments = list[tuple[int, int, int, float, float, float, str, str]]


def _deployments(engine: sa.Engine) -> Deployments:
    """(model, version, site, threshold, horizon, lag, arm, unit) of every control and canary
    deployment: what `generated_rows` spreads the predictions over."""
    D, M = table_of(Deployment), table_of(Model)
    with engine.connect() as conn:
        return [
            cast("tuple[int, int, int, float, float, float, str, str]", tuple(r))
            for r in conn.execute(
                sa.select(
                    D.c.model_id, D.c.version_id, D.c.site_id, D.c.alert_threshold,
                    M.c.horizon_hours.label("horizon"), M.c.label_lag_hours.label("lag"),
                    D.c.arm, D.c.unit,
                )
                .join(M, M.c.id == D.c.model_id)
                .where(D.c.arm.in_(["control", "canary"]))
            )
        ]  # fmt: skip


def _insert_generated(engine: sa.Engine, predictions: int, end: datetime) -> None:
    deployments = _deployments(engine)
    rng = np.random.default_rng(20261127)
    if engine.dialect.name == "postgresql":
        _copy_generated(engine, deployments, predictions, end, rng)
        return
    raw = sqlite3.connect(engine.url.database or "")
    raw.execute("PRAGMA synchronous=OFF")
    insert = (
        f"INSERT INTO prediction ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    )
    for start in range(0, predictions, CHUNK):
        count = min(CHUNK, predictions - start)
        raw.executemany(
            insert, generated_rows(deployments, count=count, start=start, end=end, rng=rng)
        )
        raw.commit()
    raw.close()


def _copy_generated(
    engine: sa.Engine,
    deployments: Deployments,
    predictions: int,
    end: datetime,
    rng: np.random.Generator,
) -> None:
    """PostgreSQL: COPY the generated rows into `prediction` (routed to their month
    partitions, made first, so none lands in the default partition), a chunk per transaction,
    then their ids into `prediction_key`, where the collectors keep every stored id."""
    end_hour = int(end.timestamp()) // 3600
    with engine.connect() as conn:
        ensure_partitions_for_write(conn, set(range(end_hour - DAYS * 24 - 1, end_hour + 1)))
    raw = engine.raw_connection()
    try:
        driver = cast("Any", raw.driver_connection)  # psycopg.Connection
        with driver.cursor() as cursor:
            for start in range(0, predictions, CHUNK):
                count = min(CHUNK, predictions - start)
                rows = generated_rows(deployments, count=count, start=start, end=end, rng=rng)
                # The generated timestamps are UTC text without an offset ('YYYY-MM-DD ...').
                cursor.execute("SET LOCAL TIME ZONE 'UTC'")
                with cursor.copy(f"COPY prediction ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                driver.commit()
            cursor.execute(
                "INSERT INTO prediction_key (prediction_id, content_hash, scored_hour) "
                "SELECT prediction_id, content_hash, scored_hour FROM prediction"
            )
            driver.commit()
    finally:
        raw.close()


def _kept_database(server: str, name: str) -> str:
    """The URL of database `name` on the server, created empty if it does not exist yet."""
    url = make_engine(server).url
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if exists is None:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def _raw_count(path: Path) -> int:
    with sqlite3.connect(path) as raw:
        return int(raw.execute("SELECT count(*) FROM prediction").fetchone()[0])


def _raw_pg_count(engine: sa.Engine) -> Timing:
    """Median seconds of raw psycopg's `SELECT count(*) FROM prediction` (the query only, on
    one open connection)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()

        def count() -> None:
            cursor.execute("SELECT count(*) FROM prediction")
            cursor.fetchone()

        return timed_median(count, repeats=REPEATS)
    finally:
        raw.close()


# ---------------------------------------------------------------- the pages


@contextmanager
def _dashboard_env(url: str) -> Iterator[None]:
    """Point the dashboard's settings at the bench store while rendering (AppTest reads the
    environment through vigil.config like the real app)."""
    from vigil.config import get_settings

    saved = {k: os.environ.get(k) for k in ("VIGIL_DATABASE_URL", "VIGIL_DEMO_MODE")}
    cwd = Path.cwd()
    os.environ.update({"VIGIL_DATABASE_URL": url, "VIGIL_DEMO_MODE": "true"})
    os.chdir(REPO_ROOT)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.chdir(cwd)
        get_settings.cache_clear()


def render_pages(url: str) -> dict[str, tuple[float, int, str | None, float]]:
    """Median render seconds of every page, with the number of runs, any problem seen and the
    Python-heap peak (MB) of a render."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from app.data import engine as dashboard_engine
    from app.session import ACTOR_KEY
    from incidents.auth import Actor, Role

    pages = sorted(p.name for p in PAGES_DIR.glob("*.py") if p.name != "__init__.py")
    results: dict[str, tuple[float, int, str | None, float]] = {}
    with _dashboard_env(url):
        st.cache_resource.clear()
        for name in pages:
            # One AppTest per page: its first (warm-up) render also pays the harness's one-off
            # scan of installed packages, which is no part of a page's render.
            at = AppTest.from_file(str(ENTRYPOINT), default_timeout=600)
            at.session_state[ACTOR_KEY] = Actor("Bench Admin", Role.ADMIN)
            at.switch_page(f"app_pages/{name}").run()
            problems = [f"exception: {e.message}" for e in at.exception]

            def render(at: AppTest = at, found: list[str] = problems) -> None:
                at.run()
                found.extend(f"exception: {e.message}" for e in at.exception)

            timing = timed_median(render, repeats=REPEATS, setup=st.cache_data.clear)
            # The Python-heap peak of one more render, untimed (tracing slows it down).
            peak = timed_median(render, repeats=1, setup=st.cache_data.clear, trace_memory=True)
            results[name.removesuffix(".py")] = (
                timing.median_s,
                len(timing.runs),
                problems[0] if problems else None,
                peak.peak_mb,
            )
            logger.info("page %s: %.3f s, peak %.1f MB", name, timing.median_s, peak.peak_mb)
        dashboard_engine().dispose()  # the pages' cached engine: close its connections
        st.cache_resource.clear()
    return results
