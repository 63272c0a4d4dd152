"""The Python client against the real API server: TTL cache, ETags, and unreachable-API policies."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from incidents import actions
from incidents.api import create_app
from incidents.client import MissingPolicy, Policy, StatusClient
from tests.incidents.conftest import RESPONDER, make_settings, serve

TOKEN = "scoring-service-token-0123456789"
SETTINGS = make_settings(api_tokens={"scoring": hashlib.sha256(TOKEN.encode()).hexdigest()})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api_url(engine: Engine) -> Iterator[str]:
    with serve(create_app(engine=engine, settings=SETTINGS)) as url:
        yield url


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def disable(engine: Engine, site: str = "UMC") -> None:
    actions.disable_score(
        engine, RESPONDER, model="deterioration", site=site, reason="O:E 1.6",
        incident_title=f"Drift at {site}", settings=SETTINGS,
    )  # fmt: skip


def test_cached_for_the_ttl_then_revalidated(engine: Engine, api_url: str) -> None:
    clock = Clock()
    with StatusClient(
        api_url, TOKEN, policies={"deterioration": Policy.FAIL_CLOSED}, clock=clock
    ) as client:
        first = client.status("deterioration", "UMC")
        assert (first.show, first.state, first.source, first.version) == (
            True,
            "enabled",
            "api",
            "2.0.0",
        )
        disable(engine)
        clock.now += 14.9
        cached = client.status("deterioration", "UMC")
        assert (cached.show, cached.source) == (True, "cache")  # inside the 15 s TTL
        clock.now += 0.1
        fresh = client.status("deterioration", "UMC")
        assert (fresh.show, fresh.state, fresh.reason, fresh.source) == (
            False,
            "suppressed",
            "O:E 1.6",
            "api",
        )
        clock.now += 15
        again = client.status("deterioration", "UMC")  # revalidated: 304, same state
        assert (again.show, again.source) == (False, "api")
        assert client.status("deterioration", "RVH").show
        missing = client.status("deterioration", "NOPE")
        assert not missing.show and "unknown site" in (missing.reason or "")


def test_fail_closed_hides_the_score_and_says_why() -> None:
    clock = Clock()
    with StatusClient(
        closed_port_url(),
        TOKEN,
        policies={"deterioration": "fail-closed"},
        clock=clock,
        timeout_seconds=0.5,
    ) as client:
        decision = client.status("deterioration", "UMC")
    assert (decision.show, decision.state, decision.source) == (False, "suppressed", "policy")
    assert decision.reason is not None
    assert decision.reason.startswith("kill-switch API unavailable (ConnectError")
    assert (
        "deterioration is fail-closed: score not shown (no state ever received)" in decision.reason
    )


def test_fail_open_uses_the_last_known_state_and_never_re_enables(engine: Engine) -> None:
    clock = Clock()
    with serve(create_app(engine=engine, settings=SETTINGS)) as url:
        client = StatusClient(
            url,
            TOKEN,
            policies={"deterioration": Policy.FAIL_OPEN},
            clock=clock,
            timeout_seconds=0.5,
        )
        assert client.status("deterioration", "UMC").show
        assert client.status("deterioration", "RVH").show
        disable(engine, site="RVH")
        clock.now += 20
        assert not client.status("deterioration", "RVH").show
    # The API server has stopped.
    clock.now += 40
    umc = client.status("deterioration", "UMC")
    rvh = client.status("deterioration", "RVH")
    client.close()
    assert (umc.show, umc.source) == (True, "policy")
    assert umc.reason is not None and umc.reason.endswith(
        "deterioration is fail-open: showing the score on the last known state enabled, 60 s old"
    )
    assert (rvh.show, rvh.source) == (False, "policy")
    assert rvh.reason is not None and "fail-open never re-enables a suppressed score" in rvh.reason


def test_an_http_error_is_handled_by_the_policy_too(engine: Engine, api_url: str) -> None:
    with StatusClient(api_url, "wrong-token", policies={}, default_policy="fail-closed") as client:
        decision = client.status("deterioration", "UMC")
    assert not decision.show and decision.reason is not None and "HTTP 401" in decision.reason


def test_a_model_without_a_policy_is_a_configuration_error(api_url: str) -> None:
    with StatusClient(api_url, TOKEN, policies={"readmission": Policy.FAIL_OPEN}) as client:
        with pytest.raises(MissingPolicy, match="deterioration"):
            client.status("deterioration", "UMC")
        assert client.status("readmission", "UMC").show
