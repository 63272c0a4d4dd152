"""The consumer API (`vigil api`): kill-switch status for scoring services, and CDS Hooks.

    GET  /healthz                                   liveness and database reachability
    GET  /v1/models/{model}/sites/{site}/status     enabled or suppressed, reason, since, version
    GET  /cds-services                              CDS Hooks discovery
    POST /cds-services/vigil-{model}                patient-view: a card with the latest score,
                                                    or {"cards": []} when the score is suppressed

Everything but /healthz needs a bearer token whose SHA-256 is in VIGIL_API_TOKENS. Status
answers carry an ETag (304 on If-None-Match) and Cache-Control max-age equal to the client's
cache TTL. No answer ever holds an encounter id, an encounter key or a row id of a patient
record: the CDS service hashes the encounter id from the hook context with the pseudonym key
to look up the score, and returns only the score, its time, and the model and version.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from collectors.pseudonym import encounter_key
from incidents.killswitch import NotFound, score_status
from store.db import make_engine
from store.models import Model, ModelVersion, Prediction, Site, table_of, utcnow
from vigil.config import Settings, get_settings

logger = logging.getLogger(__name__)

M = table_of(Model)
P = table_of(Prediction)
S = table_of(Site)
V = table_of(ModelVersion)
SERVICE_PREFIX = "vigil-"


class HookRequest(BaseModel):
    """The part of a CDS Hooks request this service reads."""

    hook: str
    hookInstance: str = ""  # the CDS Hooks field name
    context: dict[str, Any] = Field(default_factory=dict)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_app(*, engine: Engine | None = None, settings: Settings | None = None) -> FastAPI:
    """The ASGI app; tests pass their own engine and settings."""
    settings = settings or get_settings()
    engine = engine or make_engine(settings.database_url)
    tokens = settings.api_token_hashes
    if not tokens:
        logger.error("no API tokens configured (VIGIL_API_TOKENS): every request will be refused")
    app = FastAPI(
        title="Vigil consumer API",
        version="1",
        description="Kill-switch status of clinical prediction models, and CDS Hooks.",
    )
    bearer = HTTPBearer(auto_error=False)

    def consumer(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> str:
        if credentials is not None and credentials.scheme.lower() == "bearer":
            presented = _digest(credentials.credentials)
            for name, expected in tokens.items():
                if hmac.compare_digest(presented, expected):
                    return name
        raise HTTPException(
            status_code=401,
            detail="a valid bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.exception_handler(DBAPIError)
    def _database_down(_request: Request, exc: DBAPIError) -> JSONResponse:
        logger.error("database error: %s", type(exc.orig).__name__ if exc.orig else exc)
        return JSONResponse(
            {"detail": "the Vigil database is unreachable; treat the status as unknown"},
            status_code=503,
            headers={"Cache-Control": "no-store", "Retry-After": "5"},
        )

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except DBAPIError:
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
        return JSONResponse({"status": "ok", "database": "ok"})

    @app.get("/v1/models/{model}/sites/{site}/status")
    def status(
        model: str,
        site: str,
        request: Request,
        version: str | None = None,
        _consumer: str = Depends(consumer),
    ) -> Response:
        try:
            with engine.connect() as conn:
                current = score_status(conn, model=model, site=site, version=version)
        except NotFound as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        headers = {
            "ETag": current.etag,
            "Cache-Control": f"private, max-age={settings.api_cache_seconds}",
        }
        if request.headers.get("if-none-match") == current.etag:
            return Response(status_code=304, headers=headers)
        return JSONResponse(current.to_json(), headers=headers)

    @app.get("/cds-services")
    def discovery(_consumer: str = Depends(consumer)) -> dict[str, Any]:
        with engine.connect() as conn:
            models = conn.execute(sa.select(M.c.name, M.c.title).order_by(M.c.name)).all()
        return {
            "services": [
                {
                    "hook": "patient-view",
                    "id": f"{SERVICE_PREFIX}{row.name}",
                    "title": f"{row.title} (Vigil)",
                    "description": (
                        f"The latest {row.title.lower()} score for the encounter in context, "
                        "unless the score is suppressed by Vigil's kill switch (then no card)."
                    ),
                    "prefetch": {},
                }
                for row in models
            ]
        }

    @app.post("/cds-services/{service_id}")
    def patient_view(
        service_id: str, hook: HookRequest, _consumer: str = Depends(consumer)
    ) -> JSONResponse:
        model_name = service_id.removeprefix(SERVICE_PREFIX)
        with engine.connect() as conn:
            model = conn.execute(sa.select(M).where(M.c.name == model_name)).first()
            if not service_id.startswith(SERVICE_PREFIX) or model is None:
                raise HTTPException(status_code=404, detail=f"no CDS service {service_id!r}")
            if hook.hook != "patient-view":
                raise HTTPException(status_code=400, detail="this service answers patient-view")
            cards = _cards(conn, model, hook.context.get("encounterId"), settings)
        return JSONResponse({"cards": cards}, headers={"Cache-Control": "no-store"})

    return app


def _cards(conn: sa.Connection, model: Any, encounter_id: object, settings: Settings) -> list[Any]:
    """The score card for the encounter, or none: no encounter, no score, expired, suppressed."""
    if not isinstance(encounter_id, str) or not encounter_id:
        return []
    key = encounter_key(encounter_id, settings.pseudonym_key)
    latest = conn.execute(
        sa.select(P.c.score, P.c.threshold, P.c.scored_at, S.c.code, V.c.version)
        .join(S, S.c.id == P.c.site_id)
        .join(V, V.c.id == P.c.version_id)
        .where(
            P.c.model_id == model.id,
            P.c.encounter_key == key,
            P.c.status == "ok",
            P.c.score.is_not(None),
        )
        .order_by(P.c.scored_at.desc())
        .limit(1)
    ).first()
    if latest is None:
        return []
    if utcnow() - latest.scored_at > timedelta(hours=model.horizon_hours):
        return []  # the score no longer predicts anything about now
    try:
        current = score_status(conn, model=model.name, site=latest.code, version=latest.version)
    except NotFound:
        return []
    if not current.enabled:
        return []
    above = latest.threshold is not None and latest.score >= latest.threshold
    summary = f"{model.title}: {latest.score:.1%} risk" + (" — above threshold" if above else "")
    scored = latest.scored_at.strftime("%Y-%m-%d %H:%M UTC")
    threshold = f"; alert threshold {latest.threshold:.1%}" if latest.threshold is not None else ""
    return [
        {
            "uuid": str(uuid.uuid4()),
            "summary": summary[:140],
            "indicator": "warning" if above else "info",
            "detail": (
                f"Scored {scored} by {model.name} {latest.version}{threshold}. "
                "Monitored by Vigil; the score is withdrawn here if it is switched off."
            ),
            "source": {"label": f"Vigil · {model.name} {latest.version}"},
        }
    ]
