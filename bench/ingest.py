"""Ingest speed: demo prediction logs (JSON Lines) into the store, against the raw driver.

SQLite: the collectors' whole path (read, validate every line against its contract, pseudonymise,
derive, write with the file's checkpoint) into a freshly migrated store, once as `vigil collect`
runs a large file (validation in a helper process — two on more than two cores — while this
one writes) and once in a single process; compared with raw `sqlite3` `executemany` of the very rows
the collector wrote, in the same batches, into the same schema and indexes, on a connection
with the same settings (the engine's PRAGMAs and the collector's: page cache, and for a large
file checkpoint interval and a final checkpoint), in the same process. Runs alternate, so load
from elsewhere on the machine hits all alike. Then what each secondary index of `prediction`
costs that raw driver: the same raw `executemany` into the schema without the index (and without
any), against the schema as it is, in alternating turns too.
PostgreSQL (when VIGIL_BENCH_POSTGRES_URL or VIGIL_TEST_POSTGRES_URL names a server): the same
path, compared with raw psycopg COPY of the same rows straight into the table.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import sqlite3
import statistics
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bench.core import Figure, postgres_url, timed_median
from collectors.base import BATCH_UNITS, HELPER_MIN_BYTES
from collectors.bulkload import SQLITE_BULK_END, SQLITE_BULK_PRAGMAS, SQLITE_CACHE_PRAGMA
from collectors.runner import collect_files
from collectors.sinks import PREDICTION_COLUMNS
from seed_data.generator import SeedConfig, generate
from store.db import REPO_ROOT, make_engine, upgrade
from store.models import IngestCheckpoint, Prediction, Quarantine, table_of
from store.registry import sync_registry

logger = logging.getLogger(__name__)

AREA = "Collectors: ingest"
FULL_ROWS = 200_000
SMOKE_ROWS = 5_000
REPEATS = 3
TARGET_ROWS_PER_S = 50_000
TARGET_RATIO = 0.5
SECRET = "bench-secret"
REGISTRY = REPO_ROOT / "config" / "registry.yaml"


def run(*, smoke: bool) -> list[Figure]:
    rows = SMOKE_ROWS if smoke else FULL_ROWS
    with tempfile.TemporaryDirectory(prefix="vigil-bench-ingest-") as tmp:
        folder = Path(tmp)
        source = demo_predictions(folder, rows)
        figures, stored = sqlite_figures(folder, source, rows)
        url = postgres_url()
        if url:
            figures.append(postgres_figure(url, source, stored))
        else:
            logger.warning("no PostgreSQL for the ingest benchmark (VIGIL_BENCH_POSTGRES_URL)")
    return figures


def demo_predictions(folder: Path, rows: int) -> Path:
    """The first `rows` predictions of a simulated history, in one JSON Lines file."""
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    days = max(2, rows // 8_000 + 2)
    summary = generate(SeedConfig(end=end, days=days, bed_scale=2.0), folder / "seed")
    if summary.predictions < rows:
        raise RuntimeError(f"the demo made {summary.predictions} predictions, not {rows}")
    target = folder / "inbox" / "predictions-bench.jsonl"
    target.parent.mkdir()
    left = rows
    with target.open("wb") as out:
        for path in sorted((folder / "seed").glob("predictions-*.jsonl")):
            with path.open("rb") as handle:
                for line in handle:
                    out.write(line)
                    left -= 1
                    if not left:
                        return target
    return target


def _ingest(engine: Engine, source: Path, *, helper: bool) -> int:
    [result] = list(collect_files(engine, [source], secret=SECRET, helper=helper))
    if isinstance(result, Exception) or result.quarantined:
        raise RuntimeError(f"the benchmark input did not ingest cleanly: {result}")
    return result.inserted


def _interleaved(
    actions: dict[str, Callable[[], object]], setup: Callable[[], object]
) -> tuple[dict[str, list[float]], dict[str, float], float]:
    """Each action timed REPEATS times, in turns, so load from elsewhere hits all alike.

    Also the median CPU seconds per run (this process and its helper processes) and the
    highest 1-minute load average seen: other processes compete for the same cores.
    """
    runs: dict[str, list[float]] = {name: [] for name in actions}
    cpu: dict[str, list[float]] = {name: [] for name in actions}
    load = os.getloadavg()[0]
    for _ in range(REPEATS):
        for name, action in actions.items():
            before = _cpu_seconds()
            runs[name].append(timed_median(action, setup=setup, repeats=1).median_s)
            cpu[name].append(_cpu_seconds() - before)  # includes the (untimed) setup
            load = max(load, os.getloadavg()[0])
    return runs, {name: statistics.median(v) for name, v in cpu.items()}, load


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    helpers = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + helpers.ru_utime + helpers.ru_stime


def _load_note(load: float) -> str:
    return f"load average up to {load:.1f} on {os.cpu_count()} cores"


def _stored_rows(engine: Engine) -> list[tuple[Any, ...]]:
    """The rows the collector wrote, as the driver holds them (SQLite: text timestamps)."""
    names = ", ".join(PREDICTION_COLUMNS)
    with engine.connect() as conn:
        result = conn.exec_driver_sql(f"SELECT {names} FROM prediction ORDER BY id")
        return [tuple(r) for r in result]


def _batches(rows: list[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    for start in range(0, len(rows), BATCH_UNITS):
        yield rows[start : start + BATCH_UNITS]


# ---------------------------------------------------------------------------------- SQLite


def sqlite_figures(
    folder: Path, source: Path, rows: int
) -> tuple[list[Figure], list[tuple[Any, ...]]]:
    template = folder / "template.db"
    upgrade(f"sqlite:///{template}")
    engine = make_engine(f"sqlite:///{template}")
    sync_registry(engine, REGISTRY)
    engine.dispose()
    target = folder / "store.db"
    state: dict[str, Engine] = {}

    reference = folder / "reference.db"

    def fresh() -> None:
        if "engine" in state:
            state.pop("engine").dispose()
        _remove_store(reference)
        _copy_store(template, target)
        state["engine"] = make_engine(f"sqlite:///{target}")
        _create_reference(reference)

    fresh()
    _ingest(state["engine"], source, helper=False)  # warms the file cache; gives the rows
    stored = _stored_rows(state["engine"])
    if len(stored) != rows:
        raise RuntimeError(f"{len(stored)} rows stored, expected {rows}")
    bulk = source.stat().st_size >= HELPER_MIN_BYTES  # the collector's bulk-load settings apply

    runs, cpu, load = _interleaved(
        {
            "helper": lambda: _ingest(state["engine"], source, helper=True),
            "single": lambda: _ingest(state["engine"], source, helper=False),
            "raw": lambda: _raw_executemany(state["engine"], stored, bulk=bulk),
            "reference": lambda: _reference_executemany(reference, stored),
        },
        setup=fresh,
    )

    # Python-heap peak (tracemalloc) of this process in one more, untimed run of each path:
    # tracing slows a run, so it is kept apart from the timed ones. With helper processes this
    # is the writer's heap; theirs is not traced.
    def traced_peak(helper: bool) -> float:
        action = lambda: _ingest(state["engine"], source, helper=helper)  # noqa: E731
        return timed_median(action, setup=fresh, repeats=1, trace_memory=True).peak_mb

    peaks = {"helper": traced_peak(True), "single": traced_peak(False)}
    state.pop("engine").dispose()
    raw_rate = rows / statistics.median(runs["raw"])
    per_row = {name: seconds / rows * 1e6 for name, seconds in cpu.items()}
    rates = {mode: rows / statistics.median(runs[mode]) for mode in ("helper", "single")}
    figures = []
    for mode, title in (
        ("helper", "helper processes, the default for large files"),
        ("single", "one process, --no-helper"),
    ):
        rate = rates[mode]
        ratio = rate / raw_rate
        figures.append(
            Figure(
                area=AREA,
                name=f"JSON Lines → SQLite ({title}), {rows:,} predictions",
                value=rate,
                unit="rows/s",
                baseline_name="raw sqlite3.executemany of the same rows",
                baseline_value=raw_rate,
                runs=REPEATS,
                peak_mb=peaks[mode],
                target=f"≥ {TARGET_RATIO}× raw",
                met=ratio >= TARGET_RATIO,
                note=f"CPU {per_row[mode]:.0f} µs/row (raw: {per_row['raw']:.0f}); "
                + _load_note(load),
                extra={"ours_runs_s": runs[mode], "raw_runs_s": runs["raw"], "cpu_s": cpu},
            )
        )
    reference_rate = rows / statistics.median(runs["reference"])
    figures.append(
        Figure(
            area=AREA,
            name=(
                "machine reference: raw sqlite3.executemany of the same rows into a "
                f"prediction-like table with a text key and one time index, {rows:,} rows"
            ),
            value=reference_rate,
            unit="rows/s",
            runs=REPEATS,
            note=(
                "the issue's yardstick for a 2-core machine (about 100,000 rows/s there); "
                "how fast this machine is, not a figure of Vigil's"
            ),
        )
    )
    best = rates["helper"]
    figures.append(
        Figure(
            area=AREA,
            name=f"JSON Lines → SQLite, absolute rate with helper processes, {rows:,} predictions",
            value=best,
            unit="rows/s",
            runs=REPEATS,
            target=f"≥ {TARGET_ROWS_PER_S:,} rows/s",
            met=best >= TARGET_ROWS_PER_S,
            note=(
                f"the raw driver alone does {raw_rate:,.0f} rows/s into this schema on this "
                f"machine now, and {reference_rate:,.0f} rows/s into the issue's yardstick "
                "table (text key, one time index); "
                f"CPU {per_row['helper']:.0f} µs/row in all processes; " + _load_note(load)
            ),
        )
    )
    figures += index_cost_figures(template, target, stored, bulk=bulk)
    figures += encounter_index_figures(template, target, stored, bulk=bulk)
    return figures, stored


def _remove_store(path: Path) -> None:
    """A SQLite file gone, with its write-ahead log and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _copy_store(template: Path, target: Path) -> None:
    """`target` replaced by a copy of `template` (no log of the old file left beside it)."""
    _remove_store(target)
    shutil.copy(template, target)


