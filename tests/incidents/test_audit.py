"""The audit log: append-only in the database, hash-chained, and verification finds tampering."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from incidents import audit
from store.models import AuditEvent, table_of
from tests.incidents.conftest import NOW
from vigil.cli import app
from vigil.config import get_settings

AE = table_of(AuditEvent)
runner = CliRunner()


def append(engine: Engine, n: int) -> list[str]:
    hashes = []
    for i in range(n):
        with engine.begin() as conn:
            hashes.append(
                audit.append(
                    conn,
                    actor=f"actor {i}",
                    role="incident_responder",
                    action="disable_score",
                    target=f"score:deterioration@S{i}",
                    detail={"reason": f"reason {i}", "changed": True, "since": NOW},
                    at=NOW,
                )
            )
    return hashes


def drop_append_only_triggers(engine: Engine) -> None:
    """What someone with database rights would do before editing the log by hand."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("DROP TRIGGER auditevent_append_only ON auditevent"))
        else:
            conn.execute(sa.text("DROP TRIGGER auditevent_no_update"))
            conn.execute(sa.text("DROP TRIGGER auditevent_no_delete"))


def ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(AE.c.id).order_by(AE.c.id)).scalars())


@pytest.fixture
def cli_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VIGIL_DATABASE_URL", db_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_hash_chain_is_sha256_of_prev_hash_and_canonical_json_and_append_only(
    engine: Engine,
) -> None:
    first, second = append(engine, 2)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(AE).order_by(AE.c.id)).all()
    canonical = json.dumps(
        {
            "action": "disable_score",
            "actor": "actor 0",
            "at": "2026-09-01T03:00:00.000000+00:00",
            "detail": {
                "changed": True,
                "reason": "reason 0",
                "since": "2026-09-01T03:00:00.000000+00:00",
            },
            "role": "incident_responder",
            "target": "score:deterioration@S0",
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    assert rows[0].prev_hash == "0" * 64
    assert rows[0].hash == first == hashlib.sha256(("0" * 64 + canonical).encode()).hexdigest()
    assert rows[1].prev_hash == first and rows[1].hash == second
    report = audit.verify_chain(engine)
    assert (report.ok, report.events, report.head_hash) == (True, 2, second)
    # Append-only in the database itself.
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(sa.update(AE).values(actor="someone else"))
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(sa.delete(AE))
    assert audit.verify_chain(engine).ok


def test_verify_names_an_edited_event_and_a_truncated_tail(engine: Engine, cli_env: None) -> None:
    append(engine, 4)
    drop_append_only_triggers(engine)
    target = ids(engine)[1]
    with engine.begin() as conn:
        conn.execute(
            sa.update(AE).where(AE.c.id == target).values(detail={"reason": "nothing happened"})
        )
    report = audit.verify_chain(engine)
    assert not report.ok and report.broken_at == target and "edited" in report.problem
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 1
    assert f"BROKEN at event #{target}" in result.output

    # Deleting events at the end leaves every link intact; the head still tells.
    with engine.begin() as conn:
        conn.execute(sa.delete(AE).where(AE.c.id >= target))
    report = audit.verify_chain(engine)
    assert not report.ok and report.broken_at is None
    assert "holds 1 events" in report.problem and "head records 4" in report.problem
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 1 and "BROKEN at the chain's end" in result.output


def test_verify_names_the_link_after_a_rehashed_edit_or_a_deleted_event(engine: Engine) -> None:
    append(engine, 5)
    drop_append_only_triggers(engine)
    first, second, third, *_ = ids(engine)
    with engine.begin() as conn:  # a careful forger recomputes the edited event's hash...
        row = conn.execute(sa.select(AE).where(AE.c.id == second)).one()
        forged = audit.event_hash(
            row.prev_hash,
            audit.canonical_event(
                at=row.at,
                actor="someone else",
                role=row.role,
                action=row.action,
                target=row.target,
                detail=row.detail,
            ),
        )
        conn.execute(
            sa.update(AE).where(AE.c.id == second).values(actor="someone else", hash=forged)
        )
    report = audit.verify_chain(engine)
    assert (
        report.broken_at == third and "deleted or rewritten" in report.problem
    )  # ...the next link breaks

    with engine.begin() as conn:
        conn.execute(sa.update(AE).where(AE.c.id == second).values(actor=row.actor, hash=row.hash))
    assert audit.verify_chain(engine).ok
    with engine.begin() as conn:
        conn.execute(sa.delete(AE).where(AE.c.id == first))
    assert audit.verify_chain(engine).broken_at == second


def test_concurrent_appends_stay_one_chain(engine: Engine, cli_env: None) -> None:
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        barrier.wait()
        try:
            for i in range(5):
                with engine.begin() as conn:
                    audit.append(
                        conn,
                        actor=f"writer {n}",
                        role="oncall",
                        action="acknowledge_alert",
                        target=f"alert:{i}",
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    report = audit.verify_chain(engine)
    assert report.ok and report.events == 30
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 0 and "audit chain intact: 30 events" in result.output
