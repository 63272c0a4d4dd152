"""Deterministic synthetic demo data for Vigil.

The generator simulates a small hospital network running two clinical prediction
models (``deterioration`` every 4 h on the ward, ``readmission`` once at discharge)
and writes what the collectors ingest: prediction logs, positive outcome labels,
encounter closures and interface-engine heartbeats, as JSON Lines.

Design notes
------------
* **Absolute time anchoring.**  All randomness is drawn from ``numpy`` Generators
  keyed by ``(seed, stream, site, UTC day)``, so an encounter admitted on a given
  day at a given site is the same patient whatever ``end``, ``days`` or ``start``
  are.  This makes live "minute drops" coherent: the records in ``[a, b)`` of the
  world ending at ``b`` equal those of the world ending at ``c > b`` (as long as
  the window does not overlap an incident that moved because ``end``'s date moved).
* **Incidents** are defined relative to ``end`` (see :func:`_incident_windows` and
  ``seed_data/README.md``) and change scores, thresholds, latencies or inputs of
  the affected rows only; they never consume random numbers, so the rest of the
  world is unchanged by them.
* **Calibration.**  The deterioration model sees a per-encounter hazard
  ``lam_hat``; the truth is ``lam_true = lam_hat * exp(eps - s^2/2)`` with
  ``eps ~ N(0, 0.3)`` (equivalently ``lam_hat = lam_true * exp(-eps + s^2/2)``), so
  ``E[lam_true | lam_hat] = lam_hat`` and the score
  ``p = 1 - exp(-lam_hat * min(12 h, planned_discharge - t))`` is calibrated for
  "event within 12 h of scoring (or before discharge)".  The readmission score is
  the true probability of the Bernoulli outcome.

Only numpy, the standard library and PyYAML are used; the module does no I/O
other than reading the registry and writing the output files.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import yaml

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
BoolArr = npt.NDArray[np.bool_]

DAY: Final = 86_400
HOUR: Final = 3_600
MINUTE: Final = 60

# --- hospital ---------------------------------------------------------------------
OCCUPANCY: Final = 0.85
LOS_MEAN_DAYS: Final = 4.5
LOS_SIGMA: Final = 0.8  # sd of log length of stay
LOS_MIN_HOURS: Final = 6.0
LOS_MAX_DAYS: Final = 45.0
#: admissions simulated before the history starts (covers every stay in progress)
WARMUP_DAYS: Final = 48
#: no record's own time is more than this many days after its encounter's admission
#: (45 d stay + 30 d readmission window + 72 h recording lag, with margin)
RECORD_REACH_DAYS: Final = 80
SITE_EFFECT_SD: Final = 0.15

# --- deterioration -------------------------------------------------------------------
DET_EVENT_RATE: Final = 0.03  # share of hospitalisations with the event
DET_LOG_SD: Final = 1.2  # spread of the model's log hazard across encounters
DET_NOISE_SD: Final = 0.3  # eps: what the model cannot see
DET_RECORD_LAG_HOURS: Final = 36.0

# --- readmission ---------------------------------------------------------------------
READM_RATE: Final = 0.14
READM_LOGIT_SD: Final = 0.9
READM_RECORD_LAG_HOURS: Final = 72.0

# --- scoring service -----------------------------------------------------------------
DELAY_MEDIAN_S: Final = 60.0
DELAY_SIGMA: Final = 0.6
ERROR_RATE: Final = 0.003
TIMEOUT_RATE: Final = 0.002
ENCOUNTER_RECORD_LAG_HOURS: Final = 2.0

# --- incidents -----------------------------------------------------------------------
DRIFT_SITE: Final = "LKS"
DRIFT_LOGIT_SHIFT: Final = -0.9
OUTAGE_SITE: Final = "RVH"
OUTAGE_FEED: Final = "LAB"
LATENCY_SITE: Final = "UMC"
LATENCY_DELAY_MEDIAN_S: Final = 720.0
LATENCY_DELAY_SIGMA: Final = 0.5
LATENCY_TIMEOUT_RATE: Final = 0.05
SPIKE_SITE: Final = "RVH"
SPIKE_THRESHOLD: Final = 0.004
CANARY_LOGIT_SHIFT: Final = 0.7

# --- feeds ---------------------------------------------------------------------------
FEEDS: Final = ("ADT", "LAB", "VITALS")
HEARTBEAT_S: Final = 900
SLOTS_PER_DAY: Final = DAY // HEARTBEAT_S
#: a quiet feed reports its last event at most this many heartbeats back
QUIET_LOOKBACK_SLOTS: Final = SLOTS_PER_DAY
FEED_ERROR_RATE: Final = 0.002

# rng stream tags
_STREAM_SITE: Final = 1
_STREAM_ENCOUNTER: Final = 2
_STREAM_HEARTBEAT: Final = 3

_UNITS_BY_CODE: Final[dict[str, tuple[str, ...]]] = {
    "UMC": ("4W", "5E", "6N", "7S"),
    "RVH": ("2N", "3S", "4E"),
    "LKS": ("2W", "3E"),
    "MTN": ("MED",),
    "PRR": ("MED",),
}


@dataclass(frozen=True)
class SeedConfig:
    """What defines the simulated world (``registry_path`` only supplies metadata)."""

    end: datetime  # tz-aware UTC; the demo history ends here
    days: int = 90
    seed: int = 20260901
    sites: int = 5  # first N registry sites; extra synthetic sites S006.. beyond
    bed_scale: float = 1.0  # multiplies every site's beds
    registry_path: Path = Path("config/registry.yaml")
    #: also simulate and write this many days after ``end`` (a live demo's spool of
    #: future records); the world and the history before ``end`` do not change, and
    #: the ongoing incidents (drift, canary) carry on
    future_days: int = 0


@dataclass(frozen=True)
class SeedSummary:
    files: list[Path]
    predictions: int
    outcomes: int
    encounters: int
    heartbeats: int
    incidents: list[dict[str, Any]]


# ======================================================================================
# registry, sites, constants
# ======================================================================================


@dataclass(frozen=True)
class _Site:
    index: int
    code: str
    kind: str
    beds: float  # already multiplied by bed_scale
    units: tuple[str, ...]
    det_offset: float  # log-hazard offset
    readm_offset: float  # logit offset


@dataclass(frozen=True)
class _Models:
    det_version: str
    det_threshold: float
    det_horizon_h: float
    det_interval_h: float
    canary_version: str
    canary_threshold: float
    canary_site: str
    canary_unit: str
    readm_version: str
    readm_threshold: float
    readm_horizon_h: float


@dataclass(frozen=True)
class _Calibration:
    det_mu: float  # intercept of the model's log hazard per hour
    mean_stay_days: float  # expected stay including stays ended by the event
    readm_alpha: float  # intercept of the readmission logit


def _load_registry(path: Path) -> dict[str, Any]:
    with Path(path).open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: registry is not a mapping")
    return data


def _model_meta(reg: dict[str, Any]) -> _Models:
    models = {m["name"]: m for m in reg.get("models", [])}
    deployments: list[dict[str, Any]] = list(reg.get("deployments", []))

    def versions(name: str) -> dict[str, float]:
        return {str(v["version"]): float(v["threshold"]) for v in models[name]["versions"]}

    def deployment(name: str, arm: str) -> dict[str, Any] | None:
        for d in deployments:
            if d.get("model") == name and d.get("arm") == arm:
                return d
        return None

    for name in ("deterioration", "readmission"):
        if name not in models:
            raise ValueError(f"registry has no model {name!r}")
    det_v, readm_v = versions("deterioration"), versions("readmission")
    det_ctrl = deployment("deterioration", "control")
    det_can = deployment("deterioration", "canary")
    readm_ctrl = deployment("readmission", "control")
    det_version = str(det_ctrl["version"]) if det_ctrl else next(iter(det_v))
    readm_version = str(readm_ctrl["version"]) if readm_ctrl else next(iter(readm_v))
    canary_version = str(det_can["version"]) if det_can else "2.1.0"
    canary_sites = list(det_can.get("sites", [])) if det_can else []
    det = models["deterioration"]
    return _Models(
        det_version=det_version,
        det_threshold=det_v[det_version],
        det_horizon_h=float(det.get("horizon_hours", 12)),
        det_interval_h=float(det.get("scoring_interval_minutes", 240)) / 60.0,
        canary_version=canary_version,
        canary_threshold=det_v.get(canary_version, det_v[det_version]),
        canary_site=str(canary_sites[0]) if canary_sites else "UMC",
        canary_unit=str(det_can.get("unit", "5E")) if det_can else "5E",
        readm_version=readm_version,
        readm_threshold=readm_v[readm_version],
        readm_horizon_h=float(models["readmission"].get("horizon_hours", 720)),
    )


def _units_for(code: str, kind: str, beds: float) -> tuple[str, ...]:
    if code in _UNITS_BY_CODE:
        return _UNITS_BY_CODE[code]
    if kind == "academic":
        return ("4W", "5E", "6N", "7S")
    if kind == "community":
        return ("2N", "3S", "4E") if beds >= 175 else ("2N", "3S")
    return ("MED",)


def _sites(config: SeedConfig, reg: dict[str, Any]) -> list[_Site]:
    if config.sites < 1:
        raise ValueError("sites must be >= 1")
    if config.bed_scale <= 0:
        raise ValueError("bed_scale must be > 0")
    reg_sites: list[dict[str, Any]] = list(reg.get("sites", []))
    out: list[_Site] = []
    for i in range(config.sites):
        rng = np.random.default_rng([config.seed, _STREAM_SITE, i])
        det_off, readm_off = (float(v) * SITE_EFFECT_SD for v in rng.standard_normal(2))
        if i < len(reg_sites):
            code, kind = str(reg_sites[i]["code"]), str(reg_sites[i].get("kind", "community"))
            beds = float(reg_sites[i]["beds"])
        else:
            code = f"S{i + 1:03d}"
            kind = ("community", "critical-access")[(i - len(reg_sites)) % 2]
            beds = float(rng.integers(30, 301))
        out.append(
            _Site(
                index=i,
                code=code,
                kind=kind,
                beds=beds * config.bed_scale,
                units=_units_for(code, kind, beds),
                det_offset=det_off,
                readm_offset=readm_off,
            )
        )
    return out


def _expit(x: F64) -> F64:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float64)


def _logit(p: F64) -> F64:
    q = np.clip(p, 1e-12, 1 - 1e-12)
    return np.asarray(np.log(q) - np.log1p(-q), dtype=np.float64)


def _bisect(f: Callable[[float], float], lo: float, hi: float, target: float) -> float:
    """Root of the increasing function ``f(x) = target`` on [lo, hi]."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@functools.cache
