"""The scheduler process: collects the drop folder, refreshes rollups and runs every monitor.

It runs in its own process (`vigil schedule`), never inside Streamlit, with a persistent
SQLAlchemy job store, coalescing, one instance per job, and a heartbeat row the dashboard reads.
Job functions are module-level so the persistent store can refer to them by name.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from datetime import datetime

import sqlalchemy as sa
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.blocking import BlockingScheduler
from sqlalchemy.engine import Engine

from collectors.runner import collect_inbox
from monitors.config import MonitorConfig
from monitors.registry import default_registry
from store.db import make_engine
from store.models import SchedulerHeartbeat, table_of, utcnow
from store.rollups import refresh
from vigil.config import get_settings

logger = logging.getLogger(__name__)

PROCESS_NAME = "scheduler"
HB = table_of(SchedulerHeartbeat)
_engine: Engine | None = None
_started_at: datetime | None = None


def _get_engine() -> Engine:
    global _engine
    if _engine is None:
        _engine = make_engine(get_settings().database_url)
    return _engine


def record_heartbeat(
    engine: Engine,
    *,
    started_at: datetime,
    job: str | None = None,
    monitor_ran: bool = False,
    now: datetime | None = None,
) -> None:
    """Upsert this process's heartbeat row (and the last job it finished)."""
    now = now or utcnow()
    values: dict[str, object] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": started_at,
        "beat_at": now,
    }
    if job is not None:
        values.update(last_job=job, last_job_at=now)
    if monitor_ran:
        values["last_monitor_run_at"] = now
    with engine.begin() as conn:
        updated = conn.execute(
            sa.update(HB).where(HB.c.process == PROCESS_NAME).values(**values)
        ).rowcount
        if not updated:
            conn.execute(sa.insert(HB).values(process=PROCESS_NAME, **values))


def heartbeat_job() -> None:
    record_heartbeat(_get_engine(), started_at=_started_at or utcnow())


def collect_job() -> None:
    settings = get_settings()
    engine = _get_engine()
    collect_inbox(engine, settings.inbox_dir, settings.processed_dir, secret=settings.pseudonym_key)
    refresh(engine)
    record_heartbeat(engine, started_at=_started_at or utcnow(), job="collect")


def monitor_job(name: str) -> None:
    engine = _get_engine()
    monitor = default_registry().get(name)
    monitor.run(engine, MonitorConfig.from_file(), utcnow())
    record_heartbeat(engine, started_at=_started_at or utcnow(), job=name, monitor_ran=True)


def simulate_job() -> None:
    from seed_data.simulator import drop_recent

    settings = get_settings()
    drop_recent(settings.inbox_dir, settings.spool_dir)


def _log_job_problem(event: JobExecutionEvent) -> None:
    if event.exception is not None:
        logger.error("job %s failed: %s", event.job_id, event.exception)
    else:
        logger.warning("job %s missed its run at %s", event.job_id, event.scheduled_run_time)


def build_scheduler(*, simulate: bool = False) -> BlockingScheduler:
    """A scheduler with every job registered on its own interval."""
    settings = get_settings()
    scheduler_engine = make_engine(settings.scheduler_url)
    scheduler = BlockingScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=scheduler_engine)},
        executors={
            # Data jobs run one at a time; the heartbeat has its own thread so a long
            # cycle never makes the scheduler look dead.
            "default": ThreadPoolExecutor(1),
            "heartbeat": ThreadPoolExecutor(1),
        },
        job_defaults={"coalesce": True, "max_instances": 1},
        timezone="UTC",
    )
    scheduler.add_listener(_log_job_problem, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    # Explicit on every job (not only job_defaults) so the settings are visible before start.
    common = {
        "replace_existing": True,
        "next_run_time": utcnow(),
        "coalesce": True,
        "max_instances": 1,
    }
    scheduler.add_job(
        heartbeat_job,
        "interval",
        seconds=settings.heartbeat_seconds,
        id="heartbeat",
        executor="heartbeat",
        misfire_grace_time=settings.heartbeat_seconds,
        **common,
    )
    if simulate:
        scheduler.add_job(
            simulate_job,
            "interval",
            seconds=settings.simulate_interval_seconds,
            id="simulate",
            misfire_grace_time=settings.simulate_interval_seconds,
            **common,
        )
    elif scheduler_engine is not None:
        _remove_stale(scheduler_engine, "simulate")
    scheduler.add_job(
        collect_job,
        "interval",
        seconds=settings.collect_interval_seconds,
        id="collect",
        misfire_grace_time=settings.collect_interval_seconds,
        **common,
    )
    for monitor in default_registry():
        scheduler.add_job(
            monitor_job,
            "interval",
            args=[monitor.name],
            seconds=monitor.interval_seconds,
            id=f"monitor:{monitor.name}",
            misfire_grace_time=monitor.interval_seconds,
            **common,
        )
    return scheduler


def _remove_stale(engine: Engine, job_id: str) -> None:
    """Drop a job a previous run persisted but this run does not want (e.g. the simulator)."""
    with engine.begin() as conn:
        if sa.inspect(conn).has_table("apscheduler_jobs"):
            conn.execute(sa.text("DELETE FROM apscheduler_jobs WHERE id = :id"), {"id": job_id})


def run_scheduler(*, simulate: bool = False) -> None:
    """Run until SIGINT or SIGTERM; a job already running is allowed to finish."""
    global _started_at
    _started_at = utcnow()
    scheduler = build_scheduler(simulate=simulate)

    def _stop(signum: int, _frame: object) -> None:
        # Once only: Ctrl-C reaches us from the terminal and `vigil serve` sends SIGTERM too.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        logger.info("scheduler stopping (signal %d); letting a running job finish", signum)
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    record_heartbeat(_get_engine(), started_at=_started_at)
    logger.info("scheduler started with jobs: %s", [j.id for j in scheduler.get_jobs()])
    scheduler.start()
    logger.info("scheduler stopped")
