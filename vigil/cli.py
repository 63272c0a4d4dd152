"""The `vigil` command line: the composition root that wires settings, store and jobs."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer

from store.models import table_of
from vigil.commands.common import engine as _engine
from vigil.config import get_settings

app = typer.Typer(
    help="Vigil: watch clinical prediction models in production.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
registry_app = typer.Typer(help="The model and site registry.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(registry_app, name="registry")

logger = logging.getLogger("vigil")


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    level = logging.DEBUG if verbose else getattr(logging, get_settings().log_level.upper(), 20)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Alembic revision.")) -> None:
    """Create or migrate the database named by VIGIL_DATABASE_URL."""
    from store.db import upgrade

    upgrade(get_settings().database_url, revision)
    typer.echo(f"database at {revision}")


@registry_app.command("sync")
def registry_sync(
    path: Annotated[Path | None, typer.Argument(help="Registry YAML.")] = None,
) -> None:
    """Load sites, models, versions and deployments from the registry file."""
    from store.registry import RegistryError, sync_registry

    try:
        counts = sync_registry(_engine(), path or get_settings().registry_path)
    except RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(", ".join(f"{v} {k}" for k, v in counts.items()))


@app.command()
def seed(
    out: Annotated[Path, typer.Option(help="Folder to write the files into.")] = Path(
        "seed_data/sample"
    ),
    days: Annotated[int, typer.Option(help="Days of history.")] = 90,
    sites: Annotated[int, typer.Option(help="Number of sites.")] = 5,
    bed_scale: Annotated[float, typer.Option(help="Volume multiplier on every site's beds.")] = 1.0,
    predictions: Annotated[
        int | None,
        typer.Option(help="Target predictions per day in total (sets --bed-scale)."),
    ] = None,
    future_days: Annotated[int, typer.Option(help="Days simulated past the end (spool).")] = 0,
    end: Annotated[str | None, typer.Option(help="End of history, ISO UTC (default: now).")] = None,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed.")] = 20260901,
) -> None:
    """Write deterministic demo data in the collectors' own formats."""
    from seed_data.generator import SeedConfig, generate, predictions_per_day_estimate

    end_at = datetime.fromisoformat(end) if end else datetime.now(UTC)
    if end_at.tzinfo is None:
        raise typer.BadParameter("--end needs a time zone, e.g. 2026-09-01T00:00:00Z")
    end_at = end_at.astimezone(UTC).replace(second=0, microsecond=0)
    config = SeedConfig(
        end=end_at,
        days=days,
        seed=seed_value,
        sites=sites,
        bed_scale=bed_scale,
        future_days=future_days,
        registry_path=get_settings().registry_path,
    )
    if predictions is not None:
        per_day = predictions_per_day_estimate(replace(config, bed_scale=1.0))
        config = replace(config, bed_scale=predictions / per_day)
    summary = generate(config, out)
    typer.echo(
        f"wrote {len(summary.files)} files to {out}: {summary.predictions} predictions, "
        f"{summary.outcomes} outcomes, {summary.encounters} encounters, "
        f"{summary.heartbeats} heartbeats"
    )


@app.command("refresh")
def refresh_command() -> None:
    """Settle labels and rebuild the hourly rollups that changed."""
    from store.rollups import refresh

    typer.echo(str(refresh(_engine())))


@app.command()
def monitor(
    name: Annotated[str | None, typer.Option(help="Run only this monitor.")] = None,
) -> None:
    """Run the monitors once (incrementally) and write their metric points."""
    from monitors.config import MonitorConfig
    from monitors.registry import default_registry
    from store.models import utcnow

    engine = _engine()
    config = MonitorConfig.from_file()
    registry = default_registry()
    chosen = [registry.get(name)] if name else list(registry)
    for entry in chosen:
        results = entry.run(engine, config, utcnow())
        counts: dict[str, int] = {}
        for result in results:
            counts[result.status.value] = counts.get(result.status.value, 0) + 1
        typer.echo(f"{entry.name}: {len(results)} points {counts}")


