"""Data contracts: one pydantic model per input record, and the quarantine reasons they give.

The contracts are pydantic dataclasses: validated in pydantic-core straight from JSON bytes
or from Python values (CSV cells, Parquet columns, mapped FHIR and HL7 fields), with the
cross-field rules in one `after` validator each. A record that fails its contract is not an
exception to the batch: `validate_json` / `validate_python` turn the failure into a
`ContractViolation` with a stable reason code (`REASONS`), and the collector quarantines it.

`docs/contracts.md` is generated from these classes (`collectors/docs.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic import dataclasses as pydantic_dataclasses
from pydantic_core import PydanticCustomError

from vigil.config import get_settings

# Clocks at the sources are not perfect; a timestamp this far ahead of "now" is still accepted,
# and two timestamps of one record may be this far out of order.
ALLOWED_CLOCK_SKEW = timedelta(minutes=5)
# The longest line the readers accept (VIGIL_MAX_LINE_BYTES, default 64 KiB), read once when the
# collectors are imported, so every reader and helper process of a run applies the same limit.
MAX_LINE_BYTES = get_settings().max_line_bytes


def size_text(size: int) -> str:
    """A byte count as people read it: whole KiB when it is one, else bytes."""
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} bytes"


# Every reason a row can be quarantined for, and what it means (docs/contracts.md lists them).
REASONS: dict[str, str] = {
    "invalid_json": "the line is not valid JSON",
    "not_an_object": "the JSON value is not an object",
    "empty_line": "a blank line",
    "truncated_line": "the last line of the file ends mid-record",
    "line_too_long": f"a line longer than {size_text(MAX_LINE_BYTES)}",
    "invalid_encoding": "bytes that are not UTF-8",
    "wrong_column_count": "a CSV row with more cells than the header has columns",
    "invalid_csv": "a CSV record the csv parser cannot read (unbalanced quotes, a huge cell)",
    "missing_field": "a required field is absent or empty",
    "invalid_type": "a value that is not of the field's type (number, boolean, timestamp, ...)",
    "invalid_value": "a value outside the field's allowed set, pattern or length",
    "out_of_range": "a number outside the field's range (a score outside [0, 1], ...)",
    "not_finite": "NaN or infinity where a number is required",
    "naive_timestamp": "a timestamp without a time zone",
    "future_timestamp": "a timestamp later than now plus the allowed clock skew",
    "time_order": "timestamps of one record in an impossible order",
    "unknown_site": "a site that is not in the registry",
    "unknown_model": "a model that is not in the registry",
    "unknown_version": "a model version that is not in the registry",
    "unknown_outcome": "an outcome no registered model predicts",
    "duplicate_conflict": "a prediction_id already stored with different content (kept the first)",
    "expired": "a prediction scored before the retention horizon (its month was removed)",
    "wrong_resource_type": "a FHIR resource that is not a RiskAssessment",
    "invalid_fhir": "a resource that fails FHIR R4 validation (fhir.resources)",
    "missing_msh": "HL7 segments before any MSH segment",
    "invalid_segment": "an HL7 segment whose identifier is not three letters or digits",
    "missing_segment": "an HL7 message without a segment its type requires (EVN for ADT)",
    "invalid_hl7": "an HL7 message the hl7 parser cannot read",
    "unsupported_message": "an HL7 message that is not ADT",
    "invalid_timestamp": "an HL7 timestamp that is not a valid DTM to the minute",
    "truncated_message": "an MLLP frame that is not closed before the end of the file",
    "framing_error": "bytes outside MLLP frames",
}


def validation_context(now: datetime) -> dict[str, Any]:
    """What the contracts' rules need to know at validation time: the latest acceptable time."""
    return {"latest": now + ALLOWED_CLOCK_SKEW}


def _check_not_future(info: ValidationInfo, *moments: datetime | None) -> None:
    latest = info.context["latest"] if info.context else None
    if latest is None:
        return
    for moment in moments:
        if moment is not None and moment > latest:
            raise PydanticCustomError(
                "future_timestamp", "timestamp is later than now plus the allowed clock skew"
            )