def _raw_executemany(
    engine: Engine,
    rows: list[tuple[Any, ...]],
    *,
    bulk: bool,
    columns: tuple[str, ...] = PREDICTION_COLUMNS,
) -> None:
    """The rows into `prediction` by raw `executemany`, in the collector's batches, on the
    engine's own DBAPI connection (the same PRAGMAs as the collector's)."""
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    sql = f"INSERT INTO prediction ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING"
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        # The settings the collector writes with: its page cache, and for a large file its
        # checkpoint interval and a checkpoint at the end.
        for pragma in SQLITE_BULK_PRAGMAS if bulk else (SQLITE_CACHE_PRAGMA,):
            cursor.execute(pragma)
        for batch in _batches(rows):
            cursor.executemany(sql, batch)
            connection.commit()
        if bulk:
            cursor.execute(SQLITE_BULK_END)
    finally:
        connection.close()


# A schema variant for the raw driver: statements run on a copy of the migrated store first,
# then the rows, in these columns.
_Variant = tuple[list[str], list[tuple[Any, ...]], tuple[str, ...]]


def _timed_variants(
    template: Path, target: Path, variants: dict[str, _Variant], *, bulk: bool
) -> dict[str, list[float]]:
    """Seconds of each variant's raw `executemany`, REPEATS runs each, in alternating turns,
    each on a fresh copy of the template changed by the variant's statements."""
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(REPEATS):
        for name, (statements, data, columns) in variants.items():
            _copy_store(template, target)
            with closing(sqlite3.connect(target)) as connection:
                for statement in statements:
                    connection.execute(statement)
                connection.commit()
            engine = make_engine(f"sqlite:///{target}")
            try:
                action = partial(_raw_executemany, engine, data, bulk=bulk, columns=columns)
                runs[name].append(timed_median(action, repeats=1).median_s)
            finally:
                engine.dispose()
    return runs


