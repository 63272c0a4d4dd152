"""Release stages, their exit criteria, the canary recommendation, and the two release actions.

A model version moves development -> shadow -> canary -> limited -> broad -> retired. Each
stage's exit criteria live in config/canary.yaml. `evaluate_exit_criteria` and `recommend`
are pure: evidence in, criteria results and promote / hold / roll back out.

`promote` and `rollback` are the actions. Each checks the actor's role first (a refusal
changes nothing), and each is audited with who, when and the evidence it acted on:

- promote moves the version one stage on, only when every exit criterion is met, and records
  a `stagechange` row with the audit event in the same transaction;
- rollback switches the canary version off at its site through the kill switch
  (`incidents.actions.disable_score`, per model x site x version, so the control version keeps
  serving), then returns the version to development, audited with the judge's evidence.

Promoting changes the version's stage; widening its deployments (more units, more sites)
is a registry change that follows it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from incidents import audit
from incidents.auth import Action, Actor, authorize
from monitors.canary import CanaryConfig, StageCriteria
from store.models import (
    CanaryJudgement,
    Incident,
    Model,
    ModelVersion,
    Prediction,
    PredictionRollup,
    Site,
    StageChange,
    table_of,
    utcnow,
)
from vigil.config import Settings

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("development", "shadow", "canary", "limited", "broad", "retired")
PROMOTE = "promote"
HOLD = "hold"
ROLLBACK = "rollback"

M = table_of(Model)
V = table_of(ModelVersion)
S = table_of(Site)
INC = table_of(Incident)
SC = table_of(StageChange)
CJ = table_of(CanaryJudgement)
R = table_of(PredictionRollup)
P = table_of(Prediction)


def next_stage(stage: str) -> str | None:
    """The stage after `stage`, or None for the last one (retired)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    i = STAGES.index(stage)
    return STAGES[i + 1] if i + 1 < len(STAGES) else None


# ---------------------------------------------------------------- evidence and criteria


@dataclass(frozen=True)
class Evidence:
    """What is known about a version in its current stage, for its exit criteria."""

    stage: str
    days_in_stage: float | None = None
    scores: int = 0
    verdict: str | None = None  # the planned analysis's verdict; None: not judged yet
    canary_oe: float | None = None
    label_completeness: float | None = None
    alert_ratio: float | None = None
    open_incidents: int = 0
    sequential_rejections: tuple[str, ...] = ()
    interim_verdict: str | None = None
    failed_metrics: tuple[str, ...] = ()
    planned_window: tuple[str, str] | None = None
    judged_at: str | None = None  # when the monitor gathered this evidence

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "days_in_stage": None if self.days_in_stage is None else round(self.days_in_stage, 2),
            "scores": self.scores,
            "verdict": self.verdict,
            "canary_oe": None if self.canary_oe is None else round(self.canary_oe, 4),
            "label_completeness": None
            if self.label_completeness is None
            else round(self.label_completeness, 4),
            "alert_ratio": None if self.alert_ratio is None else round(self.alert_ratio, 4),
            "open_incidents": self.open_incidents,
            "sequential_rejections": list(self.sequential_rejections),
            "interim_verdict": self.interim_verdict,
            "failed_metrics": list(self.failed_metrics),
            "planned_window": list(self.planned_window) if self.planned_window else None,
            "judged_at": self.judged_at,
        }


@dataclass(frozen=True)
class CriterionResult:
    """One exit criterion: met, not met, or not known yet (None), and why."""

    name: str
    met: bool | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "met": self.met, "detail": self.detail}


