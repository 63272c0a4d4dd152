"""The deployment registry: load config/registry.yaml into the store and look names up."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from store.db import session_scope
from store.models import Deployment, Model, ModelVersion, Site

logger = logging.getLogger(__name__)


class RegistryError(ValueError):
    """The registry file is missing, unreadable or inconsistent."""


def load_registry_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError(f"{path}: cannot read the registry: {exc}") from exc
    if not isinstance(data, dict) or not {"sites", "models"} <= data.keys():
        raise RegistryError(f"{path}: the registry needs 'sites' and 'models'")
    return data


def sync_registry(engine: Engine, path: Path) -> dict[str, int]:
    """Insert or update sites, models, versions and deployments from `path` (idempotent)."""
    data = load_registry_file(path)
    counts = {"sites": 0, "models": 0, "versions": 0, "deployments": 0}
    with session_scope(engine) as session:
        sites: dict[str, Site] = {}
        for spec in data["sites"]:
            site = session.exec(select(Site).where(Site.code == spec["code"])).first()
            site = site or Site(code=spec["code"], name=spec["name"], kind=spec["kind"])
            site.name, site.kind = spec["name"], spec["kind"]
            site.timezone = spec.get("timezone", "UTC")
            site.beds = int(spec.get("beds", 0))
            session.add(site)
            sites[site.code] = site
            counts["sites"] += 1
        session.flush()
        versions: dict[tuple[str, str], ModelVersion] = {}
        models: dict[str, Model] = {}
        for spec in data["models"]:
            model = session.exec(select(Model).where(Model.name == spec["name"])).first()
            model = model or Model(
                name=spec["name"], title=spec["title"], outcome=spec["outcome"], horizon_hours=1
            )
            for attr in (
                "title",
                "outcome",
                "horizon_hours",
                "label_lag_hours",
                "settles_on_closure",
                "latency_slo_seconds",
                "scoring_interval_minutes",
                "inputs",
            ):
                if attr in spec:
                    setattr(model, attr, spec[attr])
            session.add(model)
            session.flush()
            models[model.name] = model
            counts["models"] += 1
            for vspec in spec.get("versions", []):
                assert model.id is not None
                version = session.exec(
                    select(ModelVersion).where(
                        ModelVersion.model_id == model.id,
                        ModelVersion.version == str(vspec["version"]),
                    )
                ).first()
                version = version or ModelVersion(
                    model_id=model.id, version=str(vspec["version"]), threshold=0.5
                )
                for attr in (
                    "stage",
                    "threshold",
                    "artifact_sha256",
                    "training_data",
                    "feature_set",
                    "calibration",
                    "approver",
                ):
                    if attr in vspec:
                        setattr(version, attr, vspec[attr])
                session.add(version)
                session.flush()
                versions[(model.name, version.version)] = version
                counts["versions"] += 1
        for dspec in data.get("deployments", []):
            model = models[dspec["model"]]
            version = versions.get((dspec["model"], str(dspec["version"])))
            if version is None:
                raise RegistryError(f"{path}: deployment of unknown version {dspec}")
            for code in dspec["sites"]:
                if code not in sites:
                    raise RegistryError(f"{path}: deployment at unknown site {code}")
                unit, arm = dspec.get("unit", ""), dspec.get("arm", "control")
                existing = session.exec(
                    select(Deployment).where(
                        Deployment.model_id == model.id,
                        Deployment.version_id == version.id,
                        Deployment.site_id == sites[code].id,
                        Deployment.unit == unit,
                        Deployment.arm == arm,
                    )
                ).first()
                if existing is None:
                    assert model.id and version.id and sites[code].id
                    session.add(
                        Deployment(
                            model_id=model.id,
                            version_id=version.id,
                            site_id=sites[code].id,  # type: ignore[arg-type]
                            unit=unit,
                            arm=arm,
                            alert_threshold=float(dspec.get("threshold", version.threshold)),
                        )
                    )
                counts["deployments"] += 1
    logger.info("registry synced from %s: %s", path, counts)
    return counts


@dataclass
class RegistryLookup:
    """Name → id maps the collectors use to validate and translate rows."""

    sites: dict[str, int] = field(default_factory=dict)
    models: dict[str, Model] = field(default_factory=dict)
    versions: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def load(cls, engine: Engine) -> RegistryLookup:
        with Session(engine) as session:
            lookup = cls()
            for site in session.exec(select(Site)):
                assert site.id is not None
                lookup.sites[site.code] = site.id
            by_id: dict[int, Model] = {}
            for model in session.exec(select(Model)):
                assert model.id is not None
                session.expunge(model)
                lookup.models[model.name] = model
                by_id[model.id] = model
            for version in session.exec(select(ModelVersion)):
                assert version.id is not None
                lookup.versions[(by_id[version.model_id].name, version.version)] = version.id
            return lookup
