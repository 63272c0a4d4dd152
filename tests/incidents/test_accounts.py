"""Demo accounts (salted scrypt hashes) and the OIDC email → role mapping."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from incidents import actions
from incidents.accounts import (
    AccountsError,
    authenticate,
    hash_password,
    load_demo_accounts,
    oidc_actor,
    role_for_email,
    verify_password,
)
from incidents.auth import PermissionDenied, Role
from store.models import AuditEvent, KillSwitch, table_of

REPO = Path(__file__).resolve().parents[2]
ACCOUNTS = REPO / "config" / "demo_accounts.yaml"
AE, KS = table_of(AuditEvent), table_of(KillSwitch)


def test_a_hash_is_salted_scrypt_that_the_standard_library_reproduces() -> None:
    salt = bytes(range(16))
    encoded = hash_password("correct horse", salt=salt)
    scheme, n, r, p, salt_hex, key_hex = encoded.split("$")
    assert (scheme, n, r, p, salt_hex) == ("scrypt", "16384", "8", "1", salt.hex())
    # RFC 7914 test vector 2 pins hashlib.scrypt itself; here the stored key must be exactly
    # scrypt(password, salt) so any other scrypt implementation can check our hashes.
    assert key_hex == hashlib.scrypt(b"correct horse", salt=salt, n=16384, r=8, p=1, dklen=32).hex()
    vector = hashlib.scrypt(b"password", salt=b"NaCl", n=1024, r=8, p=16, dklen=64)
    assert vector.hex().startswith(
        "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
    )
    assert hash_password("correct horse") != hash_password("correct horse")  # fresh salts


def test_verify_accepts_the_password_and_refuses_others_and_broken_hashes() -> None:
    encoded = hash_password("s3cret")
    assert verify_password("s3cret", encoded)
    assert not verify_password("s3cret ", encoded)
    assert not verify_password("S3cret", encoded)
    assert not verify_password("s3cret", "plain-text-password")
    assert not verify_password("s3cret", encoded.replace("scrypt", "md5", 1))
    assert not verify_password("s3cret", encoded[:-2] + "zz")
    with pytest.raises(ValueError):
        hash_password("")


def test_the_shipped_demo_accounts_cover_every_role_and_sign_in() -> None:
    accounts = load_demo_accounts(ACCOUNTS)
    assert {a.role for a in accounts.values()} == set(Role)
    for username, account in accounts.items():
        actor = authenticate(accounts, username, f"vigil-{username}")
        assert actor is not None and actor.role is account.role
        assert authenticate(accounts, username, "wrong") is None
    assert authenticate(accounts, "Responder ", "vigil-responder").role is Role.INCIDENT_RESPONDER
    assert authenticate(accounts, "nobody", "vigil-nobody") is None
    assert "vigil-" not in ACCOUNTS.read_text().replace("`vigil-<username>`", "")


def test_a_bad_accounts_file_is_refused_with_its_reason(tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text("accounts:\n  - {username: a, name: A, role: admin, password_hash: hunter2}\n")
    with pytest.raises(AccountsError, match="no scrypt hash"):
        load_demo_accounts(plain)
    role = tmp_path / "role.yaml"
    role.write_text("accounts:\n  - {username: a, name: A, role: king, password_hash: x}\n")
    with pytest.raises(AccountsError, match="account 1 is invalid"):
        load_demo_accounts(role)
    with pytest.raises(AccountsError, match="cannot read"):
        load_demo_accounts(tmp_path / "missing.yaml")


def test_oidc_roles_come_from_the_mapping_and_default_to_viewer() -> None:
    mapping = {"Ria@Hospital.org": "incident_responder", "@board.example": "viewer"}
    assert role_for_email("ria@hospital.org", mapping) is Role.INCIDENT_RESPONDER
    assert role_for_email("someone@hospital.org", mapping) is Role.VIEWER
    assert role_for_email(None, mapping) is Role.VIEWER
    mapping["@hospital.org"] = "oncall"
    assert role_for_email("someone@hospital.org", mapping) is Role.ONCALL
    actor = oidc_actor(name="Ria Lee", email="ria@hospital.org", mapping=mapping)
    assert (actor.name, actor.role) == ("Ria Lee", Role.INCIDENT_RESPONDER)
    with pytest.raises(ValueError):
        oidc_actor(name=None, email=None, mapping=mapping)


def test_a_signed_in_viewer_is_refused_by_the_action_itself(engine: Engine) -> None:
    viewer = authenticate(load_demo_accounts(ACCOUNTS), "viewer", "vigil-viewer")
    assert viewer is not None
    with pytest.raises(PermissionDenied):
        actions.disable_score(
            engine, viewer, model="deterioration", site="UMC", reason="trying", incident_title="x"
        )
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(AE)).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(KS)).scalar_one() == 0
