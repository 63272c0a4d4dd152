"""Data contracts: one pydantic model per input record, and the quarantine reasons they give.

A record that fails its contract is not an exception to the batch: `validate_line` turns the
failure into a `ContractViolation` with a stable reason code, and the collector quarantines it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# Clocks at the sources are not perfect; a timestamp this far ahead of "now" is still accepted.
ALLOWED_CLOCK_SKEW = timedelta(minutes=5)
MAX_LINE_BYTES = 64 * 1024


def _aware_utc(value: datetime, info: ValidationInfo) -> datetime:
    if value.tzinfo is None:
        raise PydanticCustomError(
            "naive_timestamp", "timestamp has no time zone; send UTC with 'Z' or an offset"
        )
    value = value.astimezone(UTC)
    now = (info.context or {}).get("now")
    if now is not None and value > now + ALLOWED_CLOCK_SKEW:
        raise PydanticCustomError(
            "future_timestamp", "timestamp is later than now plus the allowed clock skew"
        )
    return value


UTCTimestamp = Annotated[datetime, AfterValidator(_aware_utc)]
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)


class PredictionRecord(_Record):
    """A score logged by the scoring service (predictions-*.jsonl)."""

    prediction_id: Annotated[str, Field(min_length=1, max_length=128)]
    model: Code
    model_version: Code
    site: Code
    unit: Annotated[str, Field(max_length=32)] = ""
    encounter_id: Annotated[str, Field(min_length=1, max_length=128)]
    trigger_at: UTCTimestamp
    scored_at: UTCTimestamp
    delivered_at: UTCTimestamp | None = None
    score: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    threshold: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    alert: bool = False
    arm: Literal["control", "canary", "shadow"] = "control"
    status: Literal["ok", "error", "timeout", "suppressed"] = "ok"
    inputs: dict[str, float | None] | None = None

    @field_validator("inputs")
    @classmethod
    def _finite_inputs(
        cls, value: dict[str, float | None] | None
    ) -> dict[str, float | None] | None:
        if value and any(v is not None and not math.isfinite(v) for v in value.values()):
            raise PydanticCustomError("out_of_range", "inputs must be finite numbers or null")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PredictionRecord:
        if self.status == "ok" and self.score is None:
            raise PydanticCustomError("missing_field", "status ok needs a score")
        if self.scored_at < self.trigger_at - ALLOWED_CLOCK_SKEW:
            raise PydanticCustomError("time_order", "scored_at is before trigger_at")
        if (
            self.delivered_at is not None
            and self.delivered_at < self.scored_at - ALLOWED_CLOCK_SKEW
        ):
            raise PydanticCustomError("time_order", "delivered_at is before scored_at")
        return self


class OutcomeRecord(_Record):
    """An outcome that happened to an encounter (outcomes-*.jsonl)."""

    encounter_id: Annotated[str, Field(min_length=1, max_length=128)]
    site: Code
    outcome: Code
    outcome_at: UTCTimestamp
    recorded_at: UTCTimestamp

    @model_validator(mode="after")
    def _consistent(self) -> OutcomeRecord:
        if self.recorded_at < self.outcome_at - ALLOWED_CLOCK_SKEW:
            raise PydanticCustomError("time_order", "recorded_at is before outcome_at")
        return self


class EncounterRecord(_Record):
    """An encounter closure: the patient was discharged (encounters-*.jsonl)."""

    encounter_id: Annotated[str, Field(min_length=1, max_length=128)]
    site: Code
    unit: Annotated[str, Field(max_length=32)] = ""
    admitted_at: UTCTimestamp | None = None
    discharged_at: UTCTimestamp
    recorded_at: UTCTimestamp

    @model_validator(mode="after")
    def _consistent(self) -> EncounterRecord:
        if self.admitted_at is not None and self.discharged_at < self.admitted_at:
            raise PydanticCustomError("time_order", "discharged_at is before admitted_at")
        return self


class HeartbeatRecord(_Record):
    """An interface engine's report on one feed at one site (heartbeats-*.jsonl)."""

    feed: Code
    site: Code
    last_event_at: UTCTimestamp | None = None
    received_at: UTCTimestamp
    messages: Annotated[int, Field(ge=0)] = 0
    errors: Annotated[int, Field(ge=0)] = 0


R = TypeVar("R", bound=_Record)


@dataclass(frozen=True)
class ContractViolation:
    """Why a row was refused: a stable reason code and a human-readable detail."""

    reason: str
    detail: str


# pydantic error types → quarantine reason codes
_REASONS = {
    "json_invalid": "invalid_json",
    "json_type": "invalid_json",
    "model_type": "not_an_object",
    "model_attributes_type": "not_an_object",
    "missing": "missing_field",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "greater_than": "out_of_range",
    "less_than": "out_of_range",
    "finite_number": "out_of_range",
    "literal_error": "invalid_value",
    "string_too_long": "invalid_value",
    "string_too_short": "missing_field",
    "string_pattern_mismatch": "invalid_value",
}


def violation_from(error: ValidationError) -> ContractViolation:
    first = error.errors(include_url=False, include_input=False)[0]
    kind = str(first["type"])
    if kind in _REASONS:
        reason = _REASONS[kind]
    elif kind.endswith(("_parsing", "_type")):
        reason = "invalid_type"
    else:  # our own PydanticCustomError types are already reason codes
        reason = kind
    where = ".".join(str(p) for p in first["loc"])
    return ContractViolation(reason, f"{where}: {first['msg']}" if where else str(first["msg"]))


def validate_line(model: type[R], line: bytes, *, now: datetime) -> R | ContractViolation:
    """Parse one JSON line against its contract."""
    if len(line) > MAX_LINE_BYTES:
        return ContractViolation("line_too_long", f"{len(line)} bytes > {MAX_LINE_BYTES}")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ContractViolation("invalid_encoding", f"not UTF-8: {exc.reason} at {exc.start}")
    try:
        return model.model_validate_json(text, context={"now": now})
    except ValidationError as exc:
        return violation_from(exc)
