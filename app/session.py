"""Who is using the dashboard: the sign-in gate and the current actor.

Production (`VIGIL_DEMO_MODE=false`): Streamlit's OIDC sign-in (`st.login`, configured in
`.streamlit/secrets.toml`), the role from `VIGIL_OIDC_ROLES`. Demo mode: the local demo
accounts in `config/demo_accounts.yaml`. Pages hide actions the role may not take; the action
functions check the role again themselves.
"""

from __future__ import annotations

import streamlit as st

from incidents.accounts import AccountsError, DemoAccount, authenticate, load_demo_accounts
from incidents.accounts import oidc_actor as actor_from_identity
from incidents.auth import Actor
from vigil.config import get_settings

ACTOR_KEY = "vigil_actor"
ROLE_LABELS = {
    "viewer": "viewer",
    "clinical_lead": "clinical lead",
    "oncall": "on-call",
    "incident_responder": "incident responder",
    "admin": "admin",
}


@st.cache_resource(show_spinner=False)
def _demo_accounts(path: str) -> dict[str, DemoAccount]:
    from pathlib import Path

    return load_demo_accounts(Path(path))


def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all: Streamlit raises its own not-found error
        return False


def _oidc_logged_in() -> bool:
    # st.user has no is_logged_in key at all before any sign-in flow was configured.
    return bool(st.user.get("is_logged_in", False))


def signed_in() -> bool:
    if get_settings().demo_mode:
        return st.session_state.get(ACTOR_KEY) is not None
    return _oidc_logged_in()


def current_actor() -> Actor | None:
    """The signed-in person and role, or None before sign-in."""
    settings = get_settings()
    if settings.demo_mode:
        actor = st.session_state.get(ACTOR_KEY)
        return actor if isinstance(actor, Actor) else None
    if not _oidc_logged_in():
        return None
    name, email = st.user.get("name"), st.user.get("email")
    return actor_from_identity(
        name=str(name) if name else None,
        email=str(email) if email else None,
        mapping=settings.oidc_roles,
    )


def _sign_out_demo() -> None:
    st.session_state.pop(ACTOR_KEY, None)


def _signed_in_sidebar(actor: Actor, *, demo: bool) -> None:
    with st.sidebar:
        st.caption(
            f"Signed in as **{actor.name}** · {ROLE_LABELS.get(actor.role.value, actor.role)}"
            + (" · demo account" if demo else "")
        )
        st.button(
            "Sign out",
            key="sign_out",
            icon=":material/logout:",
            on_click=_sign_out_demo if demo else st.logout,
        )


def _demo_sign_in() -> None:
    settings = get_settings()
    st.title("Vigil — sign in")
    st.warning(
        "DEMO MODE: sign in with one of the local demo accounts (one per role, listed in the "
        "README). Production uses your organisation's single sign-on instead.",
        icon=":material/theater_comedy:",
    )
    with st.form("sign_in"):
        username = st.text_input("Username", key="sign_in_username")
        password = st.text_input("Password", type="password", key="sign_in_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    try:
        accounts = _demo_accounts(str(settings.demo_accounts_path))
    except AccountsError as exc:
        st.error(f"Demo sign-in is unavailable: {exc}", icon=":material/error:")
        return
    actor = authenticate(accounts, username, password)
    if actor is None:
        st.error("Unknown username or wrong password.", icon=":material/lock:")
        return
    st.session_state[ACTOR_KEY] = actor
    st.rerun()


def _oidc_sign_in() -> None:
    st.title("Vigil — sign in")
    if not _oidc_configured():
        st.error(
            "Single sign-on is not configured: add an `[auth]` section to "
            "`.streamlit/secrets.toml` (see `.streamlit/secrets.toml.example`), or run in "
            "demo mode.",
            icon=":material/lock:",
        )
        return
    st.button(
        "Sign in with your organisation's account",
        type="primary",
        key="oidc_sign_in",
        icon=":material/login:",
        on_click=st.login,
    )


def require_sign_in() -> Actor:
    """The current actor; before sign-in, show the sign-in form and stop the page."""
    demo = get_settings().demo_mode
    actor = current_actor()
    if actor is None:
        _demo_sign_in() if demo else _oidc_sign_in()
        st.stop()
    _signed_in_sidebar(actor, demo=demo)
    return actor