def _variant_figures(
    runs: dict[str, list[float]],
    *,
    title: Callable[[str], str],
    baseline: str,
    note: Callable[[float, float], str],
    rows: int,
) -> list[Figure]:
    """A figure per variant, against the schema as it is (the variant named ""); `note` gets
    the µs a row the variant saves and the µs a row of the schema as it is."""
    full = statistics.median(runs.pop(""))
    figures = []
    for name, seconds in runs.items():
        median = statistics.median(seconds)
        figures.append(
            Figure(
                area=AREA,
                name=f"cost of indexes: {title(name)}",
                value=rows / median,
                unit="rows/s",
                baseline_name=baseline,
                baseline_value=rows / full,
                runs=REPEATS,
                note=note((full - median) / rows * 1e6, full / rows * 1e6),
            )
        )
    return figures


def index_cost_figures(
    template: Path, target: Path, rows: list[tuple[Any, ...]], *, bulk: bool
) -> list[Figure]:
    """What each secondary index of `prediction` costs the raw driver: the raw `executemany`
    of the same rows into the schema with that index dropped (then with every one dropped),
    against the schema as it is. Runs alternate, as above."""
    with closing(sqlite3.connect(template)) as connection:
        indexes = [
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'prediction' AND sql IS NOT NULL ORDER BY name"
            )
        ]
    dropped = {"any secondary index": indexes} | {name: [name] for name in indexes}
    variants: dict[str, _Variant] = {"": ([], rows, PREDICTION_COLUMNS)}
    for name, names in dropped.items():
        variants[name] = ([f'DROP INDEX "{index}"' for index in names], rows, PREDICTION_COLUMNS)
    count = len(rows)
    return _variant_figures(
        _timed_variants(template, target, variants, bulk=bulk),
        title=lambda name: f"raw sqlite3.executemany without {name}, {count:,} rows",
        baseline="the same with every index",
        note=lambda saved, full: (
            f"{saved:.1f} µs of the raw driver's {full:.1f} µs a row with every index"
        ),
        rows=count,
    )


