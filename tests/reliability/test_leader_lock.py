"""The leader lock itself (monitors/leader.py): one holder at a time, free again when its holder
dies or, on PostgreSQL, loses its connection; the standby can then take it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from monitors.leader import FileLock, PostgresAdvisoryLock, leader_lock
from tests.reliability.conftest import Record, database_of


def _hold(url: str, ready: multiprocessing.synchronize.Event) -> None:
    lock = leader_lock(url)
    assert lock.acquire()
    ready.set()
    time.sleep(120)  # killed long before


def test_one_holder_at_a_time_and_free_when_the_holder_dies(
    engine: Engine, db_url: str, record: Record
) -> None:
    checks: dict[str, bool] = {}
    first, second = leader_lock(db_url), leader_lock(db_url)
    checks["the first process to ask gets it"] = first.acquire()
    checks["asking again while holding is idempotent"] = first.acquire() and first.still_held()
    checks["a second holder is refused"] = not second.acquire()
    first.release()
    checks["released: the second gets it"] = second.acquire()
    second.release()
    # A holder killed with SIGKILL: the lock comes free without its help.
    fork = multiprocessing.get_context("fork")
    ready = fork.Event()
    engine.dispose()
    child = fork.Process(target=_hold, args=(db_url, ready))
    child.start()
    ready.wait(30)
    checks["held by another process: refused"] = not first.acquire()
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join(30)
    deadline = time.monotonic() + 10
    while not first.acquire() and time.monotonic() < deadline:
        time.sleep(0.05)
    checks["its holder killed: free again"] = first.still_held()
    if isinstance(first, PostgresAdvisoryLock):
        with engine.connect() as conn:  # the database drops the holder's connection
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND objid = :key AND granted"
                ),
                {"key": first.key},
            )
            conn.commit()
        checks["connection lost: the holder knows it no longer leads"] = not first.still_held()
        checks["connection lost: another can lead"] = second.acquire()
        second.release()
    else:
        assert isinstance(first, FileLock)
    first.release()
    record(
        area="scheduler",
        fault="the leader lock: contention, release, holder killed"
        + (", connection dropped" if database_of(db_url) == "postgresql" else ""),
        database=database_of(db_url),
        expected="one holder at a time; free again as soon as its holder dies; a holder whose "
        "connection dropped steps down",
        observed="; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()),
        trials=len(checks),
        failures=sum(not v for v in checks.values()),
    )
    assert all(checks.values()), checks
