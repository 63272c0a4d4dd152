"""Incident response under faults: responders clicking at once, and a tampered audit log.

- Two responders disable (then re-enable) the same score at the same moment, round after
  round: one state change per round, both clicks audited, no error.
- The audit log edited, deleted from or inserted into by someone with database rights (the
  append-only triggers dropped first, as such an attacker would): `vigil audit verify` names
  the first broken link every time, and passes again once the log is restored.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from incidents import actions, audit
from incidents.auth import Actor, Role
from store.models import AuditEvent, Incident, KillSwitch, table_of
from tests.incidents.conftest import NOW, make_settings
from tests.incidents.test_audit import append, drop_append_only_triggers
from tests.reliability.conftest import Record, database_of
from vigil.cli import app
from vigil.config import get_settings

KS, AE = table_of(KillSwitch), table_of(AuditEvent)
SETTINGS = make_settings()
ROUNDS = 8  # each: two responders disable at once, then two re-enable at once


def _at_once(calls: list[Callable[[], Any]]) -> tuple[list[Any], list[BaseException]]:
    barrier = threading.Barrier(len(calls))
    results: list[Any] = []
    errors: list[BaseException] = []

    def run(call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results.append(call())
        except BaseException as exc:  # any error is a failed trial, reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results, errors


def test_two_responders_clicking_at_once(engine: Engine, db_url: str, record: Record) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(table_of(Incident)).values(title="Drift", opened_by="x", opened_at=NOW)
        )
    problems: list[str] = []
    trials = 0
    for n in range(ROUNDS):
        for verb, call in (("disable", actions.disable_score), ("enable", actions.enable_score)):
            pair = [Actor(f"Responder {n}{side}", Role.INCIDENT_RESPONDER) for side in "AB"]
            with engine.connect() as conn:
                before = conn.execute(sa.select(sa.func.count()).select_from(AE)).scalar_one()
            results, errors = _at_once(
                [
                    lambda actor=actor, call=call, verb=verb: call(
                        engine, actor, model="deterioration", site="UMC",
                        reason=f"{verb} by {actor.name}", incident_id=1, settings=SETTINGS,
                    )
                    for actor in pair
                ]
            )  # fmt: skip
            trials += 1
            with engine.connect() as conn:
                switch = conn.execute(sa.select(KS)).one()
                audited = conn.execute(
                    sa.select(AE.c.actor, AE.c.detail).where(AE.c.id > before)
                ).all()
            changed = sorted(bool(r.changed) for r in results)
            if errors:
                problems.append(f"{verb} round {n}: {errors!r}")
            elif changed != [False, True]:
                problems.append(f"{verb} round {n}: changed {changed}")
            elif switch.enabled != (verb == "enable") or switch.revision != 2 * n + 1 + (
                verb == "enable"
            ):
                problems.append(f"{verb} round {n}: switch {switch.enabled} rev {switch.revision}")
            elif sorted(a.actor for a in audited) != sorted(a.name for a in pair):
                problems.append(f"{verb} round {n}: audited {[a.actor for a in audited]}")
            elif sum(bool(a.detail["changed"]) for a in audited) != 1:
                problems.append(f"{verb} round {n}: audit says {[a.detail for a in audited]}")
    chain = audit.verify_chain(engine)
    if not chain.ok:
        problems.append(str(chain))
    record(
        area="incidents",
        fault="two responders disable (or re-enable) the same score at the same moment",
        database=database_of(db_url),
        expected="one state change, both clicks audited, no error; audit chain intact",
        observed=f"{trials} simultaneous pairs: {trials - len(problems)} with one change and "
        f"two audit events; chain {'intact' if chain.ok else 'BROKEN'}"
        + (f"; {problems[:3]}" if problems else ""),
        trials=trials,
        failures=len(problems),
    )
    assert not problems, problems


@pytest.fixture
def cli_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VIGIL_DATABASE_URL", db_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _row(conn: sa.Connection, event_id: int) -> dict[str, Any]:
    return dict(conn.execute(sa.select(AE).where(AE.c.id == event_id)).one()._mapping)


def _edit(
    conn: sa.Connection, ids: list[int], i: int
) -> tuple[int | None, Callable[[sa.Connection], None]]:
    original = _row(conn, ids[i])
    conn.execute(
        sa.update(AE).where(AE.c.id == ids[i]).values(detail={"reason": "nothing happened"})
    )
    return ids[i], lambda c: c.execute(
        sa.update(AE).where(AE.c.id == ids[i]).values(detail=original["detail"])
    )


def _edit_rehashed(
    conn: sa.Connection, ids: list[int], i: int
) -> tuple[int | None, Callable[[sa.Connection], None]]:
    """The attacker also recomputes the edited event's hash: the next link breaks."""
    original = _row(conn, ids[i])
    detail = {"reason": "nothing happened", "changed": False}
    forged = audit.event_hash(
        original["prev_hash"],
        audit.canonical_event(
            at=original["at"], actor=original["actor"], role=original["role"],
            action=original["action"], target=original["target"], detail=detail,
        ),
    )  # fmt: skip
    conn.execute(sa.update(AE).where(AE.c.id == ids[i]).values(detail=detail, hash=forged))
    restore = {"detail": original["detail"], "hash": original["hash"]}
    broken = ids[i + 1] if i + 1 < len(ids) else None
    return broken, lambda c: c.execute(sa.update(AE).where(AE.c.id == ids[i]).values(**restore))