def evaluate_exit_criteria(criteria: StageCriteria, evidence: Evidence) -> list[CriterionResult]:
    """Each configured exit criterion of the stage against the evidence (pure)."""
    out: list[CriterionResult] = []
    if criteria.min_days:
        days = evidence.days_in_stage
        out.append(
            CriterionResult(
                "minimum duration",
                None if days is None else days >= criteria.min_days,
                f"{0 if days is None else days:.1f} of {criteria.min_days:g} days",
            )
        )
    if criteria.min_scores:
        out.append(
            CriterionResult(
                "minimum volume",
                evidence.scores >= criteria.min_scores,
                f"{evidence.scores:,} of {criteria.min_scores:,} scores",
            )
        )
    if criteria.verdict:
        allowed = "/".join(criteria.verdict)
        out.append(
            CriterionResult(
                "judge verdict",
                None if evidence.verdict is None else evidence.verdict in criteria.verdict,
                f"planned analysis: {evidence.verdict or 'not judged yet'} (needs {allowed})",
            )
        )
    if criteria.min_label_completeness:
        lc = evidence.label_completeness
        out.append(
            CriterionResult(
                "labels settled",
                None if lc is None else lc >= criteria.min_label_completeness,
                f"{0 if lc is None else lc:.0%} settled "
                f"(needs {criteria.min_label_completeness:.0%})",
            )
        )
    if criteria.oe_bounds is not None:
        low, high = criteria.oe_bounds
        oe = evidence.canary_oe
        out.append(
            CriterionResult(
                "calibration bounds",
                None if oe is None else low <= oe <= high,
                f"canary O:E {'–' if oe is None else f'{oe:.2f}'} (within {low:g}–{high:g})",
            )
        )
    if criteria.alert_ratio_max is not None:
        ratio = evidence.alert_ratio
        out.append(
            CriterionResult(
                "alert volume",
                None if ratio is None else ratio <= criteria.alert_ratio_max,
                f"canary/control alerts per patient-day {'–' if ratio is None else f'{ratio:.2f}'}"
                f" (at most {criteria.alert_ratio_max:g})",
            )
        )
    if criteria.max_open_incidents is not None:
        out.append(
            CriterionResult(
                "open incidents",
                evidence.open_incidents <= criteria.max_open_incidents,
                f"{evidence.open_incidents} open (at most {criteria.max_open_incidents})",
            )
        )
    if criteria.sequential_clear:
        rejected = evidence.sequential_rejections
        out.append(
            CriterionResult(
                "always-valid test clear",
                not rejected,
                "no rejection" if not rejected else "rejected: " + ", ".join(rejected),
            )
        )
    return out


@dataclass(frozen=True)
class Recommendation:
    action: str  # promote, hold, rollback
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "reasons": self.reasons}


def recommend(evidence: Evidence, criteria: list[CriterionResult]) -> Recommendation:
    """Roll back on an always-valid rejection or a failed planned analysis; promote when every
    exit criterion is met; otherwise hold, saying what is missing.

    The interim verdict (the fixed-sample judge over the period so far, recomputed every
    cycle) never triggers a roll back by itself: acting on whichever look first shows a Fail
    is exactly the repeated-looks error the always-valid test exists to avoid.
    """
    if evidence.sequential_rejections:
        return Recommendation(
            ROLLBACK,
            [
                "the always-valid test rejects (safe to act at any look): "
                + ", ".join(evidence.sequential_rejections)
            ],
        )
    if evidence.verdict == "Fail":
        failed = ", ".join(evidence.failed_metrics) or "the weighted score"
        return Recommendation(ROLLBACK, [f"the planned analysis failed the canary on {failed}"])
    unmet = [c for c in criteria if c.met is not True]
    if criteria and not unmet:
        return Recommendation(PROMOTE, ["every exit criterion is met"])
    reasons = [f"{c.name}: {c.detail}" for c in unmet]
    if evidence.interim_verdict in ("Fail", "Marginal") and evidence.verdict is None:
        reasons.append(
            f"interim verdict {evidence.interim_verdict} (fixed-sample, period so far): "
            "watch, but it is not evidence to act on before the planned analysis"
        )
    return Recommendation(HOLD, reasons or ["no exit criteria configured for this stage"])


# ---------------------------------------------------------------- evidence from the store


@dataclass(frozen=True)
class VersionRef:
    model_id: int
    model: str
    version_id: int
    version: str
    stage: str
    created_at: datetime


def _version(conn: Connection, model: str, version: str) -> VersionRef:
    row = conn.execute(
        sa.select(M.c.id, M.c.name, V.c.id.label("vid"), V.c.version, V.c.stage, V.c.created_at)
        .join(V, V.c.model_id == M.c.id)
        .where(M.c.name == model, V.c.version == version)
    ).first()
    if row is None:
        raise LookupError(f"unknown version {version!r} of model {model!r}")
    return VersionRef(
        int(row.id), str(row.name), int(row.vid), str(row.version), str(row.stage), row.created_at
    )


def open_incidents(conn: Connection, *, model_id: int, site_id: int | None = None) -> int:
    """Open incidents about the model (at the site, or about every site)."""
    query = sa.select(sa.func.count()).where(INC.c.model_id == model_id, INC.c.status == "open")
    if site_id is not None:
        query = query.where(sa.or_(INC.c.site_id == site_id, INC.c.site_id.is_(None)))
    return int(conn.execute(query).scalar() or 0)


def _stage_entered(conn: Connection, ref: VersionRef) -> datetime | None:
    return conn.execute(
        sa.select(sa.func.max(SC.c.at)).where(
            SC.c.model_id == ref.model_id,
            SC.c.version_id == ref.version_id,
            SC.c.to_stage == ref.stage,
        )
    ).scalar()


