"""The fast lane for prediction log lines: decoded in C by msgspec, checked by the same rules.

`PredictionRecord` (pydantic) is the contract. This lane takes a strict subset of what the
contract accepts — the fields in their own JSON types (no numbers as strings, no 0/1 for
booleans), codes and identifiers without surrounding whitespace, timestamps as RFC 3339 with
an upper-case `T`, whole seconds or up to six decimals and `Z` or a `±hh:mm` offset — and for
those lines yields exactly the values the contract would. Any other line, and any line that
breaks a rule, gets None and goes through the contract, so what is quarantined, and why, is
the contract's own answer. The lane also keeps the UTC store text of each timestamp, cut
straight from the `Z` form, which spares formatting datetimes again.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from collectors.bulkload import utc_text
from collectors.contracts import prediction_fault

_Code = Annotated[str, Meta(min_length=1, max_length=64)]
_Identifier = Annotated[str, Meta(min_length=1, max_length=128)]
_Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
_CODE = re.compile(r"[A-Za-z0-9_.\-]+").fullmatch
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
).fullmatch
_REMEMBERED = 10_000  # distinct codes and input names remembered as checked
_fromisoformat = datetime.fromisoformat


class _PredictionLine(msgspec.Struct, gc=False):
    """A prediction line's JSON as msgspec reads it: the contract's fields, timestamps as text."""

    prediction_id: _Identifier
    model: _Code
    model_version: _Code
    site: _Code
    encounter_id: _Identifier
    trigger_at: str
    scored_at: str
    unit: Annotated[str, Meta(max_length=32)] = ""
    delivered_at: str | None = None
    score: _Probability | None = None
    threshold: _Probability | None = None
    alert: bool = False
    arm: Literal["control", "canary", "shadow"] = "control"
    status: Literal["ok", "error", "timeout", "suppressed"] = "ok"
    inputs: dict[str, float | None] | None = None


class PredictionValues(msgspec.Struct, gc=False):
    """A prediction that met its contract in the fast lane: the attributes of a
    `PredictionRecord`, plus each timestamp as UTC store text (`utc_text`)."""

    prediction_id: str
    model: str
    model_version: str
    site: str
    encounter_id: str
    trigger_at: datetime
    scored_at: datetime
    unit: str
    delivered_at: datetime | None
    score: float | None
    threshold: float | None
    alert: bool
    arm: str
    status: str
    inputs: dict[str, float | None] | None
    trigger_text: str
    scored_text: str
    delivered_text: str | None


def _moment(text: str) -> tuple[datetime, str] | None:
    """A timestamp in the lane's form as (aware datetime, UTC store text); None otherwise."""
    # The common form, UTC to the second (YYYY-MM-DDTHH:MM:SSZ): cheaper to check than the
    # pattern. Its separators are every third character from the fifth.
    if len(text) == 20 and text[4::3] == "--T::Z" and text.isascii():
        try:  # the digits and their ranges (no hour 24, no second 60, no 30 February)
            moment = _fromisoformat(text)
        except ValueError:
            return None
        return moment, f"{text[:10]} {text[11:19]}.000000"
    if _TIMESTAMP(text) is None:
        return None
    try:
        moment = _fromisoformat(text)
    except ValueError:  # a day the month does not have
        return None
    if text[-1] == "Z":  # with a fraction (without one it took the common form above)
        return moment, f"{text[:10]} {text[11:-1]:0<15}"
    return moment.astimezone(UTC), utc_text(moment)


class PredictionLines:
    """Decodes prediction lines in the fast lane; one per reader (it remembers checked codes)."""

    def __init__(self) -> None:
        self._decode = msgspec.json.Decoder(_PredictionLine).decode
        self._codes: set[str] = set()
        self._input_names: set[str] = set()

    def __call__(self, line: bytes, latest: datetime | None) -> PredictionValues | None:
        """The line's values, or None when only the contract can judge it."""
        try:
            wire = self._decode(line)
        except (msgspec.DecodeError, ValueError):  # a ValidationError, bytes that are not UTF-8
            return None
        codes = self._codes
        model, version, site = wire.model, wire.model_version, wire.site
        if not (model in codes and version in codes and site in codes):
            if not (_CODE(model) and _CODE(version) and _CODE(site)):
                return None
            if len(codes) > _REMEMBERED:
                codes.clear()
            codes.update((model, version, site))
        # The contract strips surrounding whitespace; the lane takes only what needs none.
        prediction_id, encounter_id, unit = wire.prediction_id, wire.encounter_id, wire.unit
        if (
            prediction_id != prediction_id.strip()
            or encounter_id != encounter_id.strip()
            or unit != unit.strip()
        ):
            return None
        inputs = wire.inputs
        if inputs and not self._input_names.issuperset(inputs):
            if any(name != name.strip() for name in inputs):
                return None
            if len(self._input_names) > _REMEMBERED:
                self._input_names.clear()
            self._input_names.update(inputs)
        trigger = _moment(wire.trigger_at)
        scored = _moment(wire.scored_at)
        if trigger is None or scored is None:
            return None
        if wire.delivered_at is None:
            delivered_at = delivered_text = None
        else:
            delivered = _moment(wire.delivered_at)
            if delivered is None:
                return None
            delivered_at, delivered_text = delivered
        if (
            prediction_fault(trigger[0], scored[0], delivered_at, wire.score, wire.status, latest)
            is not None
        ):
            return None
        return PredictionValues(
            prediction_id,
            model,
            version,
            site,
            encounter_id,
            trigger[0],
            scored[0],
            unit,
            delivered_at,
            wire.score,
            wire.threshold,
            wire.alert,
            wire.arm,
            wire.status,
            inputs,
            trigger[1],
            scored[1],
            delivered_text,
        )
