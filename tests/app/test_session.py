"""AppTest of the sign-in gate: demo accounts in demo mode, single sign-on in production."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.app.operational import app_env, app_test
from vigil.config import get_settings

__all__ = ["app_env"]


def _sign_in(username: str, password: str) -> AppTest:
    at = app_test(role=None).run()
    at.text_input(key="sign_in_username").input(username)
    at.text_input(key="sign_in_password").input(password)
    return at.button[0].click().run()


def test_nothing_shows_before_sign_in(app_env: None) -> None:
    at = app_test(role=None).run()
    assert not at.exception
    assert at.title[0].value == "Vigil — sign in"
    assert any("DEMO MODE" in w.value for w in at.warning)
    assert len(at.title) == 1 and not at.dataframe and not at.metric  # no page ran


def test_a_wrong_password_is_refused_and_the_right_one_signs_in(app_env: None) -> None:
    at = _sign_in("responder", "guess")
    assert not at.exception
    assert any("wrong password" in e.value for e in at.error)
    assert at.title[0].value == "Vigil — sign in"

    at = _sign_in("responder", "vigil-responder")
    assert not at.exception
    assert at.title[0].value.startswith("Vigil — what needs attention")
    assert any("Riley Responder" in c.value and "incident responder" in c.value
               for c in at.sidebar.caption)  # fmt: skip
    at = at.sidebar.button(key="sign_out").click().run()
    assert at.title[0].value == "Vigil — sign in"


@pytest.fixture
def production(app_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VIGIL_DEMO_MODE", "false")
    monkeypatch.setenv("VIGIL_PSEUDONYM_KEY", "a-real-secret-key-for-this-test")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    st.cache_resource.clear()


def test_production_asks_for_single_sign_on_and_never_offers_demo_accounts(
    production: None,
) -> None:
    at = app_test(role=None).run()
    assert not at.exception
    assert not at.text_input  # no demo username/password form
    assert any("Single sign-on is not configured" in e.value for e in at.error)

    at = app_test(role=None)
    at.secrets["auth"] = {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "x" * 32,
        "client_id": "vigil",
        "client_secret": "secret",
        "server_metadata_url": "https://idp.example/.well-known/openid-configuration",
    }
    at.run()
    assert not at.exception
    assert [b.key for b in at.button] == ["oidc_sign_in"]
    assert not at.error
    # A demo session left in state does not count as signed in outside demo mode.
    at = app_test(role="admin").run()
    assert at.title[0].value == "Vigil — sign in"


def test_a_single_sign_on_user_gets_the_role_mapped_to_their_email(
    production: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "VIGIL_OIDC_ROLES",
        '{"ria.lee@hospital.org": "incident_responder", "@hospital.org": "oncall"}',
    )
    get_settings.cache_clear()
    for email, name, role, may_disable in [
        ("Ria.Lee@hospital.org", "Ria Lee", "incident responder", True),
        ("sam@hospital.org", "Sam Park", "on-call", False),
        ("board@elsewhere.org", "Board Member", "viewer", False),
    ]:
        at = app_test(role=None)
        at.user = {"is_logged_in": True, "email": email, "name": name}
        at.switch_page("app_pages/incidents.py").run()
        assert not at.exception
        assert at.title[0].value == "Incidents"
        assert any(f"Signed in as **{name}** · {role}" in c.value for c in at.sidebar.caption)
        assert ("disable_submit" in {b.key for b in at.get("button")}) is may_disable