def _delete(
    conn: sa.Connection, ids: list[int], i: int
) -> tuple[int | None, Callable[[sa.Connection], None]]:
    original = _row(conn, ids[i])
    conn.execute(sa.delete(AE).where(AE.c.id == ids[i]))
    broken = ids[i + 1] if i + 1 < len(ids) else None  # the tail: the head no longer matches
    return broken, lambda c: c.execute(sa.insert(AE).values(**original))


SHIFT = 100_000


def _insert(
    conn: sa.Connection, ids: list[int], i: int
) -> tuple[int | None, Callable[[sa.Connection], None]]:
    """A forged event slipped in after event i, with a correct link to it and its own hash."""
    before = _row(conn, ids[i])
    conn.execute(sa.update(AE).where(AE.c.id > ids[i]).values(id=AE.c.id + SHIFT))
    detail = {"reason": "approved by the board", "changed": True}
    canonical = audit.canonical_event(
        at=before["at"], actor="Ada Admin", role="admin", action="enable_score",
        target=before["target"], detail=detail,
    )  # fmt: skip
    conn.execute(
        sa.insert(AE).values(
            id=ids[i] + 1, at=before["at"], actor="Ada Admin", role="admin", action="enable_score",
            target=before["target"], detail=detail, prev_hash=before["hash"],
            hash=audit.event_hash(before["hash"], canonical),
        )
    )  # fmt: skip

    def restore(c: sa.Connection) -> None:
        c.execute(sa.delete(AE).where(AE.c.id == ids[i] + 1))
        c.execute(sa.update(AE).where(AE.c.id > SHIFT).values(id=AE.c.id - SHIFT))

    broken = ids[i + 1] + SHIFT if i + 1 < len(ids) else None
    return broken, restore


TAMPERING = {
    "an event edited (UPDATE)": _edit,
    "an event edited and its hash recomputed": _edit_rehashed,
    "an event deleted (DELETE)": _delete,
    "a forged event inserted in the middle, correctly linked": _insert,
}
POSITIONS = 3  # random positions per kind (edits and deletions: the last event among them)


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_audit_verify_names_the_first_broken_link(
    kind: str, engine: Engine, db_url: str, cli_env: None, record: Record
) -> None:
    append(engine, 12)
    drop_append_only_triggers(engine)
    with engine.connect() as conn:
        ids = list(conn.execute(sa.select(AE.c.id).order_by(AE.c.id)).scalars())
    rng = random.Random(kind)
    if TAMPERING[kind] is _insert:  # after the last event: see the test below
        positions = rng.sample(range(1, len(ids) - 2), POSITIONS)
    else:
        positions = [*rng.sample(range(1, len(ids) - 1), POSITIONS - 1), len(ids) - 1]
    runner = CliRunner()
    misses: list[str] = []
    for i in positions:
        with engine.begin() as conn:
            broken, restore = TAMPERING[kind](conn, ids, i)
        report = audit.verify_chain(engine)
        result = runner.invoke(app, ["audit", "verify"])
        where = f"event #{broken}" if broken is not None else "the chain's end"
        if report.ok or report.broken_at != broken or result.exit_code != 1:
            misses.append(f"at {i}: {report} (exit {result.exit_code})")
        elif f"BROKEN at {where}" not in result.output:
            misses.append(f"at {i}: CLI said {result.output.strip()!r}")
        with engine.begin() as conn:
            restore(conn)
        if not audit.verify_chain(engine).ok:
            misses.append(f"at {i}: still broken after the log was restored")
    record(
        area="audit",
        fault=f"audit log tampered: {kind}",
        database=database_of(db_url),
        expected="`vigil audit verify` exits 1 naming the first broken link; passes once restored",
        observed=f"{len(positions) - len(misses)} of {len(positions)} tamperings named at the "
        f"right link (after event {', '.join(str(i + 1) for i in sorted(positions))} of {len(ids)})"
        + (f"; {misses}" if misses else ""),
        trials=len(positions),
        failures=len(misses),
    )
    assert not misses, misses


def test_a_forged_event_appended_after_the_last_one_is_caught(
    engine: Engine, db_url: str, record: Record
) -> None:
    append(engine, 12)
    drop_append_only_triggers(engine)
    with engine.connect() as conn:
        ids = list(conn.execute(sa.select(AE.c.id).order_by(AE.c.id)).scalars())
    with engine.begin() as conn:
        _insert(conn, ids, len(ids) - 1)  # linked to the last event; the head row untouched
    report = audit.verify_chain(engine)
    record(
        area="audit",
        fault="audit log tampered: a forged event appended after the last one, correctly "
        "linked, head row untouched",
        database=database_of(db_url),
        expected="`vigil audit verify` reports the extra event",
        observed=str(report)[:120] + (" — NOT DETECTED" if report.ok else ""),
        trials=1,
        failures=int(report.ok),
    )
    assert not report.ok
