"""The dashboard in a real browser: `streamlit run` on a free port against a small demo store,
driven by Playwright through Debian's chromium (never a downloaded browser).

It signs in as the demo responder, opens every page in the navigation (a screenshot of each
goes to artifacts/browser/<page>.png), follows deep links, and switches a score off with a
confirmation and a reason — then checks the kill switch and the audit log in the store.

The store is the demo generator at 14 days and 15% of the beds, so the test stays near a
minute. The README's screenshots come from this same test on a fuller demo:
`VIGIL_BROWSER_DEMO_DAYS=45 VIGIL_BROWSER_BED_SCALE=0.6 pytest tests/browser`, then
artifacts/browser/*.png copied to docs/img/.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from incidents.audit import recent_events, verify_chain
from incidents.killswitch import score_status
from monitors.scheduler import record_heartbeat
from store.db import make_engine

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
USERNAME, PASSWORD, NAME = "responder", "vigil-responder", "Riley Responder"
TIMEOUT_MS = 30_000

if not CHROMIUM.exists():
    reason = f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium"
    if os.environ.get("CI") or os.environ.get("VIGIL_TEST_POSTGRES_URL"):
        pytest.fail(f"the browser test must run in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=TIMEOUT_MS)  # a first run on a busy machine takes seconds


@dataclass(frozen=True)
class Dashboard:
    url: str
    engine: Engine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """A small demo store (the generator through the collectors, as `vigil bootstrap` loads
    it) and `streamlit run` serving it."""
    root = tmp_path_factory.mktemp("dashboard")
    env = {
        **os.environ,
        "DO_NOT_TRACK": "1",
        "VIGIL_DEMO_MODE": "true",
        "VIGIL_DATABASE_URL": f"sqlite:///{root / 'vigil.db'}",
        "VIGIL_INBOX_DIR": str(root / "inbox"),
        "VIGIL_PROCESSED_DIR": str(root / "processed"),
        "VIGIL_SPOOL_DIR": str(root / "spool"),
        "VIGIL_DEMO_DAYS": os.environ.get("VIGIL_BROWSER_DEMO_DAYS", "14"),
        "VIGIL_DEMO_FUTURE_DAYS": "0",
        "VIGIL_DEMO_BED_SCALE": os.environ.get("VIGIL_BROWSER_BED_SCALE", "0.15"),
        "VIGIL_LOG_LEVEL": "WARNING",
    }
    env.pop("VIGIL_SLACK_BOT_TOKEN", None)
    subprocess.run(
        [sys.executable, "-m", "vigil", "bootstrap"], cwd=REPO, env=env, check=True,
        capture_output=True, timeout=900,
    )  # fmt: skip
    engine = make_engine(env["VIGIL_DATABASE_URL"])
    record_heartbeat(engine, started_at=datetime.now(UTC), monitor_ran=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "streamlit.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "streamlit", "run", "app/streamlit_app.py",
            "--server.port", str(port), "--server.address", "127.0.0.1",
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
        ],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_healthy(url, process)
        yield Dashboard(url=url, engine=engine)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        engine.dispose()


@pytest.fixture(scope="module")
def page(dashboard: Dashboard) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        try:
            yield page
        finally:
            context.close()
            browser.close()


def _settle(page: Page) -> None:
    """Wait until the script run has finished and nothing is still drawing."""
    page.wait_for_timeout(300)  # a click's rerun may not have started yet
    page.wait_for_selector(
        '[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=TIMEOUT_MS
    )
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=TIMEOUT_MS
    )
    page.wait_for_timeout(800)  # let plotly finish laying out before a screenshot


def _sign_in(page: Page) -> None:
    expect(page.get_by_role("heading", name="Vigil — sign in")).to_be_visible()
    page.get_by_role("textbox", name="Username").fill(USERNAME)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text(f"Signed in as {NAME}")).to_be_visible()
    _settle(page)


def _no_exception(page: Page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.url


def test_every_page_then_a_deep_link_then_disable_a_score(page: Page, dashboard: Dashboard) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.goto(dashboard.url)
    _sign_in(page)
    expect(page.get_by_role("heading", name="Vigil — what needs attention now")).to_be_visible()

    # Every page in the navigation, by clicking its link (the session stays signed in).
    links = page.locator('[data-testid="stSidebarNav"] a')
    expect(links.first).to_be_visible()
    more = page.get_by_role("button", name=re.compile(r"View \d+ more"))
    if more.count():  # a long navigation starts folded
        more.click()
    hrefs = [links.nth(i).get_attribute("href") or "" for i in range(links.count())]
    assert len(hrefs) >= 13, hrefs
    seen = []
    for href in hrefs:
        page.locator(f'[data-testid="stSidebarNav"] a[href="{href}"]').click()
        _settle(page)
        _no_exception(page)
        expect(page.locator("h1").first).to_be_visible()
        name = href.rstrip("/").rsplit("/", 1)[-1] or "home"
        name = "home" if name.startswith("127.0.0.1") else name
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        seen.append(name)
    assert {"home", "live", "incidents", "models", "sites", "canary"} <= set(seen), seen
    expect(page.get_by_text("database is unreachable")).to_have_count(0)

    # A deep link opens exactly the view it names (a new tab: sign in, then the view).
    page.goto(f"{dashboard.url}/live?model=readmission&site=RVH")
    _sign_in(page)
    expect(page.get_by_role("heading", name="Live SLA")).to_be_visible()
    expect(page.get_by_role("combobox", name="Model")).to_have_value("readmission")
    expect(page.get_by_role("combobox", name="Site")).to_have_value("RVH")
    assert "model=readmission" in page.url and "site=RVH" in page.url
    _no_exception(page)

    # Disable deterioration at RVH from the incident console, opened by its deep link.
    page.goto(f"{dashboard.url}/incidents?model=deterioration&site=RVH")
    _sign_in(page)
    expect(page.get_by_role("heading", name="Incidents")).to_be_visible()
    form = page.locator('[data-testid="stForm"]').filter(
        has_text="I understand clinicians will stop"
    )
    expect(form.get_by_role("combobox", name="Model")).to_have_value("deterioration")
    expect(form.get_by_role("combobox", name="Site")).to_have_value("RVH")
    form.get_by_label("Reason (consumers and clinicians read it; no patient identifiers)").fill(
        "O:E drift at RVH under review"
    )
    form.get_by_label("…or a new incident title").fill("Deterioration drift at RVH")
    # Without the confirmation nothing happens.
    form.get_by_role("button", name="Disable score").click()
    expect(page.get_by_text("Tick the confirmation to disable the score.")).to_be_visible()
    with dashboard.engine.connect() as conn:
        assert score_status(conn, model="deterioration", site="RVH").state == "enabled"
    form.get_by_text("I understand clinicians will stop seeing this score").click()
    form.get_by_role("button", name="Disable score").click()
    expect(page.get_by_text("score disabled", exact=False).first).to_be_visible()
    _settle(page)
    _no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "incidents-after-disable.png"), full_page=True)

    with dashboard.engine.connect() as conn:
        status = score_status(conn, model="deterioration", site="RVH")
        other = score_status(conn, model="deterioration", site="UMC")
    assert status.state == "suppressed" and status.reason == "O:E drift at RVH under review"
    assert other.state == "enabled"
    events = recent_events(dashboard.engine, limit=5)
    disable = next(e for e in events if e["action"] == "disable_score")
    assert (disable["actor"], disable["role"]) == (NAME, "incident_responder")
    assert "deterioration" in disable["target"] and "RVH" in disable["target"]
    assert disable["detail"].get("reason") == "O:E drift at RVH under review"
    assert verify_chain(dashboard.engine).ok