def _calibration() -> _Calibration:
    """Intercepts that give the target base rates (Gauss-Hermite quadrature, no rng)."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    los_mu = math.log(LOS_MEAN_DAYS) - LOS_SIGMA**2 / 2
    los_h = np.clip(24 * np.exp(los_mu + LOS_SIGMA * x), LOS_MIN_HOURS, LOS_MAX_DAYS * 24)
    sd_true = math.sqrt(DET_LOG_SD**2 + DET_NOISE_SD**2)
    ww = np.outer(w, w)

    def lam(mu: float) -> F64:
        return np.exp(mu - DET_NOISE_SD**2 / 2 + sd_true * x)[:, None]

    def p_event(mu: float) -> float:
        return float((ww * -np.expm1(-lam(mu) * los_h[None, :])).sum())

    mu = _bisect(p_event, -25.0, 0.0, DET_EVENT_RATE)
    lm = lam(mu)
    mean_stay_h = float((ww * (-np.expm1(-lm * los_h[None, :]) / lm)).sum())

    def p_readm(alpha: float) -> float:
        return float((w * _expit(alpha + READM_LOGIT_SD * x)).sum())

    alpha = _bisect(p_readm, -10.0, 5.0, READM_RATE)
    return _Calibration(det_mu=mu, mean_stay_days=mean_stay_h / 24, readm_alpha=alpha)


def _admissions_per_day(site: _Site) -> float:
    return site.beds * OCCUPANCY / _calibration().mean_stay_days


def _to_epoch(ts: datetime, name: str) -> int:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC)")
    return math.floor(ts.timestamp())


def predictions_per_day_estimate(config: SeedConfig) -> float:
    """Expected predictions per day (both models, all sites) for sizing."""
    reg = _load_registry(config.registry_path)
    meta = _model_meta(reg)
    cal = _calibration()
    stay_h = cal.mean_stay_days * 24
    per_encounter = stay_h / meta.det_interval_h + 0.5 + (1 - DET_EVENT_RATE)
    return float(sum(_admissions_per_day(s) for s in _sites(config, reg)) * per_encounter)


# ======================================================================================
# simulation
# ======================================================================================


@dataclass(frozen=True)
class _Windows:
    hist_start: int
    end: int
    drift: tuple[int, int]
    outage: tuple[int, int]
    latency: tuple[int, int]
    spike: tuple[int, int]
    canary: tuple[int, int]


def _incident_windows(end: int, days: int, until: int) -> _Windows:
    anchor = end // DAY * DAY  # UTC midnight of end's date
    outage_start = anchor - 15 * DAY + 2 * HOUR
    latency_start = anchor - 10 * DAY + 14 * HOUR
    spike_start = anchor - 20 * DAY
    return _Windows(
        hist_start=end - days * DAY,
        end=end,
        drift=(end - 30 * DAY, until),
        outage=(outage_start, outage_start + 6 * HOUR),
        latency=(latency_start, latency_start + 3 * HOUR),
        spike=(spike_start, spike_start + DAY),
        canary=(end - 12 * DAY, until),
    )


def _in(t: I64, window: tuple[int, int]) -> BoolArr:
    return np.asarray((t >= window[0]) & (t < window[1]), dtype=np.bool_)


@dataclass
class _Encounters:
    """Encounter-level arrays (one row per admission) and score-level arrays."""

    site: I64
    day: I64
    idx: I64
    unit: I64
    admit: I64
    planned_dc: I64
    dc: I64
    event: BoolArr
    z: F64
    lam_hat: F64
    readm_p: F64
    readm_pos: BoolArr
    readm_out_s: F64  # seconds after discharge
    lag_det: F64
    lag_enc: F64
    lag_readm: F64
    dc_lead: F64
    r_delay_n: F64
    r_status_u: F64
    r_deliver: I64
    age: F64
    prior_adm: F64
    charlson: F64
    # score level
    s_enc: I64
    s_k: I64
    s_trigger: I64
    s_delay_n: F64
    s_status_u: F64
    s_deliver: I64
    s_noise: F64  # (m, 5)


def _simulate_encounters(
    seed: int, sites: list[_Site], meta: _Models, day_lo: int, day_hi: int
) -> _Encounters:
    cal = _calibration()
    los_mu = math.log(LOS_MEAN_DAYS) - LOS_SIGMA**2 / 2
    interval_s = meta.det_interval_h * HOUR
    cols: dict[str, list[npt.NDArray[Any]]] = {}

    def put(name: str, arr: npt.NDArray[Any]) -> None:
        cols.setdefault(name, []).append(arr)

    n_enc_total = 0
    for site in sites:
        rate = _admissions_per_day(site)
        n_units = len(site.units)
        for day in range(day_lo, day_hi + 1):
            rng = np.random.default_rng([seed, _STREAM_ENCOUNTER, site.index, day])
            n = int(rng.poisson(rate))
            if n == 0:
                continue
            # fixed draw order: never reorder or insert draws (it changes the world)
            admit = day * DAY + np.floor(np.sort(rng.random(n)) * DAY).astype(np.int64)
            enc_n = rng.standard_normal((n, 6))  # los, z, eps, u_readm, age, delay
            enc_u = rng.random((n, 8))
            e_exp = rng.standard_exponential(n)
            unit = rng.integers(0, n_units, n)

            los_h = np.clip(
                24 * np.exp(los_mu + LOS_SIGMA * enc_n[:, 0]), LOS_MIN_HOURS, LOS_MAX_DAYS * 24
            )
            planned_dc = admit + np.floor(los_h * HOUR).astype(np.int64)
            z = enc_n[:, 1]
            lam_hat = np.exp(cal.det_mu + site.det_offset + DET_LOG_SD * z)
            lam_true = lam_hat * np.exp(DET_NOISE_SD * enc_n[:, 2] - DET_NOISE_SD**2 / 2)
            event_h = e_exp / lam_true
            event_t = admit + np.floor(np.minimum(event_h, 1e6) * HOUR).astype(np.int64)
            event = event_t < planned_dc
            dc = np.where(event, event_t, planned_dc)

            zr = 0.6 * z + 0.8 * enc_n[:, 3]
            readm_p = _expit(cal.readm_alpha + site.readm_offset + READM_LOGIT_SD * zr)
            prior_adm = rng.poisson(np.exp(-0.2 + 0.5 * zr)).astype(np.float64)
            charlson = np.minimum(rng.poisson(np.exp(0.8 + 0.35 * zr)), 15).astype(np.float64)
            age = np.round(np.clip(62 + 7 * z + 14 * enc_n[:, 4], 18, 99))

            n_scores = np.ceil((dc - admit) / interval_s).astype(np.int64)
            m = int(n_scores.sum())
            s_enc_local = np.repeat(np.arange(n), n_scores)
            starts = np.cumsum(n_scores) - n_scores
            s_k = np.arange(m) - np.repeat(starts, n_scores)
            s_u = rng.random((m, 3))
            s_n = rng.standard_normal((m, 6))

            put("site", np.full(n, site.index, dtype=np.int64))
            put("day", np.full(n, day, dtype=np.int64))
            put("idx", np.arange(n, dtype=np.int64))
            put("unit", unit.astype(np.int64))
            put("admit", admit)
            put("planned_dc", planned_dc)
            put("dc", dc)
            put("event", event)
            put("z", z)
            put("lam_hat", lam_hat)
            put("readm_p", readm_p)
            put("readm_pos", enc_u[:, 0] < readm_p)
            put("readm_out_s", DAY * (1 + 29 * enc_u[:, 1]))
            put("lag_det", DET_RECORD_LAG_HOURS * HOUR * enc_u[:, 2])
            put("lag_enc", ENCOUNTER_RECORD_LAG_HOURS * HOUR * enc_u[:, 3])
            put("lag_readm", READM_RECORD_LAG_HOURS * HOUR * enc_u[:, 4])
            put("dc_lead", HOUR * (0.5 + 2.5 * enc_u[:, 5]))
            put("r_delay_n", enc_n[:, 5])
            put("r_status_u", enc_u[:, 6])
            put("r_deliver", 1 + np.floor(10 * enc_u[:, 7]).astype(np.int64))
            put("age", age)
            put("prior_adm", prior_adm)
            put("charlson", charlson)
            put("s_enc", s_enc_local + n_enc_total)
            put("s_k", s_k.astype(np.int64))
            put("s_trigger", admit[s_enc_local] + (s_k * interval_s).astype(np.int64))
            put("s_delay_n", s_n[:, 0])
            put("s_status_u", s_u[:, 0])
            put("s_deliver", 1 + np.floor(10 * s_u[:, 1]).astype(np.int64))
            put("s_noise", s_n[:, 1:6])
            n_enc_total += n

    empty: dict[str, npt.NDArray[Any]] = {
        "event": np.zeros(0, dtype=np.bool_),
        "readm_pos": np.zeros(0, dtype=np.bool_),
        "s_noise": np.zeros((0, 5)),
    }
    int_cols = {"site", "day", "idx", "unit", "admit", "planned_dc", "dc", "r_deliver"}
    int_cols |= {"s_enc", "s_k", "s_trigger", "s_deliver"}
    fields: dict[str, npt.NDArray[Any]] = {}
    for name in _Encounters.__dataclass_fields__:
        if name in cols:
            fields[name] = np.concatenate(cols[name])
        elif name in empty:
            fields[name] = empty[name]
        else:
            fields[name] = np.zeros(0, dtype=np.int64 if name in int_cols else np.float64)
    return _Encounters(**fields)


# ======================================================================================
# record assembly
# ======================================================================================


@dataclass
class _Table:
    """One output kind, kept numeric until it is written.

    ``times`` is each row's own time, ``ties`` the sort keys after it (most significant
    first; numeric and window-independent), and ``render`` turns row numbers into JSON
    lines, so only one chunk of strings exists at a time.
    """

    times: I64
    ties: tuple[I64, ...]
    render: Callable[[I64], list[str]]


def _iso(t: I64) -> list[str]:
    out: list[str] = np.datetime_as_string(t.astype("datetime64[s]"), unit="s").tolist()
    return out


def _num(values: F64, decimals: int, null: BoolArr) -> list[str]:
    """Formatted numbers, "null" where ``null``."""
    out = [f"{v:.{decimals}f}" for v in values.tolist()]
    for i in np.flatnonzero(null).tolist():
        out[i] = "null"
    return out


def _micro_str(micro: I64) -> list[str]:
    return [f"{v // 1_000_000}.{v % 1_000_000:06d}" for v in micro.tolist()]


def _js(value: object) -> str:
    return json.dumps(value)


def _score_delay(normals: F64, median: float, sigma: float) -> I64:
    return np.maximum(1, np.floor(median * np.exp(sigma * normals))).astype(np.int64)


def _status(u: F64, timeout_rate: F64) -> I64:
    """0 ok, 1 error, 2 timeout."""
    return np.where(u < ERROR_RATE, 1, np.where(u < ERROR_RATE + timeout_rate, 2, 0)).astype(
        np.int64
    )


def _readmission_scored_at(enc: _Encounters) -> tuple[I64, I64]:
    """(trigger_at, scored_at) of every encounter's readmission score."""
    trigger = enc.dc - np.floor(enc.dc_lead).astype(np.int64)
    return trigger, trigger + _score_delay(enc.r_delay_n, DELAY_MEDIAN_S, DELAY_SIGMA)


