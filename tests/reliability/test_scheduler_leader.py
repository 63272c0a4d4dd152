"""Several `vigil schedule` processes: one leads through a database lock, no job runs twice,
and a standby takes over when the leader is killed with SIGKILL."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from store.models import SchedulerHeartbeat, table_of
from tests.reliability.conftest import Record, database_of
from tests.reliability.processes import Scheduler, scheduler_env

PROCESSES = 4  # started at once; each leader in turn is killed with SIGKILL
TAKEOVERS = PROCESSES - 1


def _heartbeat_pid(engine: Engine) -> int | None:
    hb = table_of(SchedulerHeartbeat)
    with engine.connect() as conn:
        return conn.execute(sa.select(hb.c.pid)).scalar_one_or_none()


def _leader(alive: list[Scheduler], timeout: float = 60) -> Scheduler:
    """The one process that leads, once every other one says it is standby."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaders = [s for s in alive if s.leads()]
        assert len(leaders) <= 1, [s.name for s in leaders]
        if leaders:
            return leaders[0]
        time.sleep(0.05)
    raise AssertionError("no scheduler took the lead:\n" + "\n".join(s.text() for s in alive))


def test_one_leader_no_job_twice_and_a_standby_takes_over_after_sigkill(
    engine: Engine, db_url: str, tmp_path: Path, record: Record
) -> None:
    env = scheduler_env(db_url, tmp_path, VIGIL_MONITOR_INTERVAL_SECONDS="3600")
    everyone = [Scheduler.start(f"s{n}", env, tmp_path) for n in range(PROCESSES)]
    alive = list(everyone)
    failures: list[str] = []
    takeover_seconds = []
    leader = _leader(alive)
    for _ in range(TAKEOVERS):
        for standby in alive:
            if standby is not leader:
                standby.wait_for("is standby")
        leader.wait_for("job heartbeat ran")
        time.sleep(1.0)  # all alive: the standbys must run nothing
        for standby in alive:
            if standby is not leader and standby.runs():
                failures.append(f"{standby.name} ran {standby.runs()[:3]} while {leader.name} led")
        leader.kill()
        alive.remove(leader)
        killed_at = time.monotonic()
        leader = _leader(alive, timeout=30)
        takeover_seconds.append(time.monotonic() - killed_at)
        leader.wait_for("job heartbeat ran")
    deadline = time.monotonic() + 10
    while _heartbeat_pid(engine) != leader.process.pid and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leader.stop() == 0, leader.text()
    runs = Counter(run for s in everyone for run in s.runs())
    doubled = [run for run, count in runs.items() if count > 1]
    if doubled:
        failures.append(f"ran twice: {doubled[:5]}")
    if _heartbeat_pid(engine) != leader.process.pid:
        failures.append("the heartbeat row does not name the last leader")
    record(
        area="scheduler",
        fault=f"{PROCESSES} schedulers started at once; each leader in turn killed (SIGKILL)",
        database=database_of(db_url),
        expected="one leads (database lock); standbys run nothing; one standby takes over "
        "within the poll interval; no job run twice",
        observed=f"{sum(runs.values())} job runs, {len(doubled)} run twice; one leader at a "
        f"time; takeover in {min(takeover_seconds):.2f}–{max(takeover_seconds):.2f} s "
        "(poll 0.5 s)" + (f"; {'; '.join(failures)}" if failures else ""),
        trials=TAKEOVERS,
        failures=min(len(failures), TAKEOVERS),
    )
    assert not failures, failures
    assert sum(runs.values()) > 10 * TAKEOVERS