def _check_order(earlier: datetime | None, later: datetime | None, message: str) -> None:
    if earlier is not None and later is not None and later < earlier - ALLOWED_CLOCK_SKEW:
        raise PydanticCustomError("time_order", message)


Timestamp = AwareDatetime
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
Identifier = Annotated[str, Field(min_length=1, max_length=128)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
InputValue = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]

# Records are frozen, slotted pydantic dataclasses: the cheapest validated object pydantic builds.
_CONFIG = ConfigDict(extra="ignore", str_strip_whitespace=True)


@pydantic_dataclasses.dataclass(frozen=True, slots=True, config=_CONFIG)
class PredictionRecord:
    """A score logged by the scoring service."""

    prediction_id: Annotated[
        Identifier, Field(description="Unique id of the score at the source; the natural key.")
    ]
    model: Annotated[Code, Field(description="Registered model name.")]
    model_version: Annotated[Code, Field(description="Registered version of the model.")]
    site: Annotated[Code, Field(description="Registered site code.")]
    encounter_id: Annotated[
        Identifier,
        Field(description="Encounter id; stored only as an HMAC-SHA256 key, never as given."),
    ]
    trigger_at: Annotated[
        Timestamp, Field(description="The clinical event that caused the scoring.")
    ]
    scored_at: Annotated[Timestamp, Field(description="When the model produced the score.")]
    unit: Annotated[str, Field(max_length=32, description="Ward or unit code.")] = ""
    delivered_at: Annotated[
        Timestamp | None,
        Field(description="When the score reached the EHR; latency = delivered_at - trigger_at."),
    ] = None
    score: Annotated[
        Probability | None,
        Field(
            description="Predicted probability; required when status is ok.",
            json_schema_extra={"unit": "probability"},
        ),
    ] = None
    threshold: Annotated[
        Probability | None,
        Field(description="Alert threshold in force.", json_schema_extra={"unit": "probability"}),
    ] = None
    alert: Annotated[bool, Field(description="Whether an alert fired.")] = False
    arm: Annotated[Literal["control", "canary", "shadow"], Field(description="Deployment arm.")] = (
        "control"
    )
    status: Annotated[
        Literal["ok", "error", "timeout", "suppressed"],
        Field(description="Outcome of the scoring call."),
    ] = "ok"
    inputs: Annotated[
        dict[str, InputValue | None] | None,
        Field(description="Named model inputs watched for drift (finite numbers or null)."),
    ] = None

    timing: ClassVar[tuple[str, ...]] = (
        "trigger_at, scored_at and delivered_at may be at most the clock skew after now",
        "scored_at may not be before trigger_at, nor delivered_at before scored_at, by more "
        "than the clock skew",
        "a late delivery is not refused: delivered_at - trigger_at is the latency the SLO "
        "monitor measures",
    )

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> PredictionRecord:
        latest = info.context["latest"] if info.context else None
        fault = prediction_fault(
            self.trigger_at, self.scored_at, self.delivered_at, self.score, self.status, latest
        )
        if fault is not None:
            raise PydanticCustomError(*fault)
        return self


def prediction_fault(
    trigger: datetime,
    scored: datetime,
    delivered: datetime | None,
    score: float | None,
    status: str,
    latest: datetime | None,
) -> tuple[str, str] | None:
    """The cross-field rules of a prediction: None, or the reason code and message it breaks.

    Written out rather than through the helpers: this runs for every logged score.
    """
    if latest is not None and (
        trigger > latest or scored > latest or (delivered is not None and delivered > latest)
    ):
        return "future_timestamp", "timestamp is later than now plus the allowed clock skew"
    if score is None and status == "ok":
        return "missing_field", "score: status ok needs a score"
    if scored < trigger - ALLOWED_CLOCK_SKEW:
        return "time_order", "scored_at is before trigger_at"
    if delivered is not None and delivered < scored - ALLOWED_CLOCK_SKEW:
        return "time_order", "delivered_at is before scored_at"
    return None