def _merge(rows: I64, first: BoolArr, render_first: list[str], render_rest: list[str]) -> list[str]:
    """Interleave two rendered subsets back into the order of ``rows``."""
    out = [""] * len(rows)
    for pos, line in zip(np.flatnonzero(first).tolist(), render_first, strict=True):
        out[pos] = line
    for pos, line in zip(np.flatnonzero(~first).tolist(), render_rest, strict=True):
        out[pos] = line
    return out


_STATUS_NAMES: Final = ('"ok"', '"error"', '"timeout"')

_PRED_TEMPLATE: Final = (
    '{"prediction_id": "%s", "model": %s, "model_version": %s, "site": %s, "unit": %s, '
    '"encounter_id": "%s", "trigger_at": "%sZ", "scored_at": "%sZ", "delivered_at": %s, '
    '"score": %s, "threshold": %s, "alert": %s, "arm": %s, "status": %s, "inputs": {'
)
_OUTCOME_TEMPLATE: Final = (
    '{"encounter_id": "%s", "site": %s, "outcome": %s, "outcome_at": "%sZ", "recorded_at": "%sZ"}'
)
_CLOSURE_TEMPLATE: Final = (
    '{"encounter_id": "%s", "site": %s, "unit": %s, "admitted_at": "%sZ", '
    '"discharged_at": "%sZ", "recorded_at": "%sZ"}'
)
_HEARTBEAT_TEMPLATE: Final = (
    '{"feed": %s, "site": %s, "last_event_at": "%sZ", "received_at": "%sZ", '
    '"messages": %d, "errors": %d}'
)

