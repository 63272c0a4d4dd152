"""Python client for scoring services: may this model's score be shown at this site right now?

    client = StatusClient(
        "https://vigil.example.org", token,
        policies={"deterioration": Policy.FAIL_CLOSED, "readmission": Policy.FAIL_OPEN},
    )
    decision = client.status("deterioration", "UMC")
    if decision.show: ...            # else: show nothing, and decision.reason says why

Answers are cached for `ttl_seconds` (default 15 s, the API's Cache-Control) and revalidated
with the ETag. When the API cannot be reached, or answers with an error, the model's policy
decides — and the decision says so in `reason`, never silently:

- fail-closed: the score is not shown.
- fail-open: the last known state is used (a score last known suppressed stays suppressed;
  one never checked is shown), with the age of that state in the reason.

A model without a policy (and no `default_policy`) is a configuration error, raised at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any

import httpx

logger = logging.getLogger(__name__)


class Policy(StrEnum):
    FAIL_OPEN = "fail-open"
    FAIL_CLOSED = "fail-closed"


@dataclass(frozen=True)
class Decision:
    """Whether to show the score, the state behind it, and where the answer came from."""

    model: str
    site: str
    show: bool
    state: str  # enabled, suppressed
    reason: str | None
    version: str | None = None
    since: datetime | None = None
    source: str = "api"  # api, cache, policy
    checked_at: float = 0.0  # the client's clock when the API last answered


@dataclass
class _Entry:
    good: Decision | None = None  # the last answer the API gave (last known good)
    etag: str | None = None
    fetched_at: float = float("-inf")  # when the API last answered (200 or 304)
    failed_at: float | None = None  # last failed attempt, so a dead API is not hammered
    failure: Decision | None = None


class MissingPolicy(ValueError):
    """No unreachable-API policy was configured for a model."""


class StatusClient:
    """Kill-switch status with a TTL cache, last-known-good state and per-model policies."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        policies: Mapping[str, Policy | str],
        default_policy: Policy | str | None = None,
        ttl_seconds: float = 15.0,
        timeout_seconds: float = 2.0,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policies = {model: Policy(policy) for model, policy in policies.items()}
        self._default = Policy(default_policy) if default_policy is not None else None
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._http = http or httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout_seconds,
            headers={"Authorization": f"Bearer {token}"},
        )
        self._cache: dict[tuple[str, str, str | None], _Entry] = {}
        self._lock = threading.Lock()

    def policy(self, model: str) -> Policy:
        policy = self._policies.get(model, self._default)
        if policy is None:
            raise MissingPolicy(
                f"no unreachable-API policy for model {model!r}: pass policies={{{model!r}: "
                "Policy.FAIL_CLOSED or Policy.FAIL_OPEN}"
            )
        return policy

    def status(self, model: str, site: str, *, version: str | None = None) -> Decision:
        """The decision for one model at one site (cached for the TTL)."""
        policy = self.policy(model)  # a missing policy is an error even while the API is up
        key = (model, site, version)
        with self._lock:
            now = self._clock()
            entry = self._cache.setdefault(key, _Entry())
            if entry.good is not None and now - entry.fetched_at < self.ttl_seconds:
                return replace(entry.good, source="cache")
            if (
                entry.failure is not None
                and entry.failed_at is not None
                and now - entry.failed_at < self.ttl_seconds
            ):
                return entry.failure
            try:
                return self._fetch(key, entry, now)
            except (httpx.HTTPError, ValueError) as exc:
                return self._unreachable(key, entry, policy, exc, now)

    def _fetch(self, key: tuple[str, str, str | None], entry: _Entry, now: float) -> Decision:
        model, site, version = key
        headers = {"If-None-Match": entry.etag} if entry.good is not None and entry.etag else {}
        params = {"version": version} if version else None
        response = self._http.get(
            f"/v1/models/{model}/sites/{site}/status", headers=headers, params=params
        )
        if response.status_code == 304 and entry.good is not None:
            entry.good = replace(entry.good, checked_at=now)
            entry.fetched_at, entry.failed_at, entry.failure = now, None, None
            return entry.good
        if response.status_code == 404:  # a definite answer: not deployed there
            decision = Decision(
                model, site, False, "suppressed", _detail(response), version, None, "api", now
            )
            self._cache[key] = _Entry(decision, None, now)
            return decision
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        enabled = body.get("status") == "enabled"
        decision = Decision(
            model=model,
            site=site,
            show=enabled,
            state="enabled" if enabled else "suppressed",
            reason=body.get("reason"),
            version=body.get("version"),
            since=datetime.fromisoformat(body["since"]) if body.get("since") else None,
            source="api",
            checked_at=now,
        )
        self._cache[key] = _Entry(decision, response.headers.get("etag"), now)
        return decision

    def _unreachable(
        self,
        key: tuple[str, str, str | None],
        entry: _Entry,
        policy: Policy,
        exc: Exception,
        now: float,
    ) -> Decision:
        model, site, version = key
        problem = _describe(exc)
        last = entry.good
        known = (
            f"last known state {last.state}, {now - last.checked_at:.0f} s old"
            if last is not None
            else "no state ever received"
        )
        prefix = f"kill-switch API unavailable ({problem}); {model} is {policy.value}"
        if policy is Policy.FAIL_CLOSED:
            show, state = False, "suppressed"
            reason = f"{prefix}: score not shown ({known})"
        elif last is not None and not last.show:
            show, state = False, "suppressed"
            reason = (
                f"{prefix}, but the score was last known suppressed ({last.reason}); "
                "fail-open never re-enables a suppressed score"
            )
        else:
            show, state = True, "enabled"
            reason = f"{prefix}: showing the score on the {known}"
        logger.warning("%s %s: %s", model, site, reason)
        decision = Decision(
            model=model,
            site=site,
            show=show,
            state=state,
            reason=reason,
            version=last.version if last is not None else version,
            since=last.since if last is not None else None,
            source="policy",
            checked_at=last.checked_at if last is not None else 0.0,
        )
        entry.failed_at, entry.failure = now, decision
        return decision

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> StatusClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return f"HTTP {response.status_code}"


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}"[:200]
