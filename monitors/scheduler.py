"""The scheduler process: collects the drop folder, refreshes rollups and runs every monitor.

It runs in its own process (`vigil schedule`), never inside Streamlit, with a persistent
SQLAlchemy job store (pool_pre_ping), coalescing, one instance per job, and a heartbeat row
the dashboard reads. Job functions are module-level so the persistent store can refer to them
by name.

The chain: `collect` (every minute) ingests the drop folder and refreshes the rollups; each
registered monitor runs on its own interval (misfire grace = its interval, so a run late by
less than one interval still happens once, and missed runs coalesce into one) and then syncs
the alerts of every key its results touched (incidents.alerts.sync_alerts); `partitions`
(daily) makes the coming months' prediction partitions and applies the raw-prediction
retention (store/partitions.py). Every job outcome
(ok, error, missed) is logged and kept in `jobstate` under scheduler.job.<id>.

Several scheduler processes may run: one leads through a database lock and runs the jobs, the
others wait as standbys and take over when it dies (monitors/leader.py).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.engine import Engine

from collectors.runner import collect_inbox
from incidents.alerts import AlertChanges, sync_alerts, sync_all_alerts
from incidents.paging import paging_job
from monitors.config import MonitorConfig
from monitors.leader import LeaderLock, leader_lock
from monitors.registry import MonitorRegistry, default_registry
from store.db import _sqlite_pragmas, make_engine
from store.models import SchedulerHeartbeat, table_of, utcnow
from store.partitions import maintain_partitions
from store.rollups import get_state, refresh, set_state
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


PARTITIONS_STATE = "partitions.last"  # what the last `partitions` job created and removed


def partitions_job() -> None:
    """The prediction table's coming month partitions, and retention of raw predictions."""
    engine = _get_engine()
    report = maintain_partitions(engine, retention_days=get_settings().prediction_retention_days)
    with engine.begin() as conn:
        set_state(conn, PARTITIONS_STATE, json.dumps(asdict(report)))
    record_heartbeat(engine, started_at=_started_at or utcnow(), job="partitions")


def run_monitor(
    engine: Engine,
    name: str,
    *,
    now: datetime | None = None,
    registry: MonitorRegistry | None = None,
    config: MonitorConfig | None = None,
) -> AlertChanges:
    """One monitor, then the alert lifecycle for every key its results touched."""
    registry = registry or default_registry()
    now = now or utcnow()
    results = registry.get(name).run(engine, config or MonitorConfig.from_file(), now)
    return sync_alerts(engine, results, now=now, registry=registry)


def monitor_job(name: str) -> None:
    engine = _get_engine()
    changes = run_monitor(engine, name)
    if changes:
        logger.info(
            "%s: %d alert(s) opened, %d escalated, %d resolved",
            name,
            len(changes.opened),
            len(changes.escalated),
            len(changes.resolved),
        )
    record_heartbeat(engine, started_at=_started_at or utcnow(), job=name, monitor_ran=True)


@dataclass
class CycleReport:
    """What one full cycle did and how long each step took (seconds)."""

    files: int = 0
    new_predictions: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    alerts: AlertChanges = field(default_factory=AlertChanges)

    @property
    def total_seconds(self) -> float:
        return sum(self.timings.values())


def run_cycle(
    engine: Engine,
    *,
    inbox: Path,
    processed: Path,
    secret: str,
    now: datetime | None = None,
    registry: MonitorRegistry | None = None,
) -> CycleReport:
    """One pass of everything the scheduler does on its intervals, in order: collect the drop
    folder, settle labels and refresh rollups, run every monitor and sync its alerts."""
    registry = registry or default_registry()
    config = MonitorConfig.from_file()
    report = CycleReport()
    started = time.perf_counter()
    report.files = len(collect_inbox(engine, inbox, processed, secret=secret))
    report.timings["collect"] = time.perf_counter() - started
    started = time.perf_counter()
    report.new_predictions = refresh(engine, now=now).new_predictions
    report.timings["refresh"] = time.perf_counter() - started
    for monitor in registry:
        started = time.perf_counter()
        report.alerts.extend(
            run_monitor(engine, monitor.name, now=now, registry=registry, config=config)
        )
        report.timings[f"monitor:{monitor.name}"] = time.perf_counter() - started
    return report


def simulate_job() -> None:
    from seed_data.simulator import drop_recent

    settings = get_settings()
    drop_recent(settings.inbox_dir, settings.spool_dir)


def job_state_key(job_id: str) -> str:
    return f"scheduler.job.{job_id}"


def record_job_event(
    engine: Engine,
    job_id: str,
    *,
    outcome: str,
    scheduled_for: datetime | None,
    error: str | None = None,
    now: datetime | None = None,
) -> dict[str, object]:
    """Keep each job's last outcome and running counts in `jobstate` (key scheduler.job.<id>)."""
    now = now or utcnow()
    with engine.begin() as conn:
        key = job_state_key(job_id)
        state: dict[str, object] = json.loads(get_state(conn, key, "{}"))
        counts = {k: int(str(state.get(k, 0))) for k in ("runs", "errors", "misses")}
        counts[{"ok": "runs", "error": "errors", "missed": "misses"}[outcome]] += 1
        state.update(counts)
        state.update(
            last_outcome=outcome,
            last_at=now.isoformat(),
            scheduled_for=scheduled_for.isoformat() if scheduled_for else None,
        )
        if outcome == "ok":
            state["last_ok_at"] = now.isoformat()
        else:
            state["last_problem"] = error or "missed its run"
            state["last_problem_at"] = now.isoformat()
        set_state(conn, key, json.dumps(state))
    return state