def _create_reference(path: Path) -> None:
    """The issue's yardstick table: the prediction columns, a text key, one time index."""
    columns = ", ".join(
        f"{name} TEXT PRIMARY KEY" if name == "prediction_id" else name
        for name in PREDICTION_COLUMNS
    )
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"CREATE TABLE reference ({columns})")
        connection.execute("CREATE INDEX ix_reference_scored ON reference (scored_at)")
        connection.commit()


def _reference_executemany(path: Path, rows: list[tuple[Any, ...]]) -> None:
    names = ", ".join(PREDICTION_COLUMNS)
    marks = ", ".join("?" for _ in PREDICTION_COLUMNS)
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute(SQLITE_CACHE_PRAGMA)
        for batch in _batches(rows):
            connection.executemany(f"INSERT INTO reference ({names}) VALUES ({marks})", batch)
            connection.commit()


def encounter_index_figures(
    template: Path, target: Path, rows: list[tuple[Any, ...]], *, bulk: bool
) -> list[Figure]:
    """What the encounter lookup would cost the raw driver if `prediction` were looked up by
    an integer instead of `ix_prediction_encounter_key` (64 hex characters): the same raw
    `executemany` with one more integer column, indexed in place of the key, holding either
    the key's first 64 bits (random, as a truncated HMAC is) or a sequential id in order of
    each encounter's first score (what an encounter table would hand out). Not a schema Vigil
    has: a measured alternative, timed against the schema as it is, in alternating turns."""
    key = PREDICTION_COLUMNS.index("encounter_key")
    first_seen: dict[str, int] = {}
    for row in rows:
        first_seen.setdefault(row[key], len(first_seen) + 1)
    columns = (*PREDICTION_COLUMNS, "encounter_number")
    variants: dict[str, _Variant] = {
        "": ([], rows, PREDICTION_COLUMNS),
        "the key's first 64 bits (random)": (
            _NUMBERED_ENCOUNTER,
            [(*row, _signed_64(row[key])) for row in rows],
            columns,
        ),
        "a sequential id by first score": (
            _NUMBERED_ENCOUNTER,
            [(*row, first_seen[row[key]]) for row in rows],
            columns,
        ),
    }
    count = len(rows)
    return _variant_figures(
        _timed_variants(template, target, variants, bulk=bulk),
        title=lambda name: (
            "raw sqlite3.executemany with the encounter looked up by an integer, "
            f"{name}, instead of the 64-hex key, {count:,} rows"
        ),
        baseline="the schema as it is",
        note=lambda saved, full: (
            f"{saved:.1f} µs a row saved of {full:.1f} µs; "
            f"{len(first_seen):,} encounters in {count:,} predictions; a measured alternative, "
            "not Vigil's schema"
        ),
        rows=count,
    )