#: one model input: JSON name, %-format ("%s" for pre-formatted strings) and values
_Input = tuple[str, str, list[Any]]


@dataclass(frozen=True)
class _Names:
    """Pre-encoded JSON strings shared by the renderers."""

    enc_ids: npt.NDArray[np.object_]  # raw encounter id per encounter row
    site_js: list[str]  # per site index
    unit_js: list[list[str]]  # per site index, unit index


def _prediction_lines(
    model: str,
    pids: list[str],
    version_js: list[str],
    site_js: list[str],
    unit_js: list[str],
    enc_ids: list[str],
    trigger: I64,
    scored: I64,
    delivered: I64,
    score_micro: I64,
    threshold: F64,
    alert: BoolArr,
    arm_js: list[str],
    status: I64,
    inputs: list[_Input],
) -> list[str]:
    ok = status == 0
    deliv = ['"' + s + 'Z"' for s in _iso(delivered)]
    score = _micro_str(score_micro)
    for i in np.flatnonzero(~ok).tolist():
        deliv[i] = "null"
        score[i] = "null"
    thr_js = {v: _js(v) for v in set(threshold.tolist())}
    template = _PRED_TEMPLATE + ", ".join(f'"{name}": {fmt}' for name, fmt, _ in inputs) + "}}"
    rows = zip(
        pids,
        itertools.repeat(_js(model)),
        version_js,
        site_js,
        unit_js,
        enc_ids,
        _iso(trigger),
        _iso(scored),
        deliv,
        score,
        [thr_js[v] for v in threshold.tolist()],
        ["true" if a else "false" for a in alert.tolist()],
        arm_js,
        [_STATUS_NAMES[s] for s in status.tolist()],
        *(values for _, _, values in inputs),
    )
    return [template % row for row in rows]


