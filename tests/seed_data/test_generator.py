"""Tests for the deterministic demo-data generator (seed_data.generator)."""

from __future__ import annotations

import functools
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from seed_data.generator import SeedConfig, SeedSummary, generate, predictions_per_day_estimate

REPO = Path(__file__).resolve().parents[2]
REGISTRY = REPO / "config" / "registry.yaml"
README = REPO / "seed_data" / "README.md"
END = datetime(2026, 9, 1, tzinfo=UTC)
KINDS = ("predictions", "outcomes", "encounters", "heartbeats")
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
OWN_TIME = {
    "predictions": "scored_at",
    "outcomes": "recorded_at",
    "encounters": "recorded_at",
    "heartbeats": "received_at",
}
KEYS = {
    "predictions": {
        "prediction_id",
        "model",
        "model_version",
        "site",
        "unit",
        "encounter_id",
        "trigger_at",
        "scored_at",
        "delivered_at",
        "score",
        "threshold",
        "alert",
        "arm",
        "status",
        "inputs",
    },
    "outcomes": {"encounter_id", "site", "outcome", "outcome_at", "recorded_at"},
    "encounters": {
        "encounter_id",
        "site",
        "unit",
        "admitted_at",
        "discharged_at",
        "recorded_at",
    },
    "heartbeats": {"feed", "site", "last_event_at", "received_at", "messages", "errors"},
}
DET_INPUTS = {"heart_rate", "resp_rate", "sbp", "spo2", "lactate", "age"}
READM_INPUTS = {"age", "prior_admissions", "los_days", "charlson"}


def config(**overrides: Any) -> SeedConfig:
    base: dict[str, Any] = {
        "end": END,
        "days": 10,
        "bed_scale": 0.2,
        "registry_path": REGISTRY,
    }
    base.update(overrides)
    return SeedConfig(**base)


def read_lines(directory: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for kind in KINDS:
        out[kind] = []
        for path in sorted(directory.glob(f"{kind}-*.jsonl")):
            out[kind].extend(path.read_text(encoding="utf-8").splitlines())
    return out


def read_records(directory: Path) -> dict[str, list[dict[str, Any]]]:
    return {k: [json.loads(line) for line in v] for k, v in read_lines(directory).items()}


def ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def frame(records: list[dict[str, Any]], time_cols: tuple[str, ...]) -> pd.DataFrame:
    df = pd.DataFrame(records)
    for col in time_cols:  # numpy parses "YYYY-MM-DDTHH:MM:SS" far faster than pandas
        naive = [v[:-1] if v else "NaT" for v in df[col].tolist()]
        df[col] = pd.Series(np.array(naive, dtype="datetime64[s]")).dt.tz_localize("UTC")
    return df


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SeedSummary]:
    out = tmp_path_factory.mktemp("small")
    return out, generate(config(), out)


class Full:
    """The default-size world (5 sites, 90 days, bed_scale 1) as data frames."""

    def __init__(self, out: Path, summary: SeedSummary, seconds: float) -> None:
        self.out = out
        self.summary = summary
        self.seconds = seconds
        recs = read_records(out)
        self.pred = frame(recs["predictions"], ("trigger_at", "scored_at", "delivered_at"))
        self.out_df = frame(recs["outcomes"], ("outcome_at", "recorded_at"))
        self.enc = frame(recs["encounters"], ("admitted_at", "discharged_at", "recorded_at"))
        self.hb = frame(recs["heartbeats"], ("last_event_at", "received_at"))
        self.end = pd.Timestamp(END)
        self.hist_start = self.end - pd.Timedelta(days=90)
        self.incidents = {i["kind"]: i for i in summary.incidents}

    def window(self, kind: str) -> tuple[pd.Timestamp, pd.Timestamp]:
        inc = self.incidents[kind]
        return pd.Timestamp(inc["start"]), pd.Timestamp(inc["end"])

    @functools.cached_property
    def labels(self) -> pd.DataFrame:
        """Settled ok deterioration predictions with y = event within 12 h of scoring."""
        det = self.pred[(self.pred.model == "deterioration") & (self.pred.status == "ok")].copy()
        events = self.out_df[self.out_df.outcome == "deterioration"]
        event_at = events.set_index("encounter_id").outcome_at
        det["event_at"] = det.encounter_id.map(event_at)
        det["y"] = (det.event_at > det.scored_at) & (
            det.event_at <= det.scored_at + pd.Timedelta(hours=12)
        )
        return det[det.scored_at < self.end - pd.Timedelta(hours=48)]


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Full:
    out = tmp_path_factory.mktemp("full")
    t0 = time.perf_counter()
    summary = generate(SeedConfig(end=END, registry_path=REGISTRY), out)
    return Full(out, summary, time.perf_counter() - t0)


