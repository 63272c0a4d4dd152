"""The reliability suite's recorder: each fault test reports its trials into one JSON file.

A test asks for the `record` fixture and calls it once per fault and database with what was
expected, what was observed, how many trials ran and how many failed. The results are
written at the end of the session to `artifacts/reliability.json` (or
VIGIL_RELIABILITY_RESULTS); rows of faults this session did not run are kept, so a partial
run updates only what it ran. `python -m tests.reliability.report` writes RELIABILITY.md.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("VIGIL_RELIABILITY_RESULTS", REPO / "artifacts" / "reliability.json"))


@dataclass(frozen=True)
class Outcome:
    """One fault on one database: what should happen, what did, over how many trials."""

    area: str
    fault: str
    database: str  # sqlite, postgresql, or "-" where no database is involved
    expected: str
    observed: str
    trials: int
    failures: int
    test: str
    recorded_at: str


_outcomes: list[Outcome] = []

Record = Callable[..., Outcome]


def database_of(url: str | None) -> str:
    if not url:
        return "-"
    return "postgresql" if url.startswith("postgresql") else "sqlite"


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Record:
    """record(area=, fault=, database=, expected=, observed=, trials=, failures=)."""

    def _record(
        *,
        area: str,
        fault: str,
        database: str,
        expected: str,
        observed: str,
        trials: int,
        failures: int,
    ) -> Outcome:
        assert trials > 0, "a fault with no trials proves nothing"
        outcome = Outcome(
            area=area,
            fault=fault,
            database=database,
            expected=expected,
            observed=observed,
            trials=trials,
            failures=failures,
            test=request.node.nodeid,
            recorded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        _outcomes.append(outcome)
        return outcome

    return _record


def load_results(path: Path = RESULTS) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return list(json.loads(path.read_text(encoding="utf-8"))["results"])


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Merge this process's rows into the results file. Test worker processes (pytest-xdist)
    each finish their own session, so the read-merge-write holds a lock on the file."""
    if not _outcomes:
        return
    fresh = {(o.area, o.fault, o.database): asdict(o) for o in _outcomes}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS.with_name(RESULTS.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kept = [
            row
            for row in load_results()
            if (row["area"], row["fault"], row["database"]) not in fresh
        ]
        rows = kept + list(fresh.values())
        payload = {
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "results": rows,
        }
        partial = RESULTS.with_name(RESULTS.name + f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        partial.replace(RESULTS)