def _build_predictions(
    enc: _Encounters,
    sites: list[_Site],
    meta: _Models,
    win: _Windows,
    lo: int,
    hi: int,
    names: _Names,
) -> _Table:
    # ---------------- deterioration: one row per 4-hourly score ----------------
    code = np.array([s.code for s in sites], dtype=object)
    s_code = code[enc.site[enc.s_enc]]
    in_latency = (s_code == LATENCY_SITE) & _in(enc.s_trigger, win.latency)
    delay = np.where(
        in_latency,
        _score_delay(enc.s_delay_n, LATENCY_DELAY_MEDIAN_S, LATENCY_DELAY_SIGMA),
        _score_delay(enc.s_delay_n, DELAY_MEDIAN_S, DELAY_SIGMA),
    )
    scored = enc.s_trigger + delay
    keep = (scored < enc.dc[enc.s_enc]) & (scored >= lo) & (scored < hi)
    i_s = np.flatnonzero(keep)
    e_s = enc.s_enc[i_s]
    scored = scored[i_s]
    s_code = s_code[i_s]
    s_site = enc.site[e_s]
    s_unit = enc.unit[e_s]
    in_latency = in_latency[i_s]

    window_h = np.minimum(meta.det_horizon_h, (enc.planned_dc[e_s] - scored) / HOUR)
    p = -np.expm1(-enc.lam_hat[e_s] * window_h)
    logit_shift = np.zeros(len(i_s))
    drift = (s_code == DRIFT_SITE) & _in(scored, win.drift)
    logit_shift[drift] += DRIFT_LOGIT_SHIFT
    canary = np.zeros(len(i_s), dtype=np.bool_)
    for site in sites:
        if site.code == meta.canary_site and meta.canary_unit in site.units:
            unit_i = site.units.index(meta.canary_unit)
            canary |= (s_site == site.index) & (s_unit == unit_i) & _in(scored, win.canary)
    logit_shift[canary] += CANARY_LOGIT_SHIFT
    shifted = logit_shift != 0
    p[shifted] = _expit(_logit(p[shifted]) + logit_shift[shifted])
    micro = np.rint(p * 1e6).astype(np.int64)
    threshold = np.where(canary, meta.canary_threshold, meta.det_threshold)
    spike = (s_code == SPIKE_SITE) & _in(scored, win.spike)
    threshold = np.where(spike, SPIKE_THRESHOLD, threshold)
    thr_micro = np.rint(threshold * 1e6).astype(np.int64)
    timeout_rate = np.where(in_latency, LATENCY_TIMEOUT_RATE, TIMEOUT_RATE)
    status = _status(enc.s_status_u[i_s], timeout_rate)
    alert = (status == 0) & (micro >= thr_micro)

    z = enc.z[e_s]
    noise = enc.s_noise[i_s]
    det: dict[str, npt.NDArray[Any]] = {
        "enc": e_s,
        "k": enc.s_k[i_s],
        "trigger": enc.s_trigger[i_s],
        "scored": scored,
        "delivered": scored + enc.s_deliver[i_s],
        "micro": micro,
        "threshold": threshold,
        "alert": alert,
        "status": status,
        "canary": canary,
        "hr": np.clip(82 + 9 * z + 9 * noise[:, 0], 35, 190),
        "rr": np.clip(17 + 2 * z + 2.2 * noise[:, 1], 8, 45),
        "sbp": np.clip(124 - 9 * z + 14 * noise[:, 2], 70, 220),
        "spo2": np.clip(96 - 1.3 * z + 1.6 * noise[:, 3], 78, 100),
        "lactate": np.clip(np.exp(math.log(1.3) + 0.3 * z + 0.3 * noise[:, 4]), 0.3, 15),
        "lactate_null": drift | ((s_code == OUTAGE_SITE) & _in(scored, win.outage)),
    }
    det_version_js = _js(meta.det_version)
    canary_version_js = _js(meta.canary_version)

    def render_det(rows: I64) -> list[str]:
        e = det["enc"][rows]
        ids: list[str] = names.enc_ids[e].tolist()
        can: list[bool] = det["canary"][rows].tolist()
        site_i: list[int] = enc.site[e].tolist()
        inputs: list[_Input] = [
            ("heart_rate", "%.1f", det["hr"][rows].tolist()),
            ("resp_rate", "%.1f", det["rr"][rows].tolist()),
            ("sbp", "%.1f", det["sbp"][rows].tolist()),
            ("spo2", "%.1f", det["spo2"][rows].tolist()),
            ("lactate", "%s", _num(det["lactate"][rows], 2, det["lactate_null"][rows])),
            ("age", "%.1f", enc.age[e].tolist()),
        ]
        return _prediction_lines(
            "deterioration",
            [f"det-{x}-{k:03d}" for x, k in zip(ids, det["k"][rows].tolist(), strict=True)],
            [canary_version_js if c else det_version_js for c in can],
            [names.site_js[s] for s in site_i],
            [names.unit_js[s][u] for s, u in zip(site_i, enc.unit[e].tolist(), strict=True)],
            ids,
            det["trigger"][rows],
            det["scored"][rows],
            det["delivered"][rows],
            det["micro"][rows],
            det["threshold"][rows],
            det["alert"][rows],
            ['"canary"' if c else '"control"' for c in can],
            det["status"][rows],
            inputs,
        )

    # ---------------- readmission: one row per discharge without the event ----------------
    trig_r, scored_r = _readmission_scored_at(enc)
    i_r = np.flatnonzero(~enc.event & (scored_r >= lo) & (scored_r < hi))
    status_r = _status(enc.r_status_u[i_r], np.full(len(i_r), TIMEOUT_RATE))
    micro_r = np.rint(enc.readm_p[i_r] * 1e6).astype(np.int64)
    readm: dict[str, npt.NDArray[Any]] = {
        "enc": i_r,
        "trigger": trig_r[i_r],
        "scored": scored_r[i_r],
        "delivered": scored_r[i_r] + enc.r_deliver[i_r],
        "micro": micro_r,
        "status": status_r,
        "alert": (status_r == 0) & (micro_r >= round(meta.readm_threshold * 1e6)),
        "los_days": (enc.dc[i_r] - enc.admit[i_r]) / DAY,
    }
    readm_version_js = _js(meta.readm_version)

    def render_readm(rows: I64) -> list[str]:
        e = readm["enc"][rows]
        ids: list[str] = names.enc_ids[e].tolist()
        site_i: list[int] = enc.site[e].tolist()
        inputs: list[_Input] = [
            ("age", "%.1f", enc.age[e].tolist()),
            ("prior_admissions", "%.1f", enc.prior_adm[e].tolist()),
            ("los_days", "%.1f", readm["los_days"][rows].tolist()),
            ("charlson", "%.1f", enc.charlson[e].tolist()),
        ]
        return _prediction_lines(
            "readmission",
            [f"rdm-{x}" for x in ids],
            [readm_version_js] * len(rows),
            [names.site_js[s] for s in site_i],
            [names.unit_js[s][u] for s, u in zip(site_i, enc.unit[e].tolist(), strict=True)],
            ids,
            readm["trigger"][rows],
            readm["scored"][rows],
            readm["delivered"][rows],
            readm["micro"][rows],
            np.full(len(rows), meta.readm_threshold),
            readm["alert"][rows],
            ['"control"'] * len(rows),
            readm["status"][rows],
            inputs,
        )

    n_det = len(i_s)

    def render(rows: I64) -> list[str]:
        is_det = rows < n_det
        return _merge(rows, is_det, render_det(rows[is_det]), render_readm(rows[~is_det] - n_det))

    return _Table(
        times=np.concatenate([scored, readm["scored"]]),
        ties=(
            np.concatenate([np.zeros(n_det, np.int64), np.ones(len(i_r), np.int64)]),
            np.concatenate([e_s, i_r]),  # encounter rows are ordered by (site, day, rank)
            np.concatenate([det["k"], np.zeros(len(i_r), np.int64)]),
        ),
        render=render,
    )