def observed_expected(df: pd.DataFrame) -> float:
    return float(df.y.sum() / df.score.sum())


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    ranks = pd.Series(s).rank().to_numpy()
    n1 = int(y.sum())
    n0 = len(y) - n1
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# --------------------------------------------------------------------------------------
# determinism and windows
# --------------------------------------------------------------------------------------


def test_same_config_gives_byte_identical_files(
    small: tuple[Path, SeedSummary], tmp_path: Path
) -> None:
    _, summary = small
    again = generate(config(), tmp_path)
    assert [p.name for p in again.files] == [p.name for p in summary.files]
    for a, b in zip(summary.files, again.files, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert again.incidents == summary.incidents


def test_different_seed_differs(small: tuple[Path, SeedSummary], tmp_path: Path) -> None:
    out, _ = small
    other = generate(config(seed=7), tmp_path)
    assert read_lines(tmp_path)["predictions"] != read_lines(out)["predictions"]
    assert other.predictions > 0


def test_start_only_filters_the_same_world(small: tuple[Path, SeedSummary], tmp_path: Path) -> None:
    out, _ = small
    start = END - timedelta(days=2, hours=5, minutes=17)
    part = generate(config(), tmp_path, start=start)
    full_lines = read_lines(out)
    part_lines = read_lines(tmp_path)
    for kind in KINDS:
        suffix = [
            line for line in full_lines[kind] if ts(json.loads(line)[OWN_TIME[kind]]) >= start
        ]
        assert part_lines[kind] == suffix, kind
    assert part.predictions == len(part_lines["predictions"])


@pytest.mark.parametrize(
    "c",
    [
        datetime(2026, 9, 1, 0, 30, tzinfo=UTC),  # the windows straddle midnight
        datetime(2026, 8, 29, 15, 7, tzinfo=UTC),
    ],
)
def test_consecutive_windows_concatenate_to_one_run(tmp_path: Path, c: datetime) -> None:
    """[a,b) of the world ending at b, then [b,c) of the world ending at c, equals [a,c)."""
    b = c - timedelta(hours=1)
    a = c - timedelta(hours=3)
    generate(config(end=b), tmp_path / "split", start=a)
    generate(config(end=c), tmp_path / "split", start=b)
    generate(config(end=c), tmp_path / "one", start=a)
    split, one = read_lines(tmp_path / "split"), read_lines(tmp_path / "one")
    for kind in KINDS:
        assert split[kind] == one[kind], kind
    assert len(one["predictions"]) > 0
    assert len(one["heartbeats"]) > 0


def test_future_days_extend_the_same_world(small: tuple[Path, SeedSummary], tmp_path: Path) -> None:
    out, summary = small
    ahead = generate(config(future_days=1), tmp_path / "ahead")
    lines = read_lines(tmp_path / "ahead")
    history = read_lines(out)
    # the same history start (outcomes are only written for encounters seen in the history)
    later_cfg = config(end=END + timedelta(days=1), days=11)
    later = generate(later_cfg, tmp_path / "later", start=END)
    later_lines = read_lines(tmp_path / "later")
    for kind in KINDS:
        before = [x for x in lines[kind] if ts(json.loads(x)[OWN_TIME[kind]]) < END]
        after = [x for x in lines[kind] if ts(json.loads(x)[OWN_TIME[kind]]) >= END]
        assert before == history[kind], kind
        assert after == later_lines[kind], kind
    assert later.predictions > 0
    canary = [json.loads(x) for x in lines["predictions"] if '"arm": "canary"' in x]
    assert max(ts(r["scored_at"]) for r in canary) > END  # the canary carries on
    assert {i["kind"]: i["end"] for i in ahead.incidents}[
        "canary_rollout"
    ] == "2026-09-02T00:00:00Z"
    assert ahead.predictions > summary.predictions


def test_minute_drops_are_named_by_start_and_never_overwrite(tmp_path: Path) -> None:
    now = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)
    names: list[str] = []
    for minute in range(3):
        end = now + timedelta(minutes=minute + 1)
        summary = generate(config(end=end), tmp_path, start=end - timedelta(minutes=1))
        names.extend(p.name for p in summary.files)
    assert len(names) == len(set(names))
    stamp = re.compile(r"^(predictions|outcomes|encounters|heartbeats)-\d{8}T\d{4}\.jsonl$")
    assert names and all(stamp.match(n) for n in names)
    assert "heartbeats-20260901T1200.jsonl" in names  # the 12:00 heartbeat lands in 12:00-12:01
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_minute_drop_is_fast(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    generate(
        SeedConfig(end=END, registry_path=REGISTRY), tmp_path, start=END - timedelta(minutes=1)
    )
    assert time.perf_counter() - t0 < 5.0


def test_naive_end_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        generate(config(end=datetime(2026, 9, 1)), tmp_path)


# --------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------


def test_every_line_matches_the_schema(small: tuple[Path, SeedSummary]) -> None:
    out, summary = small
    recs = read_records(out)
    hist_start = END - timedelta(days=10)
    for kind in KINDS:
        assert recs[kind], kind
        for rec in recs[kind]:
            assert set(rec) == KEYS[kind], (kind, rec)
            for key, value in rec.items():
                if key.endswith("_at") and value is not None:
                    assert ISO_Z.match(value), (kind, key, value)
            assert hist_start <= ts(rec[OWN_TIME[kind]]) < END
    for path in summary.files:
        kind, date = path.stem.split("-", 1)
        for line in path.read_text(encoding="utf-8").splitlines():
            assert json.loads(line)[OWN_TIME[kind]].startswith(date)

    assert summary.predictions == len(recs["predictions"])
    assert summary.outcomes == len(recs["outcomes"])
    assert summary.encounters == len(recs["encounters"])
    assert summary.heartbeats == len(recs["heartbeats"])

    ids = [r["prediction_id"] for r in recs["predictions"]]
    assert len(ids) == len(set(ids))
    for r in recs["predictions"]:
        assert r["model"] in {"deterioration", "readmission"}
        assert r["arm"] in {"control", "canary"}
        assert ts(r["trigger_at"]) <= ts(r["scored_at"])
        assert isinstance(r["threshold"], float)
        assert isinstance(r["alert"], bool)
        expected_inputs = DET_INPUTS if r["model"] == "deterioration" else READM_INPUTS
        assert set(r["inputs"]) == expected_inputs
        assert all(v is None or isinstance(v, float) for v in r["inputs"].values())
        if r["status"] == "ok":
            assert isinstance(r["score"], float) and 0.0 <= r["score"] <= 1.0
            assert round(r["score"], 6) == r["score"]
            assert r["alert"] == (r["score"] >= r["threshold"])
            delivered = ts(r["delivered_at"])
            assert 1 <= (delivered - ts(r["scored_at"])).total_seconds() <= 10
        else:
            assert r["status"] in {"error", "timeout"}
            assert r["score"] is None and r["delivered_at"] is None and r["alert"] is False

    closures = {e["encounter_id"]: e for e in recs["encounters"]}
    assert len(closures) == len(recs["encounters"])
    for e in recs["encounters"]:
        lag = (ts(e["recorded_at"]) - ts(e["discharged_at"])).total_seconds()
        assert 0 <= lag <= 2 * 3600
        assert ts(e["admitted_at"]) < ts(e["discharged_at"])
    for o in recs["outcomes"]:
        assert o["outcome"] in {"deterioration", "readmission_30d"}
        lag = (ts(o["recorded_at"]) - ts(o["outcome_at"])).total_seconds()
        limit = 36 if o["outcome"] == "deterioration" else 72
        assert 0 <= lag <= limit * 3600
        closure = closures.get(o["encounter_id"])
        if o["outcome"] == "deterioration" and closure is not None:
            assert closure["discharged_at"] == o["outcome_at"]
    for h in recs["heartbeats"]:
        assert h["feed"] in {"ADT", "LAB", "VITALS"}
        assert ts(h["last_event_at"]) <= ts(h["received_at"])
        assert h["messages"] >= 0 and 0 <= h["errors"] <= h["messages"]


def test_heartbeats_every_15_minutes_per_site_and_feed(small: tuple[Path, SeedSummary]) -> None:
    out, _ = small
    hb = frame(read_records(out)["heartbeats"], ("last_event_at", "received_at"))
    counts = hb.groupby(["site", "feed"]).size()
    assert len(counts) == 5 * 3
    assert set(counts) == {10 * 96}
    slots = hb.received_at.dt.floor("15min")
    assert ((hb.received_at - slots) < pd.Timedelta(seconds=30)).all()


def test_extra_sites_are_synthesised(tmp_path: Path) -> None:
    summary = generate(config(sites=8, days=2, bed_scale=0.3), tmp_path)
    recs = read_records(tmp_path)
    sites = {r["site"] for r in recs["heartbeats"]}
    assert sites == {"UMC", "RVH", "LKS", "MTN", "PRR", "S006", "S007", "S008"}
    assert {r["site"] for r in recs["predictions"]} >= {"S006", "S007", "S008"}
    assert summary.predictions > 0
    # a site's world does not depend on how many sites are simulated
    generate(config(sites=5, days=2, bed_scale=0.3), tmp_path / "five")
    five = read_lines(tmp_path / "five")["predictions"]
    eight = [line for line in read_lines(tmp_path)["predictions"] if '"site": "S0' not in line]
    assert five == eight


def test_estimate_scales_with_beds_and_sites() -> None:
    base = predictions_per_day_estimate(config(bed_scale=1.0))
    assert predictions_per_day_estimate(config(bed_scale=2.0)) == pytest.approx(2 * base)
    assert predictions_per_day_estimate(config(sites=40, bed_scale=1.0)) > 5 * base
    assert 3_500 < base < 5_500


def test_fewer_sites_drop_their_incidents(tmp_path: Path) -> None:
    summary = generate(config(sites=1, days=40, bed_scale=0.05), tmp_path)
    kinds = {i["kind"] for i in summary.incidents}
    assert kinds == {"latency", "canary_rollout"}  # both at UMC


# --------------------------------------------------------------------------------------
# the default-size world: volume, base rates, calibration
# --------------------------------------------------------------------------------------


def test_full_generation_is_fast_and_sized(full: Full) -> None:
    assert full.seconds < 30
    per_day = len(full.pred) / 90
    estimate = predictions_per_day_estimate(SeedConfig(end=END, registry_path=REGISTRY))
    assert per_day == pytest.approx(estimate, rel=0.05)
    readm_per_day = (full.pred.model == "readmission").sum() / 90
    assert 120 < readm_per_day < 190
    status = full.pred.status.value_counts(normalize=True)
    assert status["error"] == pytest.approx(0.003, abs=0.001)
    assert status["timeout"] == pytest.approx(0.002, abs=0.001)


def test_census_is_steady_at_about_85_percent(full: Full) -> None:
    enc = full.enc
    beds = 400 + 200 + 150 + 25 + 20
    for day in (30, 45, 60):
        t = full.hist_start + pd.Timedelta(days=day)
        # stays in progress at t, from closures (nearly all of them closed by the end)
        in_house = ((enc.admitted_at <= t) & (enc.discharged_at > t)).sum()
        assert 0.75 * beds < in_house < 0.95 * beds


def test_base_rates(full: Full) -> None:
    complete = full.enc[full.enc.admitted_at >= full.hist_start]
    det_ids = set(full.out_df[full.out_df.outcome == "deterioration"].encounter_id)
    det_rate = complete.encounter_id.isin(det_ids).mean()
    assert det_rate == pytest.approx(0.03, abs=0.005)

    readm = full.pred[(full.pred.model == "readmission") & (full.pred.status == "ok")]
    settled = readm[readm.scored_at < full.end - pd.Timedelta(days=34)]
    readm_ids = set(full.out_df[full.out_df.outcome == "readmission_30d"].encounter_id)
    y = settled.encounter_id.isin(readm_ids)
    assert y.mean() == pytest.approx(0.14, abs=0.015)
    assert y.sum() / settled.score.sum() == pytest.approx(1.0, abs=0.1)
    assert settled.score.mean() == pytest.approx(0.14, abs=0.02)


@pytest.mark.parametrize("site", ["UMC", "RVH"])
def test_control_arm_is_calibrated(full: Full, site: str) -> None:
    det = full.labels
    control = det[(det.site == site) & (det.arm == "control")]
    assert observed_expected(control) == pytest.approx(1.0, abs=0.15)


def test_deterioration_discrimination(full: Full) -> None:
    det = full.labels
    drift_start, _ = full.window("calibration_drift")
    clean = det[(det.arm == "control") & ~((det.site == "LKS") & (det.scored_at >= drift_start))]
    assert 0.75 <= auroc(clean.y.to_numpy(), clean.score.to_numpy()) <= 0.87
    assert observed_expected(clean) == pytest.approx(1.0, abs=0.1)


def test_labels_arrive_late(full: Full) -> None:
    lag = full.out_df.recorded_at - full.out_df.outcome_at
    assert (lag > pd.Timedelta(0)).mean() > 0.99
    # outcomes that happened in the last day are mostly not recorded yet
    recent = full.out_df[full.out_df.outcome_at >= full.end - pd.Timedelta(days=1)]
    previous = full.out_df[
        (full.out_df.outcome_at >= full.end - pd.Timedelta(days=8))
        & (full.out_df.outcome_at < full.end - pd.Timedelta(days=7))
    ]
    assert len(recent) < len(previous)


# --------------------------------------------------------------------------------------
# incidents
# --------------------------------------------------------------------------------------


def test_summary_lists_every_incident(full: Full) -> None:
    expected = {
        "calibration_drift": ("LKS", END - timedelta(days=30), END),
        "feed_outage": ("RVH", END - timedelta(days=15) + timedelta(hours=2), None),
        "latency": ("UMC", END - timedelta(days=10) + timedelta(hours=14), None),
        "alert_volume": ("RVH", END - timedelta(days=20), END - timedelta(days=19)),
        "canary_rollout": ("UMC", END - timedelta(days=12), END),
    }
    assert set(full.incidents) == set(expected)
    readme = README.read_text(encoding="utf-8")
    for kind, (site, start, end) in expected.items():
        inc = full.incidents[kind]
        assert inc["site"] == site and inc["model"] == "deterioration"
        assert ts(inc["start"]) == start
        if end is not None:
            assert ts(inc["end"]) == end
        assert inc["detail"]
        assert f"`{kind}`" in readme
    assert ts(full.incidents["feed_outage"]["end"]) - ts(
        full.incidents["feed_outage"]["start"]
    ) == timedelta(hours=6)
    assert full.incidents["feed_outage"]["feed"] == "LAB"
    assert full.incidents["canary_rollout"]["unit"] == "5E"


def test_calibration_drift_at_lks(full: Full) -> None:
    start, _ = full.window("calibration_drift")
    det = full.labels
    lks = det[det.site == "LKS"]
    during, before = lks[lks.scored_at >= start], lks[lks.scored_at < start]
    assert observed_expected(during) > 1.5
    assert observed_expected(before) == pytest.approx(1.0, abs=0.25)
    lactate = full.pred[(full.pred.model == "deterioration") & (full.pred.site == "LKS")]
    nulls = lactate.inputs.map(lambda i: i["lactate"] is None)
    assert nulls[lactate.scored_at >= start].all()
    assert not nulls[lactate.scored_at < start].any()


def test_lab_feed_outage_at_rvh(full: Full) -> None:
    start, end = full.window("feed_outage")
    hb = full.hb
    in_window = (hb.received_at >= start) & (hb.received_at < end)
    lab = hb[(hb.site == "RVH") & (hb.feed == "LAB") & in_window]
    assert len(lab) == 24
    assert (lab.messages == 0).all()
    assert lab.last_event_at.nunique() == 1
    assert (lab.last_event_at < start).all()
    after = hb[(hb.site == "RVH") & (hb.feed == "LAB") & (hb.received_at >= end)]
    assert after.iloc[0].messages > 10 * after.iloc[1].messages  # backlog delivered
    others = hb[in_window & ~((hb.site == "RVH") & (hb.feed == "LAB"))]
    assert (others.groupby(["site", "feed"]).last_event_at.nunique() > 1).all()
    fresh = hb[(hb.site == "RVH") & (hb.feed == "LAB") & ~in_window]
    staleness = fresh.received_at - fresh.last_event_at
    assert (staleness < pd.Timedelta(minutes=30)).mean() > 0.99

    det = full.pred[(full.pred.model == "deterioration") & (full.pred.site == "RVH")]
    nulls = det.inputs.map(lambda i: i["lactate"] is None)
    during = (det.scored_at >= start) & (det.scored_at < end)
    assert during.sum() > 0 and nulls[during].all()
    assert not nulls[~during].any()


def test_latency_incident_at_umc(full: Full) -> None:
    start, end = full.window("latency")
    det = full.pred[full.pred.model == "deterioration"]
    delay = (det.scored_at - det.trigger_at).dt.total_seconds()
    hit = (det.site == "UMC") & (det.trigger_at >= start) & (det.trigger_at < end)
    assert hit.sum() > 100
    assert (delay[hit] > 300).mean() > 0.8
    assert (det[hit].status == "timeout").mean() > 0.02
    assert (delay[~hit] > 300).mean() < 0.01
    assert delay[~hit].median() == pytest.approx(60, abs=10)


def test_alert_volume_spike_at_rvh(full: Full) -> None:
    start, end = full.window("alert_volume")
    det = full.pred[full.pred.model == "deterioration"]
    spike = (det.site == "RVH") & (det.scored_at >= start) & (det.scored_at < end)
    assert (det[spike].threshold == 0.004).all()
    assert (det[~spike].threshold != 0.004).all()
    normal = det[(det.site == "RVH") & ~spike]
    assert det[spike].alert.mean() > 5 * normal.alert.mean()


def test_canary_rollout_at_umc_5e(full: Full) -> None:
    start, _ = full.window("canary_rollout")
    det = full.pred[full.pred.model == "deterioration"]
    canary = det[det.arm == "canary"]
    assert len(canary) > 1000
    assert set(canary.site) == {"UMC"} and set(canary.unit) == {"5E"}
    assert set(canary.model_version) == {"2.1.0"}
    assert (canary.scored_at >= start).all()
    ward = det[(det.site == "UMC") & (det.unit == "5E") & (det.scored_at >= start)]
    assert (ward.arm == "canary").all()
    control = det[(det.arm == "control")]
    assert set(control.model_version) == {"2.0.0"}
    assert full.pred[full.pred.model == "readmission"].arm.eq("control").all()

    umc_control = control[(control.site == "UMC") & (control.scored_at >= start)]
    assert canary.alert.mean() > 2 * umc_control.alert.mean()
    labelled = full.labels
    canary_l = labelled[labelled.arm == "canary"]
    control_l = labelled[(labelled.arm == "control") & (labelled.site == "UMC")]
    assert observed_expected(canary_l) < 0.8 * observed_expected(control_l)


def test_clean_sites_have_no_incident_marks(full: Full) -> None:
    det = full.pred[(full.pred.model == "deterioration") & full.pred.site.isin(["MTN", "PRR"])]
    assert (det.arm == "control").all()
    assert (det.threshold == 0.02).all()
    assert not det.inputs.map(lambda i: i["lactate"] is None).any()
    delay = (det.scored_at - det.trigger_at).dt.total_seconds()
    assert (delay > 300).mean() < 0.01
