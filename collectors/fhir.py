"""FHIR R4 RiskAssessment resources from a Bulk FHIR export (NDJSON) as prediction records.

Each line is one resource, validated with fhir.resources (its R4B models: RiskAssessment is the
same in R4 and R4B), then mapped onto the prediction contract and validated against it too.
`MAPPING` is the documented mapping (docs/contracts.md prints it).
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.riskassessment import RiskAssessment
from pydantic import ValidationError
from pydantic_core import from_json

from collectors.contracts import (
    MAX_LINE_BYTES,
    ContractViolation,
    PredictionRecord,
    validate_python,
    violation_from,
)
from collectors.formats import RAW_LIMIT, REDACTED, Tail, TextLines

PREDICTION_ID_SYSTEM = "urn:vigil:prediction-id"
MODEL_SYSTEM = "urn:vigil:model"
EXTENSION = "urn:vigil:"  # + site, unit, trigger-at, delivered-at, threshold, alert, arm, ...

# (prediction field, where it comes from in the resource)
MAPPING: tuple[tuple[str, str], ...] = (
    (
        "prediction_id",
        f"`identifier` with system `{PREDICTION_ID_SYSTEM}` (value), else the resource `id`",
    ),
    ("model", f"`method.coding` with system `{MODEL_SYSTEM}`: `code`"),
    ("model_version", "the same coding's `version`"),
    ("site", f"extension `{EXTENSION}site` (`valueCode`)"),
    ("unit", f"extension `{EXTENSION}unit` (`valueString`), optional"),
    (
        "encounter_id",
        "`encounter.reference` (`Encounter/<id>`, relative or absolute); `subject` is ignored",
    ),
    ("scored_at", "`occurrenceDateTime` (a date and time with a time zone)"),
    (
        "trigger_at",
        f"extension `{EXTENSION}trigger-at` (`valueDateTime`), else `occurrenceDateTime`",
    ),
    ("delivered_at", f"extension `{EXTENSION}delivered-at` (`valueDateTime`), optional"),
    ("score", "`prediction[0].probabilityDecimal`"),
    ("threshold", f"extension `{EXTENSION}threshold` (`valueDecimal`), optional"),
    ("alert", f"extension `{EXTENSION}alert` (`valueBoolean`), default false"),
    ("arm", f"extension `{EXTENSION}arm` (`valueCode`), default control"),
    (
        "status",
        f"extension `{EXTENSION}status` (`valueCode`), else from `status`: final, amended, "
        "corrected, preliminary → ok; cancelled → suppressed; any other status is refused",
    ),
    (
        "inputs",
        f"extension `{EXTENSION}inputs` with one sub-extension per input: `url` = the input's "
        "name, `valueDecimal` = its value (absent: null)",
    ),
)

_STATUS = {
    "final": "ok",
    "amended": "ok",
    "corrected": "ok",
    "preliminary": "ok",
    "cancelled": "suppressed",
}
_SCALARS = {
    "site": "valueCode",
    "unit": "valueString",
    "trigger-at": "valueDateTime",
    "delivered-at": "valueDateTime",
    "threshold": "valueDecimal",
    "alert": "valueBoolean",
    "arm": "valueCode",
    "status": "valueCode",
}
# Keys whose values may identify the patient: references, names, identifier values, narrative.
_IDENTIFYING = re.compile(
    r'("(?:reference|display|value|text|div|family|given)"\s*:\s*)(?:"(?:[^"\\]|\\.)*(?:"|$)|\[[^\]]*(?:\]|$))'
)


def _number(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _encounter_id(reference: str | None) -> str | None:
    if not reference or "Encounter/" not in reference:
        return None
    return reference.rsplit("Encounter/", 1)[1].split("/", 1)[0] or None


def prediction_values(resource: RiskAssessment) -> dict[str, Any] | ContractViolation:
    """The prediction contract's fields, read from a validated RiskAssessment."""
    values: dict[str, Any] = {}
    for identifier in resource.identifier or []:
        if identifier.system == PREDICTION_ID_SYSTEM and identifier.value:
            values["prediction_id"] = identifier.value
    if "prediction_id" not in values and resource.id:
        values["prediction_id"] = resource.id
    codings = resource.method.coding if resource.method and resource.method.coding else []
    for coding in codings:
        if coding.system == MODEL_SYSTEM:
            values["model"], values["model_version"] = coding.code, coding.version
    for extension in resource.extension or []:
        name = extension.url.removeprefix(EXTENSION) if extension.url else ""
        if name in _SCALARS:
            value = getattr(extension, _SCALARS[name])
            values[name.replace("-", "_")] = _number(value) if isinstance(value, Decimal) else value
        elif name == "inputs":
            values["inputs"] = {
                sub.url: _number(sub.valueDecimal) for sub in extension.extension or []
            }
    encounter = _encounter_id(resource.encounter.reference if resource.encounter else None)
    if encounter is not None:
        values["encounter_id"] = encounter
    occurrence = resource.occurrenceDateTime
    if occurrence is not None:
        if not isinstance(occurrence, datetime):
            return ContractViolation(
                "invalid_type", "occurrenceDateTime: a date without a time of day"
            )
        values["scored_at"] = occurrence
        values.setdefault("trigger_at", occurrence)
    if resource.prediction:
        values["score"] = _number(resource.prediction[0].probabilityDecimal)
    if "status" not in values:
        status = _STATUS.get(resource.status or "")
        if status is None:
            return ContractViolation("invalid_value", f"status: {resource.status!r} is not a score")
        values["status"] = status
    return values


class RiskAssessmentNdjson(TextLines):
    """Bulk FHIR NDJSON of RiskAssessment resources → `PredictionRecord`s."""

    def decode(
        self, payload: bytes, context: dict[str, Any]
    ) -> PredictionRecord | ContractViolation:
        if not payload or payload.isspace():
            return ContractViolation("empty_line", "blank line")
        if len(payload) > MAX_LINE_BYTES:
            return ContractViolation("line_too_long", f"{len(payload)} bytes > {MAX_LINE_BYTES}")
        try:
            document = from_json(payload)
        except ValueError as exc:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError as bad:
                return ContractViolation("invalid_encoding", f"not UTF-8: {bad.reason}")
            if type(payload) is Tail:
                return ContractViolation("truncated_line", "the last line ends mid-record")
            return ContractViolation("invalid_json", str(exc))
        if not isinstance(document, dict):
            return ContractViolation("not_an_object", "a resource must be a JSON object")
        kind = document.get("resourceType")
        if kind != "RiskAssessment":
            shown = kind if isinstance(kind, str) and kind.isalnum() else "no resourceType"
            return ContractViolation(
                "wrong_resource_type", f"{str(shown)[:40]}, expected RiskAssessment"
            )
        try:
            resource = RiskAssessment.model_validate(document)
        except ValidationError as exc:
            return ContractViolation("invalid_fhir", violation_from(exc).detail)
        values = prediction_values(resource)
        if isinstance(values, ContractViolation):
            return values
        return validate_python(PredictionRecord, values, context)

    def redact(self, payload: bytes) -> str:
        text = payload[: RAW_LIMIT * 8].decode("utf-8", errors="replace")
        return _IDENTIFYING.sub(rf'\1"{REDACTED}"', text)[:RAW_LIMIT]