def _build_outcomes(
    enc: _Encounters, meta: _Models, win: _Windows, lo: int, hi: int, names: _Names
) -> _Table:
    visible = enc.dc >= win.hist_start  # encounters that overlap the history
    # deterioration: outcome at the event, recorded 0-36 h later
    det_rec = enc.dc + np.floor(enc.lag_det).astype(np.int64)
    i_d = np.flatnonzero(visible & enc.event & (det_rec >= lo) & (det_rec < hi))
    # readmission: 1-30 days after discharge (inside the model's horizon), recorded 0-72 h later
    _, scored_r = _readmission_scored_at(enc)
    horizon_end = scored_r + int(meta.readm_horizon_h * HOUR) - MINUTE
    out_r = np.minimum(enc.dc + np.floor(enc.readm_out_s).astype(np.int64), horizon_end)
    rec_r = out_r + np.floor(enc.lag_readm).astype(np.int64)
    i_r = np.flatnonzero(visible & ~enc.event & enc.readm_pos & (rec_r >= lo) & (rec_r < hi))

    idx = np.concatenate([i_d, i_r])
    kind = np.concatenate([np.zeros(len(i_d), np.int64), np.ones(len(i_r), np.int64)])
    outcome_at = np.concatenate([enc.dc[i_d], out_r[i_r]])
    recorded = np.concatenate([det_rec[i_d], rec_r[i_r]])
    outcome_js = ('"deterioration"', '"readmission_30d"')

    def render(rows: I64) -> list[str]:
        e = idx[rows]
        return [
            _OUTCOME_TEMPLATE % row
            for row in zip(
                names.enc_ids[e].tolist(),
                [names.site_js[s] for s in enc.site[e].tolist()],
                [outcome_js[k] for k in kind[rows].tolist()],
                _iso(outcome_at[rows]),
                _iso(recorded[rows]),
                strict=True,
            )
        ]

    return _Table(times=recorded, ties=(idx, kind), render=render)


def _build_closures(enc: _Encounters, win: _Windows, lo: int, hi: int, names: _Names) -> _Table:
    recorded = enc.dc + np.floor(enc.lag_enc).astype(np.int64)
    idx = np.flatnonzero((enc.dc >= win.hist_start) & (recorded >= lo) & (recorded < hi))

    def render(rows: I64) -> list[str]:
        e = idx[rows]
        site_i: list[int] = enc.site[e].tolist()
        return [
            _CLOSURE_TEMPLATE % row
            for row in zip(
                names.enc_ids[e].tolist(),
                [names.site_js[s] for s in site_i],
                [names.unit_js[s][u] for s, u in zip(site_i, enc.unit[e].tolist(), strict=True)],
                _iso(enc.admit[e]),
                _iso(enc.dc[e]),
                _iso(recorded[e]),
                strict=True,
            )
        ]

    return _Table(times=recorded[idx], ties=(idx,), render=render)


