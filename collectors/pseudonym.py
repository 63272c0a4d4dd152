"""Encounter ids become keyed hashes at ingestion; the raw id is never stored or logged."""

from __future__ import annotations

import hashlib
import hmac


def encounter_key(encounter_id: str, secret: str) -> str:
    """HMAC-SHA256 of the encounter id under the deployment's secret key (hex)."""
    return hmac.new(secret.encode(), encounter_id.encode(), hashlib.sha256).hexdigest()


class EncounterKeys:
    """`encounter_key` for one secret, remembered per id: the scores of one stay share a key.

    The memo lives only in the collector's memory and is bounded.
    """

    limit = 200_000

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()
        self.known: dict[str, str] = {}  # read directly by hot loops: `known.get(id) or keys(id)`

    def __call__(self, encounter_id: str) -> str:
        key = self.known.get(encounter_id)
        if key is None:
            if len(self.known) >= self.limit:
                self.known.clear()
            key = hmac.digest(self._secret, encounter_id.encode(), "sha256").hex()
            self.known[encounter_id] = key
        return key