def latest_judgements(conn: Connection, ref: VersionRef) -> list[dict[str, Any]]:
    """The newest planned (else interim) judgement of the version at each canary site."""
    out = []
    sites = conn.execute(
        sa.select(CJ.c.site_id)
        .where(CJ.c.model_id == ref.model_id, CJ.c.version_id == ref.version_id)
        .distinct()
    ).scalars()
    for site_id in list(sites):
        for kind in ("planned", "interim"):
            row = (
                conn.execute(
                    sa.select(CJ)
                    .where(
                        CJ.c.model_id == ref.model_id,
                        CJ.c.version_id == ref.version_id,
                        CJ.c.site_id == site_id,
                        CJ.c.kind == kind,
                    )
                    .order_by(CJ.c.evaluated_hour.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
            if row is not None:
                out.append(dict(row))
    return out


def gather_evidence(
    engine: Engine, *, model: str, version: str, now: datetime | None = None
) -> tuple[VersionRef, list[Evidence]]:
    """The evidence for the version's current stage (one per canary site for the canary)."""
    now = now or utcnow()
    with engine.connect() as conn:
        ref = _version(conn, model, version)
        if ref.stage == "canary":
            rows = latest_judgements(conn, ref)
            by_site: dict[int, dict[str, dict[str, Any]]] = {}
            for row in rows:
                by_site.setdefault(int(row["site_id"]), {})[str(row["kind"])] = row
            evidence = []
            for site_id, kinds in by_site.items():
                interim = kinds.get("interim")
                detail = (interim or kinds.get("planned") or {}).get("detail") or {}
                values = dict(detail.get("evidence") or {"stage": "canary"})
                # What can change between monitor runs is read now, not as recorded.
                values["stage"] = ref.stage
                values["open_incidents"] = open_incidents(
                    conn, model_id=ref.model_id, site_id=site_id
                )
                values["sequential_rejections"] = tuple(values.get("sequential_rejections", ()))
                values["failed_metrics"] = tuple(values.get("failed_metrics", ()))
                if values.get("planned_window"):
                    values["planned_window"] = tuple(values["planned_window"])
                evidence.append(Evidence(**values))
            if not evidence:
                evidence = [Evidence(stage="canary")]
            return ref, evidence
        entered = _stage_entered(conn, ref) or ref.created_at
        scores = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(R.c.n_ok), 0)).where(
                R.c.model_id == ref.model_id,
                R.c.version_id == ref.version_id,
                R.c.hour >= int(entered.timestamp() // 3600),
            )
        ).scalar()
        return ref, [
            Evidence(
                stage=ref.stage,
                days_in_stage=(now - entered).total_seconds() / 86400,
                scores=int(scores or 0),
                open_incidents=open_incidents(conn, model_id=ref.model_id),
            )
        ]


# ---------------------------------------------------------------- the actions


@dataclass(frozen=True)
class ReleaseResult:
    """What a release action did and the audit event that records it."""

    changed: bool
    message: str
    audit_hash: str
    from_stage: str
    to_stage: str
    evidence: dict[str, Any]


def promote(
    engine: Engine,
    actor: Actor,
    *,
    model: str,
    version: str,
    reason: str,
    config: CanaryConfig | None = None,
    now: datetime | None = None,
) -> ReleaseResult:
    """Move a version to its next stage, if every exit criterion of its stage is met.

    Permission first (clinical lead or admin); then the evidence is gathered, the criteria
    evaluated, and the stage change, its history row and its audit event commit together.
    Unmet criteria raise ValueError naming them, and nothing changes.
    """
    authorize(actor, Action.PROMOTE_VERSION)
    reason = (reason or "").strip()
    if len(reason) < 5:
        raise ValueError("a reason is required (at least 5 characters)")
    config = config or CanaryConfig.from_file()
    now = now or utcnow()
    ref, evidence = gather_evidence(engine, model=model, version=version, now=now)
    target = next_stage(ref.stage)
    if target is None:
        raise ValueError(f"{model} {version} is {ref.stage}: there is no stage after it")
    criteria = config.stages.get(ref.stage, StageCriteria(stage=ref.stage))
    results = [evaluate_exit_criteria(criteria, e) for e in evidence]
    unmet = [c for site_results in results for c in site_results if c.met is not True]
    if unmet:
        raise ValueError(
            f"{model} {version} may not leave {ref.stage}: "
            + "; ".join(f"{c.name} ({c.detail})" for c in unmet)
        )
    record = {
        "from": ref.stage,
        "to": target,
        "reason": reason,
        "evidence": [e.to_json() for e in evidence],
        "criteria": [[c.to_json() for c in site_results] for site_results in results],
    }
    with engine.begin() as conn:
        audit.lock_chain(conn)
        current = conn.execute(sa.select(V.c.stage).where(V.c.id == ref.version_id)).scalar()
        if current != ref.stage:  # someone moved it while the evidence was gathered
            raise ValueError(f"{model} {version} is now {current}; look again before promoting")
        conn.execute(
            sa.update(V).where(V.c.id == ref.version_id).values(stage=target, approver=actor.name)
        )
        digest = audit.append(
            conn,
            actor=actor.name,
            role=actor.role.value,
            action=Action.PROMOTE_VERSION.value,
            target=f"version:{model}#{version}",
            detail=record,
            at=now,
        )
        conn.execute(
            sa.insert(SC).values(
                model_id=ref.model_id,
                version_id=ref.version_id,
                from_stage=ref.stage,
                to_stage=target,
                actor=actor.name,
                role=actor.role.value,
                at=now,
                reason=reason,
                evidence=audit.normalise_detail(record),
                audit_hash=digest,
            )
        )
    message = f"{model} {version}: {ref.stage} → {target}"
    logger.info("%s by %s", message, actor)
    return ReleaseResult(True, message, digest, ref.stage, target, record)


def rollback(
    engine: Engine,
    actor: Actor,
    *,
    model: str,
    site: str,
    version: str,
    reason: str,
    incident_id: int | None = None,
    incident_title: str | None = None,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> ReleaseResult:
    """Switch the canary version off at its site through the kill switch; control keeps serving.

    Permission first (incident responder or admin, the roles that may use the kill switch);
    the kill switch action audits and pages the switch change itself, then the roll back is
    audited with the judge's evidence and the version returns to development. If the second
    step fails the score is already off (the safe side) and its own audit event records it.
    """
    authorize(actor, Action.ROLLBACK)
    from incidents.actions import disable_score  # the kill switch's public action

    now = now or utcnow()
    reason = (reason or "").strip()
    if incident_id is None and not (incident_title or "").strip():
        incident_title = f"Canary {version} of {model} rolled back at {site}"
    with engine.connect() as conn:
        ref = _version(conn, model, version)
        site_id = conn.execute(sa.select(S.c.id).where(S.c.code == site)).scalar()
        if site_id is None:
            raise LookupError(f"unknown site {site!r}")
        judgements = [j for j in latest_judgements(conn, ref) if int(j["site_id"]) == int(site_id)]
    switched = disable_score(
        engine,
        actor,
        model=model,
        site=site,
        version=version,
        reason=f"canary roll back: {reason}" if reason else "canary roll back",
        incident_id=incident_id,
        incident_title=incident_title,
        now=now,
        settings=settings,
    )
    evidence = {
        "judgements": [
            {
                "kind": j["kind"],
                "verdict": j["verdict"],
                "score": j["score"],
                "recommendation": j["recommendation"],
                "window": [j["window_start"], j["window_end"]],
                "failed": ((j.get("detail") or {}).get("judgement") or {}).get("failed", []),
                "reasons": ((j.get("detail") or {}).get("recommendation") or {}).get("reasons", []),
            }
            for j in judgements
        ],
        "kill_switch": {
            "changed": switched.changed,
            "audit_hash": switched.audit_hash,
            "incident": switched.incident_id,
        },
    }
    target_stage = "development"
    record = {"from": ref.stage, "to": target_stage, "site": site, "reason": reason, **evidence}
    with engine.begin() as conn:
        audit.lock_chain(conn)
        current = conn.execute(sa.select(V.c.stage).where(V.c.id == ref.version_id)).scalar()
        digest = audit.append(
            conn,
            actor=actor.name,
            role=actor.role.value,
            action=Action.ROLLBACK.value,
            target=f"version:{model}#{version}@{site}",
            detail=record,
            at=now,
        )
        changed = current != target_stage
        if changed:
            conn.execute(sa.update(V).where(V.c.id == ref.version_id).values(stage=target_stage))
            conn.execute(
                sa.insert(SC).values(
                    model_id=ref.model_id,
                    version_id=ref.version_id,
                    from_stage=str(current),
                    to_stage=target_stage,
                    actor=actor.name,
                    role=actor.role.value,
                    at=now,
                    reason=f"rolled back at {site}: {reason}",
                    evidence=audit.normalise_detail(record),
                    audit_hash=digest,
                )
            )
    message = f"{model} {version} rolled back at {site}: {switched.message}"
    logger.info("%s by %s", message, actor)
    return ReleaseResult(
        switched.changed or changed, message, digest, str(current), target_stage, record
    )


def stage_history(
    engine: Engine, *, model: str, version: str | None = None
) -> list[dict[str, Any]]:
    """Stage changes of a model's versions, newest first."""
    query = (
        sa.select(
            V.c.version,
            SC.c.from_stage,
            SC.c.to_stage,
            SC.c.actor,
            SC.c.role,
            SC.c.at,
            SC.c.reason,
            SC.c.audit_hash,
        )
        .join(V, V.c.id == SC.c.version_id)
        .join(M, M.c.id == SC.c.model_id)
        .where(M.c.name == model)
        .order_by(SC.c.at.desc(), SC.c.id.desc())
    )
    if version is not None:
        query = query.where(V.c.version == version)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
