"""Scheduler leader election: of several `vigil schedule` processes, one runs the jobs.

The leader holds a lock for as long as it lives; the others wait as standbys and poll.

- PostgreSQL: `pg_try_advisory_lock` on a dedicated connection held for the leader's life.
  The lock belongs to the session, so when the leader dies (even by SIGKILL) its backend
  ends and the lock is free at once; a standby takes over at its next poll. The leader checks
  its connection at every renewal: a lost connection (server restart, failover) means a lost
  lock, and the leader steps down rather than run beside a new leader.
- SQLite: an exclusive `flock` on a file beside the database (`<db>.scheduler.lock`). SQLite
  serves one machine, so the lock is a host lock; the kernel releases it when the holder
  dies, so a standby takes over at its next poll.

Takeover time after the leader dies: at most `leader_poll_seconds` (plus the PostgreSQL
server noticing the dropped connection, immediate for a killed process on a live host).
"""

from __future__ import annotations

import fcntl
import logging
import os
import zlib
from pathlib import Path
from typing import IO, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

logger = logging.getLogger(__name__)

# One advisory-lock key per purpose; CRC-32 of the name keeps it stable and readable.
LOCK_NAME = "vigil.scheduler.leader"
ADVISORY_KEY = zlib.crc32(LOCK_NAME.encode())


class LeaderLock(Protocol):
    """A lock only one process holds at a time, released when its holder dies."""

    def acquire(self) -> bool:
        """Take the lock if it is free; True when this process holds it (idempotent)."""
        ...

    def still_held(self) -> bool:
        """True while this process still holds the lock it acquired."""
        ...

    def release(self) -> None: ...


class PostgresAdvisoryLock:
    """`pg_try_advisory_lock` held by one dedicated connection for the leader's life."""

    def __init__(self, engine: Engine, key: int = ADVISORY_KEY) -> None:
        self.engine = engine
        self.key = key
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        if self._conn is not None:
            return self.still_held()
        conn = self.engine.connect()
        try:
            got = bool(
                conn.execute(
                    sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
                ).scalar_one()
            )
            conn.commit()  # the lock is session-level: it outlives the transaction
        except sa.exc.DBAPIError:
            conn.close()
            raise
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    def still_held(self) -> bool:
        if self._conn is None:
            return False
        try:
            held = self._conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid = pg_backend_pid() AND objid = :objid AND granted"
                ),
                {"objid": self.key & 0xFFFFFFFF},
            ).scalar_one()
            self._conn.commit()
        except sa.exc.DBAPIError as exc:
            logger.warning("leader lock connection lost: %s", exc)
            self._drop()
            return False
        if not held:
            self._drop()
        return bool(held)

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            self._conn.commit()
        except sa.exc.DBAPIError:
            pass  # a dead connection holds no lock
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()  # never hand this session back to the pool
                self._conn.close()
            except sa.exc.DBAPIError:
                pass
            self._conn = None


class FileLock:
    """An exclusive, non-blocking `flock` on a file; the kernel drops it when the holder dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None

    def acquire(self) -> bool:
        if self._handle is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._handle = handle
        return True

    def still_held(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def leader_lock(url: str, engine: Engine | None = None) -> LeaderLock:
    """The leader lock for the scheduler's database URL."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            raise ValueError("leader election needs a SQLite file, not an in-memory database")
        return FileLock(Path(database).with_name(Path(database).name + ".scheduler.lock"))
    if parsed.get_backend_name() == "postgresql":
        from store.db import make_engine

        return PostgresAdvisoryLock(engine or make_engine(url))
    raise ValueError(f"no leader lock for the {parsed.get_backend_name()} backend")