def _build_heartbeats(
    seed: int, sites: list[_Site], enc: _Encounters, win: _Windows, lo: int, hi: int, names: _Names
) -> _Table:
    # slots generated from one day before the output window so a quiet feed's
    # "last event" (looked back at most QUIET_LOOKBACK_SLOTS) never depends on the window
    day_lo = lo // DAY - 1
    day_hi = (hi - 1) // DAY
    n_days = day_hi - day_lo + 1
    slot_t = (day_lo * DAY + HEARTBEAT_S * np.arange(n_days * SLOTS_PER_DAY)).astype(np.int64)
    hour = (slot_t % DAY) / HOUR
    diurnal = {
        "ADT": 1 + 0.4 * np.cos(2 * np.pi * (hour - 19) / 24),
        "LAB": 1 + 0.5 * np.cos(2 * np.pi * (hour - 11) / 24),
        "VITALS": 1 + 0.2 * np.cos(2 * np.pi * (hour - 14) / 24),
    }
    per_patient_hour = {"ADT": 0.1, "LAB": 1.2, "VITALS": 4.0}
    slot_h = HEARTBEAT_S / HOUR

    parts: dict[str, list[I64]] = {
        k: [] for k in ("received", "last", "msgs", "errs", "site", "feed")
    }
    for site in sites:
        mine = enc.site == site.index
        admits = np.sort(enc.admit[mine])
        dcs = np.sort(enc.dc[mine])
        census = np.searchsorted(admits, slot_t, "right") - np.searchsorted(dcs, slot_t, "right")
        prev = slot_t - HEARTBEAT_S
        adt_moves = (
            np.searchsorted(admits, slot_t, "right")
            - np.searchsorted(admits, prev, "right")
            + np.searchsorted(dcs, slot_t, "right")
            - np.searchsorted(dcs, prev, "right")
        )
        lam = {f: census * per_patient_hour[f] * slot_h * diurnal[f] for f in FEEDS}
        jitter = np.empty((len(slot_t), 3), dtype=np.int64)
        last_u = np.empty((len(slot_t), 3))
        msgs = np.empty((len(slot_t), 3), dtype=np.int64)
        errs = np.empty((len(slot_t), 3), dtype=np.int64)
        for d in range(n_days):
            sl = slice(d * SLOTS_PER_DAY, (d + 1) * SLOTS_PER_DAY)
            rng = np.random.default_rng([seed, _STREAM_HEARTBEAT, site.index, day_lo + d])
            jitter[sl] = rng.integers(0, 21, (SLOTS_PER_DAY, 3))
            last_u[sl] = rng.random((SLOTS_PER_DAY, 3))
            for j, f in enumerate(FEEDS):
                msgs[sl, j] = rng.poisson(lam[f][sl])
            msgs[sl, 0] += adt_moves[sl]
            errs[sl] = rng.binomial(msgs[sl], FEED_ERROR_RATE)
        received = slot_t[:, None] + jitter
        if site.code == OUTAGE_SITE:
            j = FEEDS.index(OUTAGE_FEED)
            down = _in(received[:, j], win.outage)
            if down.any():
                backlog = int(msgs[down, j].sum())
                msgs[down, j] = 0
                errs[down, j] = 0
                after = np.flatnonzero(received[:, j] >= win.outage[1])
                if len(after):
                    msgs[after[0], j] += backlog
        # last event: the latest of `msgs` uniform event times in the slot's 15 minutes
        frac = np.power(last_u, 1.0 / np.maximum(msgs, 1))
        last = slot_t[:, None] - HEARTBEAT_S + np.floor(HEARTBEAT_S * frac).astype(np.int64)
        rows = np.arange(len(slot_t))[:, None]
        src = np.maximum.accumulate(np.where(msgs > 0, rows, -1), axis=0)
        stale = (src < 0) | (rows - src > QUIET_LOOKBACK_SLOTS)
        last = np.where(
            stale,
            slot_t[:, None] - QUIET_LOOKBACK_SLOTS * HEARTBEAT_S,
            last[np.maximum(src, 0), np.arange(3)[None, :]],
        )
        for j in range(len(FEEDS)):
            i = np.flatnonzero((received[:, j] >= lo) & (received[:, j] < hi))
            parts["received"].append(received[i, j])
            parts["last"].append(last[i, j])
            parts["msgs"].append(msgs[i, j])
            parts["errs"].append(errs[i, j])
            parts["site"].append(np.full(len(i), site.index, dtype=np.int64))
            parts["feed"].append(np.full(len(i), j, dtype=np.int64))
    cols = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in parts.items()}
    feed_js = [_js(f) for f in FEEDS]

    def render(rows: I64) -> list[str]:
        return [
            _HEARTBEAT_TEMPLATE % row
            for row in zip(
                [feed_js[f] for f in cols["feed"][rows].tolist()],
                [names.site_js[s] for s in cols["site"][rows].tolist()],
                _iso(cols["last"][rows]),
                _iso(cols["received"][rows]),
                cols["msgs"][rows].tolist(),
                cols["errs"][rows].tolist(),
                strict=True,
            )
        ]

    return _Table(times=cols["received"], ties=(cols["site"], cols["feed"]), render=render)