@pydantic_dataclasses.dataclass(frozen=True, slots=True, config=_CONFIG)
class OutcomeRecord:
    """An outcome that happened to an encounter: the positive labels."""

    encounter_id: Annotated[
        Identifier, Field(description="Encounter id; stored only as an HMAC-SHA256 key.")
    ]
    site: Annotated[Code, Field(description="Registered site code.")]
    outcome: Annotated[Code, Field(description="Outcome name a registered model predicts.")]
    outcome_at: Annotated[Timestamp, Field(description="When the outcome happened.")]
    recorded_at: Annotated[Timestamp, Field(description="When it was recorded (label lag).")]

    timing: ClassVar[tuple[str, ...]] = (
        "outcome_at and recorded_at may be at most the clock skew after now",
        "recorded_at may not be before outcome_at by more than the clock skew",
        "any label lag is accepted; a label recorded after a prediction settled negative "
        "turns it positive and its rollup hours are rebuilt",
    )

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> OutcomeRecord:
        _check_not_future(info, self.outcome_at, self.recorded_at)
        _check_order(self.outcome_at, self.recorded_at, "recorded_at is before outcome_at")
        return self


@pydantic_dataclasses.dataclass(frozen=True, slots=True, config=_CONFIG)
class EncounterRecord:
    """An encounter closure (discharge): it settles the in-stay negatives."""

    encounter_id: Annotated[
        Identifier, Field(description="Encounter id; stored only as an HMAC-SHA256 key.")
    ]
    site: Annotated[Code, Field(description="Registered site code.")]
    discharged_at: Annotated[Timestamp, Field(description="When the encounter closed.")]
    recorded_at: Annotated[Timestamp, Field(description="When the closure was recorded.")]
    unit: Annotated[str, Field(max_length=32, description="Discharging unit.")] = ""
    admitted_at: Annotated[Timestamp | None, Field(description="Admission time.")] = None

    timing: ClassVar[tuple[str, ...]] = (
        "all timestamps may be at most the clock skew after now",
        "discharged_at may not be before admitted_at, nor recorded_at before discharged_at, "
        "by more than the clock skew",
    )

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> EncounterRecord:
        _check_not_future(info, self.admitted_at, self.discharged_at, self.recorded_at)
        _check_order(self.admitted_at, self.discharged_at, "discharged_at is before admitted_at")
        _check_order(self.discharged_at, self.recorded_at, "recorded_at is before discharged_at")
        return self


@pydantic_dataclasses.dataclass(frozen=True, slots=True, config=_CONFIG)
class HeartbeatRecord:
    """An interface engine's report on one feed at one site."""

    feed: Annotated[Code, Field(description="Feed name (ADT, LAB, VITALS, ...); upper-cased.")]
    site: Annotated[Code, Field(description="Registered site code.")]
    received_at: Annotated[Timestamp, Field(description="When the engine made the report.")]
    last_event_at: Annotated[
        Timestamp | None, Field(description="Event time of the feed's latest message.")
    ] = None
    messages: Annotated[
        Count,
        Field(
            description="Messages since the last report.", json_schema_extra={"unit": "messages"}
        ),
    ] = 0
    errors: Annotated[
        Count,
        Field(
            description="Messages in error since the last report.",
            json_schema_extra={"unit": "messages"},
        ),
    ] = 0

    timing: ClassVar[tuple[str, ...]] = (
        "received_at and last_event_at may be at most the clock skew after now",
        "last_event_at may not be after received_at by more than the clock skew; an old "
        "last_event_at is the staleness the freshness monitor measures, not a fault",
    )

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> HeartbeatRecord:
        _check_not_future(info, self.last_event_at, self.received_at)
        _check_order(self.last_event_at, self.received_at, "received_at is before last_event_at")
        return self


