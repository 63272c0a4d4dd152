"""Access: the permission matrix over every action × role, calling each real action function;
API tokens compared in constant time; settings refuse the demo secrets outside demo mode."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy.engine import Engine

from incidents import api
from incidents.auth import PERMISSIONS, Action, Actor, PermissionDenied, Role
from tests.incidents.conftest import serve, snapshot
from tests.incidents.test_permissions import _calls, prepare
from tests.reliability.conftest import REPO, Record, database_of
from vigil.config import DEMO_API_TOKEN_SHA256, DEMO_PSEUDONYM_KEY, Settings


def test_permission_matrix_over_every_action_and_role(
    engine: Engine, db_url: str, tmp_path: Path, record: Record
) -> None:
    alert_id, outbox_id = prepare(engine)
    calls = _calls(engine, alert_id, outbox_id, tmp_path)
    wrong: list[str] = []
    refused = allowed = 0
    for action, call in calls.items():
        for role in Role:
            actor = Actor(f"Someone ({role.value})", role)
            before = snapshot(engine)
            try:
                call(actor)
                denied = False
            except PermissionDenied:
                denied = True
            except (ValueError, LookupError):
                denied = False  # past the permission check; refused for another reason
            may = role in PERMISSIONS[action]
            if denied == may:
                wrong.append(f"{role.value} {'refused' if may else 'allowed'} {action.value}")
            if denied and snapshot(engine) != before:
                wrong.append(f"{role.value} refused {action.value} but something changed")
            refused += denied
            allowed += not denied
    pairs = len(calls) * len(Role)
    record(
        area="access",
        fault="every action × every role, through the action function itself",
        database=database_of(db_url),
        expected="roles outside the matrix refused (PermissionDenied), nothing written; "
        "roles inside it pass the check",
        observed=f"{len(calls)} actions × {len(Role)} roles: {refused} refused with no change, "
        f"{allowed} allowed" + (f"; wrong: {wrong}" if wrong else ""),
        trials=pairs,
        failures=len(wrong),
    )
    assert not wrong, wrong
    assert set(calls) == set(Action)


def test_api_tokens_are_hashed_and_compared_in_constant_time(
    engine: Engine, db_url: str, record: Record, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "ehr-integration-token-0123456789"
    settings = Settings(
        _env_file=None, api_tokens={"ehr": hashlib.sha256(token.encode()).hexdigest()}
    )
    compared: list[tuple[str, str]] = []
    constant_time = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return constant_time(a, b)

    monkeypatch.setattr(api.hmac, "compare_digest", spy)
    path = "/v1/models/deterioration/sites/UMC/status"
    with serve(api.create_app(engine=engine, settings=settings)) as url:
        good = httpx.get(url + path, headers={"Authorization": f"Bearer {token}"}).status_code
        wrong = httpx.get(url + path, headers={"Authorization": "Bearer not-the-token-0123"})
    checks = {
        "the right token is accepted": good == 200,
        "a wrong token is refused (401)": wrong.status_code == 401,
        "every check went through hmac.compare_digest on SHA-256 digests": len(compared) == 2
        and all(len(a) == len(b) == 64 for a, b in compared),
        "the token itself is never compared": all(token not in pair for pair in compared),
        "settings refuse a raw token": _raw_token_refused(),
    }
    record(
        area="access",
        fault="API bearer tokens: stored hashed, compared in constant time",
        database=database_of(db_url),
        expected="SHA-256 hashes only in settings; hmac.compare_digest on the digests",
        observed="; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()),
        trials=len(checks),
        failures=sum(not v for v in checks.values()),
    )
    assert all(checks.values()), checks


def _raw_token_refused() -> bool:
    try:
        Settings(_env_file=None, api_tokens={"ehr": "my-plain-token"})
    except ValidationError:
        return True
    return False


SECRETS = {
    "pseudonym key": {"pseudonym_key": DEMO_PSEUDONYM_KEY, "api_tokens": {"x": "a" * 64}},
    "API token": {
        "pseudonym_key": "a-real-secret-key-0123456789",
        "api_tokens": {"demo": DEMO_API_TOKEN_SHA256},
    },
}


@pytest.mark.parametrize("secret", list(SECRETS))
def test_settings_refuse_demo_secrets_outside_demo_mode(secret: str, record: Record) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, demo_mode=False, **SECRETS[secret])
    message = str(refused.value)
    accepted = Settings(_env_file=None, demo_mode=True, **SECRETS[secret])
    ok = "VIGIL_DEMO_MODE=false" in message and accepted.demo_mode
    record(
        area="access",
        fault=f"demo {secret} configured with VIGIL_DEMO_MODE=false",
        database="-",
        expected="settings refuse to load, naming the variable",
        observed=f"refused: {message.splitlines()[1].strip()[:110]}",
        trials=1,
        failures=0 if ok else 1,
    )
    assert ok, message


def test_demo_accounts_are_hashed(record: Record) -> None:
    from incidents.accounts import authenticate, load_demo_accounts

    path = REPO / "config" / "demo_accounts.yaml"
    text = path.read_text(encoding="utf-8")
    accounts = load_demo_accounts(path)
    checks = {
        "one account per role": {a.role for a in accounts.values()} == set(Role),
        "every password a salted scrypt hash": all(
            a.password_hash.startswith("scrypt$") and len(a.password_hash.split("$")) == 6
            for a in accounts.values()
        ),
        "no password in the file": not any(f"vigil-{u}" in text for u in accounts),
        "the right password signs in": all(
            authenticate(accounts, u, f"vigil-{u}") is not None for u in accounts
        ),
        "a wrong password does not": all(
            authenticate(accounts, u, f"vigil-{u}x") is None for u in accounts
        ),
    }
    record(
        area="access",
        fault="demo accounts: passwords at rest",
        database="-",
        expected="salted hashes only, never the password; sign-in checks the hash",
        observed="; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()),
        trials=len(checks),
        failures=sum(not v for v in checks.values()),
    )
    assert all(checks.values()), checks
