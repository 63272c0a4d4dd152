"""Hostile free text in the dashboard: HTML, script, Markdown links and images, Streamlit
directives and Slack mentions stored in every free-text field the app shows (kill-switch
reasons and actors, incident titles, audit notes, model and version names, model titles and
lineage, alert text, quarantine details and rows) are shown as text on every page, never as
live HTML or Markdown.

Every rendered element is inspected: no `st.html` and no `unsafe_allow_html` element carries
any of it, no Markdown-rendered text (markdown, captions, headings, alerts, labels, expander
titles) carries it unescaped, and each field is shown somewhere (so the checks are not
vacuous).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from streamlit.testing.v1 import AppTest

from app.ui import markdown_text
from incidents import actions
from incidents.auth import Actor, Role
from monitors.scheduler import record_heartbeat
from store.models import Alert, Deployment, Model, ModelVersion, Quarantine, Site, table_of
from tests.app.operational import ENTRYPOINT, app_env, app_test
from tests.incidents.conftest import breach, make_settings

__all__ = ["app_env"]

# The pieces of markup that must never reach a page live; each stored text carries them all.
MARKERS = (
    "<script>",
    "<img src=x onerror=",
    "](javascript:",
    "![pixel](",
    "<!channel>",
    ":red[",
    "<b>",
)
PAYLOAD = (
    "<script>alert(1)</script> <img src=x onerror=alert(2)> [click](javascript:alert(3)) "
    "![pixel](https://evil.example/p.png) <!channel> :red[loud] <b>bold</b>"
)


def hostile(field: str) -> str:
    """The payload tagged with the field it was stored in (to say which field leaked)."""
    return f"{field}: {PAYLOAD}"


FIELDS = (
    "kill-switch reason",
    "actor",
    "incident title",
    "acknowledge note",
    "resolve note",
    "alert summary",
    "model name",
    "model title",
    "version name",
    "version lineage",
    "quarantine detail",
    "quarantine row",
)
NAMES = {  # names are shorter: model names hold 64 characters, versions 32
    "model name": "<img src=x onerror=alert(5)>[m](javascript:1)",
    "version name": "<script>[v](javascript:2)",
}


def _seed(engine: Engine) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    settings = make_settings()
    record_heartbeat(engine, now=now, started_at=now - timedelta(hours=1))
    actor = Actor(f"Riley {hostile('actor')[:60]}", Role.INCIDENT_RESPONDER)
    alert_id = breach(engine, at=now - timedelta(hours=1))
    A = table_of(Alert)
    with engine.begin() as conn:
        summary = hostile("alert summary")
        conn.execute(sa.update(A).where(A.c.id == alert_id).values(summary=summary))
    actions.acknowledge_alert(
        engine, actor, alert_id=alert_id, note=hostile("acknowledge note"), now=now,
        settings=settings,
    )  # fmt: skip
    other = breach(engine, site="RVH", at=now - timedelta(hours=2))
    actions.resolve_alert(
        engine, actor, alert_id=other, note=hostile("resolve note"), now=now, settings=settings
    )
    actions.disable_score(
        engine, actor, model="deterioration", site="UMC", reason=hostile("kill-switch reason"),
        incident_title=hostile("incident title"), now=now, settings=settings,
    )  # fmt: skip
    M, V, D, S, Q = (
        table_of(Model),
        table_of(ModelVersion),
        table_of(Deployment),
        table_of(Site),
        table_of(Quarantine),
    )
    with engine.begin() as conn:
        model_id = conn.execute(
            sa.insert(M)
            .values(
                name=NAMES["model name"],
                title=hostile("model title"),
                outcome="x",
                horizon_hours=12.0,
                label_lag_hours=48.0,
                settles_on_closure=True,
                latency_slo_seconds=300.0,
                scoring_interval_minutes=0,
            )
            .returning(M.c.id)
        ).scalar_one()
        version_id = conn.execute(
            sa.insert(V)
            .values(
                model_id=model_id,
                version=NAMES["version name"],
                stage="canary",
                threshold=0.1,
                training_data=hostile("version lineage"),
                approver="x",
                created_at=now,
            )
            .returning(V.c.id)
        ).scalar_one()
        site_id = conn.execute(sa.select(S.c.id).where(S.c.code == "UMC")).scalar_one()
        conn.execute(
            sa.insert(D).values(
                model_id=model_id,
                version_id=version_id,
                site_id=site_id,
                unit="",
                arm="control",
                alert_threshold=0.1,
                enabled=True,
                started_at=now,
            )
        )
        conn.execute(
            sa.insert(Q).values(
                source_kind="predictions",
                source_file="/inbox/predictions-x.jsonl",
                location="line 3",
                reason="invalid_value",
                detail=hostile("quarantine detail"),
                raw=hostile("quarantine row"),
                quarantined_at=now,
            )
        )


def _markdown_texts(at: AppTest) -> list[tuple[str, str, bool]]:
    """(element type, text, allows HTML) of everything the browser renders as Markdown."""
    texts: list[tuple[str, str, bool]] = []
    for node in at._tree:
        kind = getattr(node, "type", "")
        proto = getattr(node, "proto", None)
        if proto is None:
            continue
        if kind in ("markdown", "caption", "latex", "divider"):
            texts.append((kind, proto.body, bool(proto.allow_html)))
        elif kind in ("error", "warning", "info", "success", "toast", "title", "header",
                      "subheader"):  # fmt: skip
            texts.append((kind, proto.body, False))
        elif kind == "html":
            texts.append((kind, proto.body, True))
        elif kind == "expandable":
            texts.append((kind, proto.expandable.label, False))
        for attribute in ("label", "help"):  # widget labels and help are Markdown too
            value = getattr(proto, attribute, "") if hasattr(proto, attribute) else ""
            if isinstance(value, str) and value:
                texts.append((f"{kind} {attribute}", value, False))
    return texts


def _plain_texts(at: AppTest) -> list[str]:
    """Everything shown as plain text: table cells, widget options and values, metrics."""
    shown: list[str] = []
    for frame in at.dataframe:
        shown.extend(str(v) for v in frame.value.astype(str).to_numpy().ravel())
        shown.extend(str(c) for c in frame.value.columns)
    for widget in [*at.selectbox, *at.multiselect, *at.radio]:
        shown.extend(str(o) for o in widget.options)
    for node in at._tree:
        if getattr(node, "type", "") in ("text", "code", "metric", "json"):
            shown.append(str(node.value))
    return shown


def unescaped(text: str) -> str:
    """The text with every backslash-escaped character blanked: what is left can make markup."""
    return re.sub(r"\\.", "\x00", text)


def _leaks(at: AppTest) -> list[str]:
    """Markup shown live: a marker in raw HTML, or unescaped in a Markdown-rendered text."""
    found = []
    for kind, text, allows_html in _markdown_texts(at):
        live = text if allows_html else unescaped(text)
        for marker in MARKERS:
            if marker in live or (allows_html and any(f in text for f in FIELDS)):
                found.append(f"{kind}: {marker!r} in {text[:120]!r}")
    return found


PAGES = sorted(
    f"app_pages/{p.name}"
    for p in (Path(ENTRYPOINT).parent / "app_pages").glob("*.py")
    if p.name != "__init__.py"
)


@pytest.fixture
def seeded(app_env: None, engine: Engine) -> Iterator[Engine]:
    _seed(engine)
    yield engine


def _shown_as(field: str) -> str:
    """The start of what was stored in `field` (each page may show it shortened)."""
    return NAMES.get(field) or hostile(field)[:40]


def scan_pages(
    pages: list[str] = PAGES, roles: tuple[Role, ...] = (Role.ADMIN, Role.VIEWER)
) -> tuple[dict[str, list[str]], list[str], int]:
    """Render each page as each role over the seeded store: (markup shown live, per page and
    role; fields never shown anywhere; pages rendered)."""
    leaks: dict[str, list[str]] = {}
    seen: set[str] = set()
    rendered = 0
    for role in roles:
        for page in pages:
            at = app_test(role=role)
            if page == "app_pages/models.py":
                at.query_params["model"] = NAMES["model name"]
            at.switch_page(page).run()
            assert not at.exception, (page, role, at.exception)
            rendered += 1
            found = _leaks(at)
            if found:
                leaks[f"{page} as {role.value}"] = found
            texts = [t for _, t, _ in _markdown_texts(at)] + _plain_texts(at)
            for field in FIELDS:
                raw = _shown_as(field)
                if any(raw in t or markdown_text(raw) in t for t in texts):
                    seen.add(field)
    return leaks, sorted(set(FIELDS) - seen), rendered


def test_markdown_text_escapes_the_characters_that_make_markup() -> None:
    escaped = markdown_text(PAYLOAD + "\n# heading\n- item | cell")
    for marker in MARKERS:
        assert marker not in unescaped(escaped)
    assert "\n" not in escaped
    # Each character is kept, only backslash-escaped: un-escaping gives the text back.
    assert escaped.replace("\\", "") == PAYLOAD + " # heading - item | cell"
    # Ordinary text reads as before; markers at the start cannot open a list or a heading.
    assert markdown_text("O:E 1.62 at UMC: 2026-08") == "O:E 1.62 at UMC: 2026-08"
    assert markdown_text("- item") == "\\- item"
    assert markdown_text("12. item") == "12\\. item"
    assert markdown_text("# title") == "\\# title"
    assert markdown_text(":red[x] :material/home: a_b") == "\\:red\\[x\\] \\:material/home: a\\_b"
    assert markdown_text(None) == ""


def test_hostile_free_text_is_shown_escaped_on_the_pages_that_show_it(seeded: Engine) -> None:
    pages = ["app_pages/incidents.py", "app_pages/models.py", "app_pages/quarantine.py"]
    leaks, unseen, rendered = scan_pages(pages, roles=(Role.ADMIN,))
    assert rendered == len(pages)
    assert not leaks, leaks
    assert not unseen, unseen
