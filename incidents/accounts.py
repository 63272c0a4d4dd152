"""Who is signed in to the dashboard: local demo accounts with salted password hashes, and the
role an OIDC-signed-in user gets from the configured email → role mapping.

Demo accounts exist only in demo mode. Passwords are stored as salted scrypt hashes
(`scrypt$n$r$p$salt$hash`, RFC 7914 via `hashlib.scrypt`) and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from incidents.auth import Actor, Role

logger = logging.getLogger(__name__)

SCHEME = "scrypt"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES, KEY_BYTES = 16, 32
DEFAULT_ROLE = Role.VIEWER


class AccountsError(ValueError):
    """The demo accounts file cannot be used as it is."""


@dataclass(frozen=True)
class DemoAccount:
    username: str
    name: str
    role: Role
    password_hash: str

    def actor(self) -> Actor:
        return Actor(self.name, self.role)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES, maxmem=2**26
    )


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A salted scrypt hash of `password`, with its parameters, for the accounts file."""
    if not password:
        raise ValueError("a password cannot be empty")
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${key.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches the stored hash; a malformed hash never matches."""
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != SCHEME:
            return False
        expected = bytes.fromhex(key)
        actual = _scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def load_demo_accounts(path: Path) -> dict[str, DemoAccount]:
    """The demo accounts by username, from a YAML file `{accounts: [{username, name, role,
    password_hash}]}`."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise AccountsError(f"{path}: cannot read the demo accounts ({exc})") from exc
    accounts: dict[str, DemoAccount] = {}
    for index, entry in enumerate(raw.get("accounts") or [], start=1):
        try:
            account = DemoAccount(
                username=str(entry["username"]).strip().lower(),
                name=str(entry["name"]),
                role=Role(entry["role"]),
                password_hash=str(entry["password_hash"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AccountsError(f"{path}: account {index} is invalid ({exc})") from exc
        if not account.password_hash.startswith(f"{SCHEME}$"):
            raise AccountsError(f"{path}: account {account.username!r} has no scrypt hash")
        if account.username in accounts:
            raise AccountsError(f"{path}: username {account.username!r} appears twice")
        accounts[account.username] = account
    return accounts


# A hash to check against when the username is unknown, so a wrong name takes as long as a
# wrong password and does not reveal which usernames exist.
_UNKNOWN_USER_HASH = hash_password("unknown-user", salt=b"\x00" * SALT_BYTES)


def authenticate(accounts: dict[str, DemoAccount], username: str, password: str) -> Actor | None:
    """The actor for a correct username and password, else None."""
    account = accounts.get(username.strip().lower())
    ok = verify_password(password, account.password_hash if account else _UNKNOWN_USER_HASH)
    if account is None or not ok:
        logger.info("demo sign-in refused")
        return None
    return account.actor()


def role_for_email(email: str | None, mapping: dict[str, str]) -> Role:
    """The role configured for an email address (case-insensitive); a domain may be given as
    `@example.org`; anyone else is a viewer."""
    if not email:
        return DEFAULT_ROLE
    address = email.strip().lower()
    normalised = {key.strip().lower(): value for key, value in mapping.items()}
    domain = "@" + address.rsplit("@", 1)[-1] if "@" in address else None
    value = normalised.get(address) or (normalised.get(domain) if domain else None)
    return Role(value) if value else DEFAULT_ROLE


def oidc_actor(*, name: str | None, email: str | None, mapping: dict[str, str]) -> Actor:
    """The actor for a user signed in through the identity provider."""
    display = (name or email or "").strip()
    if not display:
        raise ValueError("the identity provider returned neither a name nor an email")
    return Actor(display, role_for_email(email, mapping))