_NUMBERED_ENCOUNTER = [
    "DROP INDEX ix_prediction_encounter_key",
    "ALTER TABLE prediction ADD COLUMN encounter_number BIGINT",
    "CREATE INDEX ix_prediction_encounter_number ON prediction (encounter_number)",
]


def _signed_64(key: str) -> int:
    """The first 64 bits of a hex key as a signed 64-bit integer (SQLite's INTEGER)."""
    value = int(key[:16], 16)
    return value - (1 << 64) if value >= 1 << 63 else value


# ------------------------------------------------------------------------------ PostgreSQL


@contextmanager
def _scratch_postgres(url: str) -> Iterator[str]:
    admin = sa.create_engine(make_engine(url).url, isolation_level="AUTOCOMMIT")
    name = f"vigil_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_engine(url).url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_figure(url: str, source: Path, stored: list[tuple[Any, ...]]) -> Figure:
    rows = len(stored)
    with _scratch_postgres(url) as scratch:
        upgrade(scratch)
        engine = make_engine(scratch)
        sync_registry(engine, REGISTRY)
        tables = ", ".join(
            table_of(model).name for model in (Prediction, Quarantine, IngestCheckpoint)
        )
        tables += ", prediction_key"  # the stored ids, else a rerun inserts nothing

        def empty() -> None:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"TRUNCATE {tables}")
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE prediction")

        names = ", ".join(PREDICTION_COLUMNS)

        def raw_copy() -> None:
            connection = engine.raw_connection()
            try:
                driver: Any = connection.dbapi_connection
                for batch in _batches(stored):
                    with driver.cursor() as cursor:
                        cursor.execute("SET TIME ZONE 'UTC'")  # the rows' timestamps are UTC text
                        with cursor.copy(f"COPY prediction ({names}) FROM STDIN") as copy:
                            for row in batch:
                                copy.write_row(row)
                    driver.commit()
            finally:
                connection.close()

        runs, _, load = _interleaved(
            {"ours": lambda: _ingest(engine, source, helper=True), "raw": raw_copy}, setup=empty
        )
        # Python-heap peak (tracemalloc) of this process in one more, untimed run.
        peak = timed_median(
            lambda: _ingest(engine, source, helper=True), setup=empty, repeats=1, trace_memory=True
        ).peak_mb
        engine.dispose()
    ours_rate = rows / statistics.median(runs["ours"])
    raw_rate = rows / statistics.median(runs["raw"])
    return Figure(
        area=AREA,
        name=f"JSON Lines → PostgreSQL (COPY, helper processes), {rows:,} predictions",
        value=ours_rate,
        unit="rows/s",
        baseline_name="raw psycopg COPY of the same rows",
        baseline_value=raw_rate,
        runs=REPEATS,
        peak_mb=peak,
        note="COPY to a temporary table, then one statement: ids into prediction_key … ON CONFLICT "
        f"DO NOTHING, the accepted rows into the month partitions; {_load_note(load)}",
        extra={"ours_runs_s": runs["ours"], "raw_runs_s": runs["raw"]},
    )
