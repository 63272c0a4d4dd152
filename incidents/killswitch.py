"""The kill switch: whether a model's score may be shown at a site, and the status consumers read.

A switch row covers one model × site × version; site 0 means every site of the model and
version 0 every version. A score is suppressed when any switch covering its deployment is
off (or the registry disabled the deployment). Changing a switch happens only through
`incidents.actions`, which checks the actor's role and audits the change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from store.models import (
    Deployment,
    Incident,
    KillSwitch,
    Model,
    ModelVersion,
    Site,
    table_of,
)

KS = table_of(KillSwitch)
D = table_of(Deployment)
M = table_of(Model)
S = table_of(Site)
V = table_of(ModelVersion)
INC = table_of(Incident)
ALL = 0  # site_id / version_id of a switch that covers every site / version

State = Literal["enabled", "suppressed"]


class NotFound(LookupError):
    """The model, site, version or deployment named does not exist."""


@dataclass(frozen=True)
class Scope:
    """What a switch covers, by id, with the names used in messages and audit targets."""

    model_id: int
    model: str
    site_id: int = ALL
    site: str | None = None  # None: every site
    version_id: int = ALL
    version: str | None = None  # None: every version

    @property
    def target(self) -> str:
        """The audit target: score:<model>@<site or *>[#<version>]."""
        text = f"score:{self.model}@{self.site or '*'}"
        return f"{text}#{self.version}" if self.version else text

    def describe(self) -> str:
        where = f"at {self.site}" if self.site else "at every site"
        which = f" version {self.version}" if self.version else ""
        return f"{self.model}{which} {where}"


@dataclass(frozen=True)
class ScoreStatus:
    """What a consumer must do with one model's score at one site, and why."""

    model: str
    site: str
    version: str
    arm: str
    state: State
    reason: str | None
    since: datetime
    incident_id: int | None = None
    scope: str | None = None  # the switch that suppresses it, e.g. "every site"

    @property
    def enabled(self) -> bool:
        return self.state == "enabled"

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "site": self.site,
            "version": self.version,
            "arm": self.arm,
            "status": self.state,
            "enabled": self.enabled,
            "reason": self.reason,
            "since": self.since.astimezone(UTC).isoformat(),
            "incident": self.incident_id,
            "scope": self.scope,
        }

    @property
    def etag(self) -> str:
        body = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return '"' + hashlib.sha256(body.encode()).hexdigest()[:32] + '"'


def resolve_scope(
    conn: Connection, *, model: str, site: str | None = None, version: str | None = None
) -> Scope:
    """Ids for names; raise NotFound for an unknown model, site or version."""
    model_id = conn.execute(sa.select(M.c.id).where(M.c.name == model)).scalar()
    if model_id is None:
        raise NotFound(f"unknown model {model!r}")
    site_id = ALL
    if site is not None:
        found = conn.execute(sa.select(S.c.id).where(S.c.code == site)).scalar()
        if found is None:
            raise NotFound(f"unknown site {site!r}")
        site_id = int(found)
    version_id = ALL
    if version is not None:
        found = conn.execute(
            sa.select(V.c.id).where(V.c.model_id == model_id, V.c.version == version)
        ).scalar()
        if found is None:
            raise NotFound(f"unknown version {version!r} of {model}")
        version_id = int(found)
    return Scope(int(model_id), model, site_id, site, version_id, version)


@dataclass(frozen=True)
class SwitchChange:
    changed: bool
    enabled: bool
    revision: int
    since: datetime | None


def set_switch(
    conn: Connection,
    scope: Scope,
    *,
    enabled: bool,
    reason: str,
    incident_id: int,
    actor: str,
    role: str,
    now: datetime,
) -> SwitchChange:
    """Turn the scope's switch on or off inside the caller's (chain-locked) transaction.

    Setting the state it already has changes nothing (two responders disabling at once:
    the second finds it off). A scope never switched off has no row and is on.
    """
    row = conn.execute(
        sa.select(KS.c.id, KS.c.enabled, KS.c.revision, KS.c.changed_at)
        .where(
            KS.c.model_id == scope.model_id,
            KS.c.site_id == scope.site_id,
            KS.c.version_id == scope.version_id,
        )
        .with_for_update()
    ).first()
    if row is None and enabled:
        return SwitchChange(False, True, 0, None)
    if row is not None and bool(row.enabled) == enabled:
        return SwitchChange(False, enabled, int(row.revision), row.changed_at)
    values = {
        "enabled": enabled,
        "reason": reason,
        "incident_id": incident_id,
        "actor": actor,
        "role": role,
        "changed_at": now,
    }
    if row is None:
        conn.execute(
            sa.insert(KS).values(
                model_id=scope.model_id,
                site_id=scope.site_id,
                version_id=scope.version_id,
                revision=1,
                **values,
            )
        )
        return SwitchChange(True, enabled, 1, now)
    conn.execute(
        sa.update(KS).where(KS.c.id == row.id).values(revision=int(row.revision) + 1, **values)
    )
    return SwitchChange(True, enabled, int(row.revision) + 1, now)