@app.command()
def schedule(
    simulate: Annotated[bool, typer.Option(help="Also release demo data every minute.")] = False,
) -> None:
    """Run the scheduler process (collect, rollups, monitors, heartbeat) until stopped."""
    from monitors.scheduler import run_scheduler

    run_scheduler(simulate=simulate)


@app.command()
def bootstrap(
    demo: Annotated[bool, typer.Option(help="Load the demo data if the store is empty.")] = True,
) -> None:
    """Migrate, sync the registry and, if the store is empty, load the demo via the collectors."""
    from seed_data.simulator import prepare_demo
    from store.db import upgrade
    from store.models import Prediction
    from store.registry import sync_registry

    settings = get_settings()
    upgrade(settings.database_url)
    engine = _engine()
    sync_registry(engine, settings.registry_path)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(table_of(Prediction))).scalar()
    if not demo or stored:
        typer.echo(f"store ready ({stored} predictions)")
        return
    started = time.monotonic()
    prepare_demo(
        settings.inbox_dir,
        spool=settings.spool_dir,
        days=settings.demo_days,
        future_days=settings.demo_future_days,
        bed_scale=settings.demo_bed_scale,
        registry_path=settings.registry_path,
    )
    typer.echo("demo data written; collecting it (this takes a minute) ...")
    from collectors.runner import collect_inbox
    from incidents.alerts import sync_all_alerts
    from monitors.config import MonitorConfig
    from monitors.registry import default_registry
    from store.models import utcnow
    from store.rollups import refresh

    collect_inbox(engine, settings.inbox_dir, settings.processed_dir, secret=settings.pseudonym_key)
    refresh(engine)
    for entry in default_registry():
        entry.run(engine, MonitorConfig.from_file(), utcnow())
    # Alerts for what the history already shows (the scheduler only syncs what changes).
    changes = sync_all_alerts(engine)
    typer.echo(
        f"demo loaded in {time.monotonic() - started:.0f} s; {len(changes.opened)} alert(s) open"
    )


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="Dashboard port.")] = None,
    simulate: Annotated[bool, typer.Option(help="Keep dropping live demo data.")] = True,
) -> None:
    """Start the scheduler and the dashboard together; Ctrl-C stops both."""
    settings = get_settings()
    port = port or settings.app_port
    scheduler_cmd = [sys.executable, "-m", "vigil", "schedule"] + (
        ["--simulate"] if simulate else []
    )
    app_cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app/streamlit_app.py",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    # A shell may start us with SIGINT ignored (background jobs); Ctrl-C must still work.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    children = [
        subprocess.Popen(scheduler_cmd, env=env),
        subprocess.Popen(app_cmd, env=env),
    ]
    typer.echo(f"Vigil is up: http://localhost:{port}  (Ctrl-C stops it)")

    def stop(*_args: object) -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 15
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        typer.echo("Vigil stopped")

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        typer.echo("a Vigil process exited; stopping the other", err=True)
    except KeyboardInterrupt:
        pass
    finally:
        stop()


@app.command()
def bench(
    smoke: Annotated[bool, typer.Option(help="CI's small size; not representative.")] = False,
    only: Annotated[
        list[str] | None, typer.Option(help="Run only these benchmark modules.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Report file.")] = Path("BENCHMARKS.md"),
) -> None:
    """Run the benchmarks (each against its baseline, median of runs) and write BENCHMARKS.md."""
    from bench.report import run_all

    figures = run_all(smoke=smoke, only=only, out=out)
    typer.echo(f"{len(figures)} figures written to {out}")


# Each area's commands live in vigil/commands/<area>.py, which exposes register(app);
# add the module's name to AREAS to put its commands on the `vigil` command line.
AREAS: tuple[str, ...] = ("incidents", "collectors", "canary", "operational", "clinical", "report")
for _area in AREAS:
    importlib.import_module(f"vigil.commands.{_area}").register(app)


if __name__ == "__main__":
    app()
