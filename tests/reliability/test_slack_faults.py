"""Slack faults in trial loops, with the real slack_sdk client against the fake Slack server:
429 with Retry-After, 500s (before and after Slack did the work), hangs, and a full outage
followed by recovery. Every page is delivered exactly once, counted at the server."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from slack_sdk.http_retry.jitter import RandomJitter
from sqlalchemy.engine import Engine

from incidents import actions, paging
from store.models import PageOutbox, table_of
from tests.fakes.slack import Behaviour, FakeSlack, Hang, RateLimited, ServerError
from tests.incidents.conftest import NOW, ONCALL, breach, fake_slack, make_settings
from tests.reliability.conftest import Record, database_of
from vigil.config import Settings

__all__ = ["fake_slack"]  # the fixture, shared with tests/incidents

PO = table_of(PageOutbox)
MAX_CYCLES = 40  # simulated minutes a trial may take before it counts as a lost page


def _dead_url() -> str:
    """A local port nobody listens on: every call is refused, as in a full outage."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def tick(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


def _cycle(fake: FakeSlack, engine: Engine, settings: Settings, at: datetime) -> None:
    fake.now = at.timestamp()
    paging.sync_pages(engine, settings=settings, now=at)
    paging.deliver_pending(engine, paging.slack_client(settings), settings=settings, now=at)


def _entries(engine: Engine, alert_id: int | None = None) -> list[sa.Row]:
    query = sa.select(PO).order_by(PO.c.id)
    if alert_id is not None:
        query = query.where(PO.c.dedup_key.like(f"alert:{alert_id}:%"))
    with engine.connect() as conn:
        return list(conn.execute(query))


# Each mode: the faults one trial injects (by trial number), and the cycles of full outage.
MODES: dict[str, tuple[str, Callable[[int], list[tuple[str, Behaviour]]], int]] = {
    "429": (
        "Slack answers 429 with Retry-After (1 s: retried inline; 30 s: back to the outbox)",
        lambda i: [("chat.postMessage", RateLimited(retry_after=1 if i % 2 else 30))],
        0,
    ),
    "500": (
        "Slack answers 500/503, before or after it posted the message",
        lambda i: [
            ("chat.postMessage", ServerError(500, after_work=bool(i % 2))),
            ("conversations.history", ServerError(503)),
            ("chat.postMessage", ServerError(503)),
        ],
        0,
    ),
    "hang": (
        "Slack hangs past the client timeout, before or after it posted the message",
        lambda i: [("chat.postMessage", Hang(seconds=1.5, after_work=bool(i % 2)))],
        0,
    ),
    "outage": (
        "Slack unreachable for 6 minutes (connection refused), then 503s, then recovery",
        lambda i: [
            ("chat.postMessage", ServerError(503)),
            ("conversations.history", ServerError(503)),
        ],
        6,
    ),
}
TRIALS = {"429": 5, "500": 5, "hang": 4, "outage": 2}


def test_every_page_delivered_exactly_once_through_slack_faults(
    engine: Engine,
    db_url: str,
    fake_slack: FakeSlack,
    record: Record,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # slack_sdk adds up to 1 s of random jitter to each inline retry; the retries still
    # happen, only the waiting is cut so the loops fit the CI budget.
    monkeypatch.setattr(RandomJitter, "recalculate", lambda self, duration: duration)
    settings = make_settings(slack_base_url=fake_slack.base_url)
    outage = make_settings(slack_base_url=_dead_url())
    clock = Clock()
    lost: dict[str, int] = dict.fromkeys(MODES, 0)
    trial_alerts: dict[str, list[int]] = {mode: [] for mode in MODES}
    for mode, (_, faults, outage_cycles) in MODES.items():
        for i in range(TRIALS[mode]):
            alert_id = breach(engine, at=clock.now, dedup_key=f"reliability/{mode}/{i}")
            trial_alerts[mode].append(alert_id)
            for method, behaviour in faults(i):
                fake_slack.script(method, behaviour)
            for _ in range(outage_cycles):
                _cycle(fake_slack, engine, outage, clock.tick())
            for _ in range(MAX_CYCLES):
                _cycle(fake_slack, engine, settings, clock.tick())
                mine = _entries(engine, alert_id)
                if mine and all(e.status == "sent" for e in mine):
                    break
            else:
                lost[mode] += 1
            actions.acknowledge_alert(
                engine, ONCALL, alert_id=alert_id, now=clock.now, settings=settings
            )
    for _ in range(MAX_CYCLES):  # the last acknowledgements, with no fault left scripted
        _cycle(fake_slack, engine, settings, clock.tick())
        if all(e.status == "sent" for e in _entries(engine)):
            break
    delivered = fake_slack.by_key()
    behaviours = {r.behaviour for r in fake_slack.requests}
    for injected in ("429", "500", "503", "5xx-after-work", "hang", "hang-after-work"):
        assert injected in behaviours, injected
    database = database_of(db_url)
    for mode, (fault, _, _) in MODES.items():
        keys = [e.dedup_key for a in trial_alerts[mode] for e in _entries(engine, a)]
        unsent = [
            e.dedup_key
            for a in trial_alerts[mode]
            for e in _entries(engine, a)
            if e.status != "sent"
        ]
        counts = [len(delivered.get(k, [])) for k in keys]
        doubled = sum(c > 1 for c in counts)
        missing = sum(c == 0 for c in counts)
        failures = len(
            {k.split(":")[1] for k, c in zip(keys, counts, strict=True) if c != 1}
            | {k.split(":")[1] for k in unsent}
        )
        record(
            area="paging",
            fault=fault,
            database=database,
            expected="every page (root and thread replies) delivered exactly once",
            observed=f"{len(keys)} pages for {TRIALS[mode]} alerts: {counts.count(1)} delivered "
            f"once, {missing} missing, {doubled} doubled, {len(unsent)} not marked sent; "
            f"{lost[mode]} trial(s) past {MAX_CYCLES} min",
            trials=TRIALS[mode],
            failures=max(failures, lost[mode]),
        )
        assert counts and all(c == 1 for c in counts) and not unsent, (mode, keys, counts)
    assert sorted(delivered) == sorted(e.dedup_key for e in _entries(engine))