def _deployment_rows(
    conn: Connection, *, model: str | None = None, site: str | None = None
) -> list[sa.Row[Any]]:
    query = (
        sa.select(
            D.c.id,
            D.c.model_id,
            D.c.site_id,
            D.c.version_id,
            D.c.unit,
            D.c.arm,
            D.c.enabled,
            D.c.started_at,
            M.c.name.label("model"),
            S.c.code.label("site"),
            V.c.version,
        )
        .join(M, M.c.id == D.c.model_id)
        .join(S, S.c.id == D.c.site_id)
        .join(V, V.c.id == D.c.version_id)
    )
    if model is not None:
        query = query.where(M.c.name == model)
    if site is not None:
        query = query.where(S.c.code == site)
    return list(conn.execute(query.order_by(M.c.name, S.c.code, D.c.arm, V.c.version)))


def _switch_rows(conn: Connection, model_ids: set[int]) -> list[sa.Row[Any]]:
    if not model_ids:
        return []
    return list(conn.execute(sa.select(KS).where(KS.c.model_id.in_(model_ids))))


def _effective(deployment: sa.Row[Any], switches: list[sa.Row[Any]]) -> ScoreStatus:
    """The status of one deployment under the switches that cover it (pure)."""
    covering = [
        s
        for s in switches
        if s.model_id == deployment.model_id
        and s.site_id in (ALL, deployment.site_id)
        and s.version_id in (ALL, deployment.version_id)
    ]
    common = {
        "model": deployment.model,
        "site": deployment.site,
        "version": deployment.version,
        "arm": deployment.arm,
    }
    off = sorted((s for s in covering if not s.enabled), key=lambda s: s.changed_at)
    if off:
        first = off[0]
        scope = "every site" if first.site_id == ALL else f"site {deployment.site}"
        if first.version_id != ALL:
            scope += f", version {deployment.version}"
        return ScoreStatus(
            **common,
            state="suppressed",
            reason=first.reason,
            since=first.changed_at,
            incident_id=first.incident_id,
            scope=scope,
        )
    if not deployment.enabled:
        return ScoreStatus(
            **common,
            state="suppressed",
            reason="the deployment is disabled in the registry",
            since=deployment.started_at,
        )
    since = max([deployment.started_at, *(s.changed_at for s in covering)])
    return ScoreStatus(**common, state="enabled", reason=None, since=since)


def _pick(deployments: list[sa.Row[Any]], version: str | None) -> sa.Row[Any] | None:
    if version is not None:
        chosen = [d for d in deployments if d.version == version]
    else:
        chosen = [d for d in deployments if d.arm == "control"] or deployments
    # Whole-site deployments before single units, then the newest.
    chosen.sort(key=lambda d: (d.unit != "", -d.started_at.timestamp()))
    return chosen[0] if chosen else None


def score_status(
    conn: Connection, *, model: str, site: str, version: str | None = None
) -> ScoreStatus:
    """The status of `model` at `site` (its control deployment unless `version` is given)."""
    deployments = _deployment_rows(conn, model=model, site=site)
    deployment = _pick(deployments, version)
    if deployment is None:
        resolve_scope(conn, model=model, site=site, version=version)  # names the unknown part
        which = f" version {version}" if version else ""
        raise NotFound(f"{model}{which} is not deployed at {site}")
    return _effective(deployment, _switch_rows(conn, {deployment.model_id}))


def all_statuses(engine: Engine) -> list[ScoreStatus]:
    """The status of every deployment (every model × site × version × arm)."""
    with engine.connect() as conn:
        deployments = _deployment_rows(conn)
        switches = _switch_rows(conn, {d.model_id for d in deployments})
    seen: set[tuple[str, str, str, str]] = set()
    statuses = []
    for deployment in deployments:
        status = _effective(deployment, switches)
        key = (status.model, status.site, status.version, status.arm)
        if key not in seen:  # units of one site share the site's switch
            seen.add(key)
            statuses.append(status)
    return statuses


def switches(engine: Engine, *, disabled_only: bool = False) -> list[dict[str, Any]]:
    """Every switch row with names, newest change first (for the console and the CLI)."""
    query = (
        sa.select(
            KS.c.id,
            M.c.name.label("model"),
            sa.func.coalesce(S.c.code, "*").label("site"),
            sa.func.coalesce(V.c.version, "*").label("version"),
            KS.c.enabled,
            KS.c.reason,
            KS.c.incident_id,
            INC.c.title.label("incident"),
            KS.c.actor,
            KS.c.role,
            KS.c.changed_at,
            KS.c.revision,
        )
        .join(M, M.c.id == KS.c.model_id)
        .outerjoin(S, S.c.id == KS.c.site_id)
        .outerjoin(V, V.c.id == KS.c.version_id)
        .outerjoin(INC, INC.c.id == KS.c.incident_id)
        .order_by(KS.c.changed_at.desc())
    )
    if disabled_only:
        query = query.where(KS.c.enabled.is_(False))
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