@pydantic_dataclasses.dataclass(frozen=True, slots=True, config=_CONFIG)
class AdtMessage:
    """One HL7 v2 ADT message, reduced to what feed freshness needs (no patient data)."""

    sending_facility: Annotated[
        Code, Field(description="MSH-4.1, the registered site code of the sender.")
    ]
    message_type: Annotated[Literal["ADT"], Field(description="MSH-9.1; only ADT is accepted.")]
    trigger_event: Annotated[str, Field(max_length=3, description="MSH-9.2, e.g. A01.")]
    control_id: Annotated[Identifier, Field(description="MSH-10, the message control id.")]
    message_at: Annotated[Timestamp, Field(description="MSH-7, when the message was sent.")]
    event_at: Annotated[
        Timestamp | None,
        Field(description="EVN-2, when the event was recorded; MSH-7 when absent."),
    ] = None

    timing: ClassVar[tuple[str, ...]] = (
        "MSH-7 and EVN-2 need at least minute precision; without a UTC offset they are read "
        "in the sending site's registered time zone",
        "MSH-7 and EVN-2 may be at most the clock skew after now",
        "the feed's last event time is the latest EVN-2 (else MSH-7) of its accepted messages",
    )

    @property
    def feed(self) -> str:
        return self.message_type

    @property
    def last_event_at(self) -> datetime:
        return self.event_at or self.message_at

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> AdtMessage:
        _check_not_future(info, self.message_at, self.event_at)
        return self


R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ContractViolation:
    """Why a row was refused: a stable reason code (a key of REASONS) and a detail."""

    reason: str
    detail: str


# pydantic error types → quarantine reason codes
_REASONS = {
    "json_invalid": "invalid_json",
    "json_type": "invalid_json",
    "model_type": "not_an_object",
    "model_attributes_type": "not_an_object",
    "dataclass_type": "not_an_object",
    "dataclass_args_type": "not_an_object",
    "dict_type": "invalid_type",
    "missing": "missing_field",
    "missing_argument": "missing_field",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "greater_than": "out_of_range",
    "less_than": "out_of_range",
    "finite_number": "not_finite",
    "timezone_aware": "naive_timestamp",
    "literal_error": "invalid_value",
    "string_too_long": "invalid_value",
    "string_too_short": "missing_field",
    "string_pattern_mismatch": "invalid_value",
}


def violation_from(error: ValidationError) -> ContractViolation:
    """The first error of a failed validation as a reason code and a detail with no input."""
    first = error.errors(include_url=False, include_input=False, include_context=False)[0]
    kind = str(first["type"])
    if kind in _REASONS:
        reason = _REASONS[kind]
    elif kind in REASONS:  # our own PydanticCustomError types are already reason codes
        reason = kind
    else:
        reason = "invalid_type"
    where = ".".join(str(p) for p in first["loc"])
    return ContractViolation(reason, f"{where}: {first['msg']}" if where else str(first["msg"]))


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def adapter(model: type[R]) -> TypeAdapter[R]:
    """The validator of a contract, built once."""
    found = _ADAPTERS.get(model)
    if found is None:
        found = _ADAPTERS[model] = TypeAdapter(model)
    return found


def validate_json(model: type[R], line: bytes, context: dict[str, Any]) -> R | ContractViolation:
    """Parse one JSON document (a line) against its contract (`context` from
    `validation_context`)."""
    if len(line) > MAX_LINE_BYTES:
        return ContractViolation("line_too_long", f"{len(line)} bytes > {MAX_LINE_BYTES}")
    try:
        return adapter(model).validate_json(line, context=context)
    except ValidationError as exc:
        violation = violation_from(exc)
    if violation.reason == "invalid_json":
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return ContractViolation("invalid_encoding", f"not UTF-8: {exc.reason} at {exc.start}")
    return violation


def validate_python(
    model: type[R], values: dict[str, Any], context: dict[str, Any]
) -> R | ContractViolation:
    """Validate already-split values (CSV cells, Parquet columns, mapped fields)."""
    try:
        return adapter(model).validate_python(values, context=context)
    except ValidationError as exc:
        return violation_from(exc)
