"""Slack paging with the real slack_sdk WebClient against a local fake Slack Web API server."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from incidents import actions, paging
from incidents.auth import Actor, Role
from incidents.console import undeliverable_frame
from incidents.paging import AlertView, Links, build_alert_message
from store.models import PageOutbox, table_of
from tests.fakes.slack import FakeSlack, Hang, RateLimited, ServerError, SlackError
from tests.incidents.conftest import NOW, ONCALL, breach, make_settings, recover
from vigil.config import Settings

PO = table_of(PageOutbox)


def run(
    fake: FakeSlack, engine: Engine, settings: Settings, at: datetime = NOW
) -> paging.DeliveryReport:
    """One paging-job cycle at a simulated time: queue what the alerts call for, deliver."""
    fake.now = at.timestamp()  # Slack stamps messages with the (simulated) time of posting
    paging.sync_pages(engine, settings=settings, now=at)
    return paging.deliver_pending(engine, paging.slack_client(settings), settings=settings, now=at)


def outbox(engine: Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(PO).order_by(PO.c.id)))


def test_alert_message_is_block_kit_with_a_text_fallback() -> None:
    view = AlertView(
        id=7,
        dedup_key="observed_expected:deterioration:UMC:all",
        monitor="observed_expected",
        model="deterioration",
        model_title="Inpatient clinical deterioration",
        site="UMC",
        site_name="University Medical Center",
        arm="all",
        severity="page",
        status="open",
        summary="O:E 1.62 <above> tolerance & rising",
        runbook="calibration-drift",
        runbook_title="Calibration drift",
        opened_at=NOW,
        metric="oe_ratio",
        value=1.6234,
        ci_low=1.31,
        ci_high=1.98,
        threshold="breach if CI outside 0.80–1.25",
        window_start=NOW - timedelta(days=30),
        window_end=NOW - timedelta(days=2),
    )
    links = Links(
        runbook="https://vigil.example.org/incidents?runbook=calibration-drift",
        dashboard="https://vigil.example.org/incidents?model=deterioration&alert=7&site=UMC",
    )
    message = build_alert_message(view, links)
    assert message == {
        "text": (
            "[PAGE] Calibration drift: deterioration at UMC — oe_ratio = 1.62 (95% CI 1.31–1.98); "
            "threshold: breach if CI outside 0.80–1.25; window 2026-08-02 03:00 UTC → "
            "2026-08-30 03:00 UTC. Status: open. "
            "Runbook: https://vigil.example.org/incidents?runbook=calibration-drift · "
            "Dashboard: https://vigil.example.org/incidents?model=deterioration&alert=7&site=UMC"
        ),
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": ":rotating_light: PAGE · Calibration drift · deterioration at UMC",
                    "emoji": True,
                },
            },
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "O:E 1.62 &lt;above&gt; tolerance &amp; rising"},
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*Severity*\npage"},
                    {"type": "mrkdwn", "text": "*Status*\nopen"},
                    {
                        "type": "mrkdwn",
                        "text": "*Model*\nInpatient clinical deterioration (`deterioration`)",
                    },
                    {"type": "mrkdwn", "text": "*Site*\nUniversity Medical Center (UMC)"},
                    {"type": "mrkdwn", "text": "*Metric*\noe_ratio = 1.62 (95% CI 1.31–1.98)"},
                    {"type": "mrkdwn", "text": "*Threshold*\nbreach if CI outside 0.80–1.25"},
                    {
                        "type": "mrkdwn",
                        "text": "*Window*\n2026-08-02 03:00 UTC → 2026-08-30 03:00 UTC",
                    },
                    {"type": "mrkdwn", "text": "*Opened*\n2026-09-01 03:00 UTC"},
                ],
            },
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open runbook"},
                        "url": links.runbook,
                        "action_id": "vigil_runbook",
                    },
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in Vigil"},
                        "url": links.dashboard,
                        "action_id": "vigil_dashboard",
                        "style": "primary",
                    },
                ],
            },
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": "Vigil alert #7 · observed_expected · "
                        "dedup key `observed_expected:deterioration:UMC:all`",
                    }
                ],
            },
        ],
    }


def test_one_thread_per_alert_updated_on_acknowledge_and_resolve(
    engine: Engine, fake_slack: FakeSlack, settings: Settings
) -> None:
    alert_id = breach(engine)
    assert run(fake_slack, engine, settings).sent == 1
    [root] = fake_slack.messages("CPAGE")
    assert root.thread_ts is None
    assert root.metadata == {
        "event_type": "vigil_page",
        "event_payload": {"key": f"alert:{alert_id}:opened"},
    }
    assert root.blocks is not None and root.blocks[0]["text"]["text"] == (
        ":rotating_light: PAGE · Calibration drift — observed outcomes differ from predicted "
        "risk · deterioration at UMC"
    )
    links = root.blocks[3]["elements"]
    assert links[0]["url"] == "https://vigil.example.org/incidents?runbook=calibration-drift"
    assert links[1]["url"] == (
        f"https://vigil.example.org/incidents?model=deterioration&alert={alert_id}&site=UMC"
    )

    actions.acknowledge_alert(
        engine, ONCALL, alert_id=alert_id, now=NOW + timedelta(minutes=4), settings=settings
    )
    assert run(fake_slack, engine, settings, NOW + timedelta(minutes=5)).sent == 1
    recover(engine, alert_id, NOW + timedelta(hours=2))
    assert run(fake_slack, engine, settings, NOW + timedelta(hours=2, minutes=1)).sent == 1
    assert (
        run(fake_slack, engine, settings, NOW + timedelta(hours=3)).sent == 0
    )  # nothing new, no repeat

    root, ack, resolved = fake_slack.messages("CPAGE")
    assert ack.thread_ts == root.ts and resolved.thread_ts == root.ts
    assert ack.text.startswith(":eyes: Acknowledged by Olu Oncall (oncall)")
    assert resolved.text.startswith(":white_check_mark: Resolved automatically")
    # The root was updated after each event and now shows the final state.
    assert [u["blocks"][0]["text"]["text"][:40] for u in root.updates] == [
        ":rotating_light: PAGE · Calibration drif",
        ":white_check_mark: RESOLVED PAGE · Calib",
    ]
    assert "acknowledged by Olu Oncall (oncall)" in root.updates[0]["text"]
    assert all(e.status == "sent" for e in outbox(engine))


def test_severity_picks_the_channel_and_escalation_pages_the_ticket(
    engine: Engine, fake_slack: FakeSlack, settings: Settings
) -> None:
    alert_id = breach(engine, severity="ticket", site="RVH")
    run(fake_slack, engine, settings)
    assert [m.channel for m in fake_slack.messages()] == ["CTICKET"]
    actions.escalate_alert(
        engine,
        ONCALL,
        alert_id=alert_id,
        note="needs the clinical lead tonight",
        now=NOW + timedelta(minutes=10),
        settings=settings,
    )
    assert run(fake_slack, engine, settings, NOW + timedelta(minutes=11)).sent == 2
    paged, escalated = fake_slack.messages("CPAGE")
    assert paged.thread_ts is None
    assert paged.blocks is not None
    assert paged.blocks[1]["text"]["text"] == "Escalated from ticket to page."
    assert escalated.thread_ts == paged.ts and escalated.reply_broadcast
    assert escalated.text.startswith(
        "<!channel> :arrow_double_up: Escalated by Olu Oncall (oncall): needs the clinical lead"
    )


def test_a_flapping_monitor_continues_its_thread_instead_of_paging_again(
    engine: Engine, fake_slack: FakeSlack, settings: Settings
) -> None:
    first = breach(engine)
    run(fake_slack, engine, settings)
    recover(engine, first, NOW + timedelta(minutes=30))
    run(fake_slack, engine, settings, NOW + timedelta(minutes=31))
    second = breach(engine, at=NOW + timedelta(minutes=50))  # same dedup key, 20 min later
    run(fake_slack, engine, settings, NOW + timedelta(minutes=51))
    top_level = [m for m in fake_slack.messages() if m.thread_ts is None]
    assert len(top_level) == 1
    reopened = fake_slack.by_key()[f"alert:{second}:opened"]
    assert len(reopened) == 1 and reopened[0].thread_ts == top_level[0].ts
    assert reopened[0].text.startswith(":repeat: Re-opened")
    # Long after the window a breach is news again: a new page.
    recover(engine, second, NOW + timedelta(hours=1))
    third = breach(engine, at=NOW + timedelta(hours=6))
    run(fake_slack, engine, settings, NOW + timedelta(hours=6, minutes=1))
    assert fake_slack.by_key()[f"alert:{third}:opened"][0].thread_ts is None


def test_an_unacknowledged_page_is_paged_again_until_acknowledged(
    engine: Engine, fake_slack: FakeSlack, settings: Settings
) -> None:
    alert_id = breach(engine)
    run(fake_slack, engine, settings)
    run(fake_slack, engine, settings, NOW + timedelta(minutes=14))
    assert len(fake_slack.messages()) == 1  # not yet: the re-page is due at 15 min
    run(fake_slack, engine, settings, NOW + timedelta(minutes=16))
    run(fake_slack, engine, settings, NOW + timedelta(minutes=20))
    run(fake_slack, engine, settings, NOW + timedelta(minutes=31))
    actions.acknowledge_alert(
        engine, ONCALL, alert_id=alert_id, now=NOW + timedelta(minutes=33), settings=settings
    )
    run(fake_slack, engine, settings, NOW + timedelta(minutes=34))
    run(fake_slack, engine, settings, NOW + timedelta(minutes=90))
    texts = [m.text for m in fake_slack.messages()[1:]]
    assert [t.split(" — ")[0] for t in texts] == [
        "<!here> :rotating_light: Still not acknowledged 15 min after the page (re-page 1 of 3)",
        "<!here> :rotating_light: Still not acknowledged 30 min after the page (re-page 2 of 3)",
        ":eyes: Acknowledged by Olu Oncall (oncall)",
    ]
    assert all(m.reply_broadcast for m in fake_slack.messages()[1:3])


def test_every_page_arrives_exactly_once_across_injected_failures(
    engine: Engine, fake_slack: FakeSlack, settings: Settings
) -> None:
    first = breach(engine, site="UMC")
    second = breach(engine, site="RVH", severity="ticket")
    third = breach(engine, model="readmission", site="LKS")
    fake_slack.script(
        "chat.postMessage",
        RateLimited(retry_after=1),  # 429, short: slack_sdk's handler waits and retries inline
        RateLimited(retry_after=30),  # 429, long: back to the outbox, Retry-After honoured
        ServerError(500),  # 5xx before posting: the outbox retries (after a history lookup)
        Hang(seconds=2.5, after_work=True),  # posted, but the answer never came (timeout)
        ServerError(500, after_work=True),  # posted, then answered 500
        Hang(seconds=2.5),  # hung before posting
    )
    fake_slack.script(
        "chat.update",
        ServerError(503),  # idempotent: slack_sdk retries it inline
        Hang(seconds=2.5, after_work=True),
    )
    fake_slack.script("conversations.history", ServerError(500))
    events_at = {
        10: lambda: actions.acknowledge_alert(
            engine, ONCALL, alert_id=first, now=NOW + timedelta(minutes=10), settings=settings
        ),
        20: lambda: recover(engine, second, NOW + timedelta(minutes=20)),
        30: lambda: actions.resolve_alert(
            engine,
            ONCALL,
            alert_id=third,
            note="label feed replayed",
            now=NOW + timedelta(minutes=30),
            settings=settings,
        ),
    }
    minute = 0
    for minute in range(0, 120, 2):
        if minute in events_at:
            events_at[minute]()
        run(fake_slack, engine, settings, NOW + timedelta(minutes=minute))
        entries = outbox(engine)
        if minute > 30 and all(e.status == "sent" for e in entries):
            break
    entries = outbox(engine)
    assert minute < 100, [(e.dedup_key, e.status, e.last_error) for e in entries]
    assert all(e.status == "sent" for e in entries)

    # Exactly once: one Slack message per outbox entry, none missing, none doubled.
    delivered = fake_slack.by_key()
    assert sorted(delivered) == sorted(e.dedup_key for e in entries)
    assert all(len(messages) == 1 for messages in delivered.values()), [
        (k, [(m.ts, m.thread_ts) for m in v]) for k, v in delivered.items()
    ] + [
        (
            r.method,
            r.behaviour,
            r.params.get("thread_ts"),
            (r.params.get("metadata") or {}).get("event_payload"),
        )
        for r in fake_slack.requests
    ]
    assert len(fake_slack.messages()) == len(entries) == 7  # 3 roots, 1 ack, 2 resolved, 1 repage
    # Replies are in their alert's thread.
    for alert_id in (first, second, third):
        root = delivered[f"alert:{alert_id}:opened"][0]
        for key, messages in delivered.items():
            if key.startswith(f"alert:{alert_id}:") and not key.endswith(":opened"):
                assert messages[0].thread_ts == root.ts, key
    # The failures really happened, and a lost answer was recovered by a lookup, not a repost.
    behaviours = [r.behaviour for r in fake_slack.calls("chat.postMessage")]
    for injected in ("429", "500", "hang-after-work", "5xx-after-work", "hang"):
        assert injected in behaviours
    assert any(e.attempts > 1 for e in entries)
    assert fake_slack.calls("conversations.history")
    # The roots end in their final state.
    root = delivered[f"alert:{third}:opened"][0]
    assert root.blocks is not None and root.blocks[0]["text"]["text"].startswith(
        ":white_check_mark: RESOLVED PAGE"
    )


def test_an_undeliverable_page_is_failed_visible_and_can_be_retried(
    engine: Engine, fake_slack: FakeSlack, settings: Settings
) -> None:
    breach(engine)
    fake_slack.script("chat.postMessage", SlackError("not_in_channel"))
    assert run(fake_slack, engine, settings).failed == 1
    shown = undeliverable_frame(engine)
    assert list(shown["status"]) == ["failed"]
    assert shown["last_error"][0] == "Slack 200: not_in_channel"
    [entry] = outbox(engine)
    refused = Actor("Vera Viewer", Role.VIEWER)
    try:
        actions.retry_page(engine, refused, outbox_id=entry.id)
        raise AssertionError("a viewer retried a page")
    except PermissionError:
        pass
    actions.retry_page(engine, ONCALL, outbox_id=entry.id, now=NOW + timedelta(minutes=5))
    assert run(fake_slack, engine, settings, NOW + timedelta(minutes=5)).sent == 1
    assert len(fake_slack.messages()) == 1
    assert undeliverable_frame(engine).empty


def test_queued_without_slack_then_retry_after_honoured_then_attempts_bounded(
    engine: Engine, fake_slack: FakeSlack
) -> None:
    first = breach(engine)
    # No Slack token yet: the page waits in the outbox, queued exactly once.
    unconfigured = make_settings(slack_bot_token=None)
    assert paging.sync_pages(engine, settings=unconfigured, now=NOW) == 1
    assert paging.sync_pages(engine, settings=unconfigured, now=NOW) == 0
    assert [e.status for e in outbox(engine)] == ["pending"]

    settings = make_settings(slack_base_url=fake_slack.base_url, page_max_attempts=3)
    fake_slack.script("chat.postMessage", RateLimited(retry_after=120))
    assert run(fake_slack, engine, settings).retrying == 1
    [entry] = outbox(engine)
    assert entry.next_attempt_at == NOW + timedelta(seconds=120)
    assert entry.last_error == "Slack 429: ratelimited (Retry-After 120 s)"
    assert run(fake_slack, engine, settings, NOW + timedelta(seconds=119)).sent == 0
    assert run(fake_slack, engine, settings, NOW + timedelta(seconds=120)).sent == 1
    assert list(fake_slack.by_key()) == [f"alert:{first}:opened"]

    # A long outage: backoff 5 s, then 10 s; the third failed try is the last.
    second = breach(engine, site="RVH", severity="ticket")
    fake_slack.script("chat.postMessage", *[ServerError(500)] * 3)
    later = NOW + timedelta(minutes=10)
    outcomes = [
        run(fake_slack, engine, settings, later + timedelta(minutes=m)) for m in (0, 1, 2, 5)
    ]
    assert [(r.retrying, r.failed) for r in outcomes] == [(1, 0), (1, 0), (0, 1), (0, 0)]
    [failed] = [e for e in outbox(engine) if e.dedup_key == f"alert:{second}:opened"]
    assert (failed.status, failed.attempts, failed.last_error) == (
        "failed",
        3,
        "Slack 500: internal_error",
    )
    assert len(fake_slack.messages()) == 1