def _on_job_event(event: JobExecutionEvent) -> None:
    """Scheduler listener: log errors and misses, and record every outcome in `jobstate`."""
    if event.code == EVENT_JOB_ERROR:
        outcome, error = "error", f"{type(event.exception).__name__}: {event.exception}"
        logger.error("job %s failed: %s", event.job_id, error)
    elif event.code == EVENT_JOB_MISSED:
        outcome, error = "missed", None
        logger.warning("job %s missed its run at %s", event.job_id, event.scheduled_run_time)
    else:
        outcome, error = "ok", None
        logger.debug("job %s ran (scheduled for %s)", event.job_id, event.scheduled_run_time)
    try:
        record_job_event(
            _get_engine(),
            event.job_id,
            outcome=outcome,
            scheduled_for=event.scheduled_run_time,
            error=error,
        )
    except sa.exc.SQLAlchemyError as exc:  # the store being down must not kill the scheduler
        logger.error("could not record job %s %s: %s", event.job_id, outcome, exc)


def jobstore_engine(url: str) -> Engine:
    """The job store's engine, with pool_pre_ping on every backend so a connection the
    database dropped (restart, failover, idle timeout) is replaced, not handed to a job."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return make_engine(url)  # PostgreSQL engines are made with pool_pre_ping already


def build_scheduler(*, simulate: bool = False) -> BackgroundScheduler:
    """A scheduler with every job registered on its own interval."""
    settings = get_settings()
    scheduler_engine = jobstore_engine(settings.scheduler_url)
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=scheduler_engine)},
        executors={
            # Data jobs run one at a time; the heartbeat and paging have their own threads
            # so a long cycle never makes the scheduler look dead or delays a page.
            "default": ThreadPoolExecutor(1),
            "heartbeat": ThreadPoolExecutor(1),
            "paging": ThreadPoolExecutor(1),
        },
        job_defaults={"coalesce": True, "max_instances": 1},
        timezone="UTC",
    )
    scheduler.add_listener(_on_job_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_EXECUTED)
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
    else:
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
    # The end of the chain: pages for the alerts the monitor jobs opened, escalated or
    # resolved (incidents.paging reads the Alert rows; it queues and delivers via Slack).
    scheduler.add_job(
        paging_job,
        "interval",
        seconds=settings.paging_interval_seconds,
        id="page",
        executor="paging",
        misfire_grace_time=settings.paging_interval_seconds,
        **common,
    )
    # Daily (and at start): next months' prediction partitions, expired raw predictions.
    scheduler.add_job(
        partitions_job,
        "interval",
        hours=24,
        id="partitions",
        misfire_grace_time=24 * 3600,
        **common,
    )
    # The governance report of the month just ended, at 00:15 UTC on the 1st (by name: the
    # reports layer sits above the monitors). A scheduler down at that time still writes it
    # within the next day.
    scheduler.add_job(
        "reports.export:monthly_report_job",
        "cron",
        day=1,
        hour=0,
        minute=15,
        id="governance-report",
        misfire_grace_time=24 * 3600,
        replace_existing=True,
        coalesce=True,
        max_instances=1,
    )
    # The Governance page's stored summary of this month and the last (reports.summary),
    # refreshed before it goes stale so no dashboard replica gathers a month on opening.
    scheduler.add_job(
        "reports.summary:refresh_job",
        "interval",
        minutes=30,
        id="governance-summary",
        misfire_grace_time=30 * 60,
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
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        # Once only: Ctrl-C reaches us from the terminal and `vigil serve` sends SIGTERM too.
        # The handler only sets a flag; the main thread shuts the scheduler down, so no
        # job is being submitted while its executor closes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        logger.info("scheduler stopping (signal %d); letting a running job finish", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # Of several scheduler processes one leads; the others wait (monitors/leader.py).
    poll = get_settings().leader_poll_seconds
    lock = leader_lock(get_settings().scheduler_url)
    waiting = False
    while not stop.is_set():
        try:
            if lock.acquire():
                logger.info("scheduler %d leads", os.getpid())
                _lead(lock, stop, simulate=simulate, poll=poll)
                waiting = False
            elif not waiting:
                logger.info("scheduler %d is standby: another scheduler leads", os.getpid())
                waiting = True
        except sa.exc.SQLAlchemyError as exc:  # the database is down or restarting: retry
            logger.error("scheduler %d: database unavailable, retrying: %s", os.getpid(), exc)
            lock.release()
            waiting = False
        stop.wait(poll)
    lock.release()


def settle_heap() -> int:
    """Put what is alive once the process has started (imported modules, their tables and
    caches: long-lived by nature) out of the cyclic garbage collector's reach (gc.freeze).

    The collector's full passes then scan only what the jobs made since, not the same few
    hundred thousand start-up objects every time. Objects made later, and their cycles, are
    collected as before. Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _lead(lock: LeaderLock, stop: threading.Event, *, simulate: bool, poll: float) -> None:
    """Run the jobs while this process holds the leader lock and no stop was asked."""
    global _started_at
    _started_at = utcnow()
    scheduler = build_scheduler(simulate=simulate)
    frozen = settle_heap()  # every job module is imported by now
    record_heartbeat(_get_engine(), started_at=_started_at)
    # Reconcile alerts with every monitor's latest evidence once at start: results written
    # while no scheduler ran (a bootstrap, a manual `vigil monitor`) must still alert.
    sync_all_alerts(_get_engine())
    logger.info(
        "scheduler started with jobs: %s (%d start-up objects frozen)",
        [j.id for j in scheduler.get_jobs()],
        frozen,
    )
    scheduler.start()
    while not stop.wait(poll):
        if not lock.still_held():
            logger.error("scheduler %d lost the leader lock; stepping down", os.getpid())
            break
    scheduler.shutdown(wait=True)
    logger.info("scheduler stopped")