def _incident_list(win: _Windows, sites: list[_Site], meta: _Models) -> list[dict[str, Any]]:
    codes = {s.code: s for s in sites}
    canary_site = codes.get(meta.canary_site)

    def iso(t: int) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    candidates: list[tuple[str, str | None, str, str | None, str | None, tuple[int, int], str]]
    candidates = [
        (
            "calibration_drift",
            "deterioration",
            DRIFT_SITE,
            None,
            None,
            win.drift,
            "lab-code change leaves lactate unmapped: inputs.lactate is null and "
            f"scores are under-predicted (logit shift {DRIFT_LOGIT_SHIFT}); outcomes unchanged, "
            "so O:E rises to about 2",
        ),
        (
            "feed_outage",
            "deterioration",
            OUTAGE_SITE,
            None,
            OUTAGE_FEED,
            win.outage,
            "LAB interface down: heartbeats keep arriving with messages 0 and a frozen "
            "last_event_at; the backlog arrives with the first heartbeat after recovery; "
            "deterioration predictions in the window have inputs.lactate null",
        ),
        (
            "latency",
            "deterioration",
            LATENCY_SITE,
            None,
            None,
            win.latency,
            f"scoring slowdown: trigger->scored delay median {LATENCY_DELAY_MEDIAN_S / 60:g} min "
            f"(most miss the 5-min SLO) and {LATENCY_TIMEOUT_RATE:.0%} timeouts",
        ),
        (
            "alert_volume",
            "deterioration",
            SPIKE_SITE,
            None,
            None,
            win.spike,
            f"threshold misconfigured to {SPIKE_THRESHOLD} (threshold field and alert flag "
            "reflect it); scores unchanged",
        ),
        (
            "canary_rollout",
            "deterioration",
            meta.canary_site,
            meta.canary_unit,
            None,
            win.canary,
            f"version {meta.canary_version} (arm canary) on unit {meta.canary_unit}; it "
            f"over-predicts (logit shift +{CANARY_LOGIT_SHIFT}) so alert rate and O:E differ "
            "from control",
        ),
    ]
    out: list[dict[str, Any]] = []
    for kind, model, site, unit, feed, (t0, t1), detail in candidates:
        if site not in codes or t1 <= win.hist_start or t0 >= win.end:
            continue
        if kind == "canary_rollout" and (
            canary_site is None or meta.canary_unit not in canary_site.units
        ):
            continue
        out.append(
            {
                "kind": kind,
                "model": model,
                "site": site,
                "unit": unit,
                "feed": feed,
                "start": iso(t0),
                "end": iso(t1),
                "detail": detail,
            }
        )
    return out


# ======================================================================================
# output
# ======================================================================================

#: rows rendered to strings at a time (bounds memory for large worlds)
_RENDER_CHUNK: Final = 100_000


def _write(
    out_dir: Path, kind: str, table: _Table, start: datetime | None
) -> tuple[list[Path], int]:
    n = len(table.times)
    if n == 0:
        return [], 0
    order = np.lexsort((*reversed(table.ties), table.times))
    if start is not None:
        chunks = [(f"{kind}-{start.astimezone(UTC):%Y%m%dT%H%M}.jsonl", 0, n)]
    else:
        days = table.times[order] // DAY
        edges = [0, *(np.flatnonzero(np.diff(days)) + 1).tolist(), n]
        chunks = []
        for a, b in itertools.pairwise(edges):
            date = datetime.fromtimestamp(int(days[a]) * DAY, UTC).strftime("%Y-%m-%d")
            chunks.append((f"{kind}-{date}.jsonl", a, b))
    paths: list[Path] = []
    for name, a, b in chunks:
        path = out_dir / name
        tmp = out_dir / f".{name}.tmp"
        with tmp.open("w", encoding="utf-8", newline="\n") as fh:
            for c in range(a, b, _RENDER_CHUNK):
                fh.write("\n".join(table.render(order[c : min(b, c + _RENDER_CHUNK)])))
                fh.write("\n")
        os.replace(tmp, path)
        paths.append(path)
    return paths, n


def generate(config: SeedConfig, out_dir: Path, *, start: datetime | None = None) -> SeedSummary:
    """Simulate the world for ``config`` and write the records whose own time is in
    ``[start, end + future_days)`` (default start: ``end - days``) into ``out_dir``.

    Daily files ``<kind>-YYYY-MM-DD.jsonl`` without ``start``; one file per kind named
    ``<kind>-YYYYMMDDTHHMM.jsonl`` (after ``start``) when ``start`` is given.
    """
    if config.days < 1:
        raise ValueError("days must be >= 1")
    if config.future_days < 0:
        raise ValueError("future_days must be >= 0")
    end_s = _to_epoch(config.end, "end")
    hi = end_s + config.future_days * DAY
    win = _incident_windows(end_s, config.days, hi)
    lo = win.hist_start if start is None else max(win.hist_start, _to_epoch(start, "start"))
    reg = _load_registry(config.registry_path)
    meta = _model_meta(reg)
    sites = _sites(config, reg)
    incidents = _incident_list(win, sites, meta)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if lo >= hi:
        return SeedSummary([], 0, 0, 0, 0, incidents)

    world_day_lo = win.hist_start // DAY - WARMUP_DAYS
    day_lo = max(world_day_lo, lo // DAY - RECORD_REACH_DAYS)
    enc = _simulate_encounters(config.seed, sites, meta, day_lo, (hi - 1) // DAY)
    codes = [s.code for s in sites]
    names = _Names(
        enc_ids=np.array(
            [
                f"{codes[s]}-E{d:05d}{i:04d}"
                for s, d, i in zip(
                    enc.site.tolist(), enc.day.tolist(), enc.idx.tolist(), strict=True
                )
            ],
            dtype=object,
        ),
        site_js=[_js(c) for c in codes],
        unit_js=[[_js(u) for u in s.units] for s in sites],
    )

    files: list[Path] = []
    counts: dict[str, int] = {}
    builders: dict[str, Callable[[], _Table]] = {
        "predictions": lambda: _build_predictions(enc, sites, meta, win, lo, hi, names),
        "outcomes": lambda: _build_outcomes(enc, meta, win, lo, hi, names),
        "encounters": lambda: _build_closures(enc, win, lo, hi, names),
        "heartbeats": lambda: _build_heartbeats(config.seed, sites, enc, win, lo, hi, names),
    }
    for kind, build in builders.items():
        paths, n = _write(out_dir, kind, build(), start)
        files.extend(paths)
        counts[kind] = n
    logger.debug("seed data written to %s: %s", out_dir, counts)
    return SeedSummary(
        files=sorted(files),
        predictions=counts["predictions"],
        outcomes=counts["outcomes"],
        encounters=counts["encounters"],
        heartbeats=counts["heartbeats"],
        incidents=incidents,
    )
