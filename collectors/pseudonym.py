"""Encounter ids become keyed hashes at ingestion; the raw id is never stored or logged."""

from __future__ import annotations

import hashlib
import hmac


def encounter_key(encounter_id: str, secret: str) -> str:
    """HMAC-SHA256 of the encounter id under the deployment's secret key (hex)."""
    return hmac.new(secret.encode(), encounter_id.encode(), hashlib.sha256).hexdigest()
