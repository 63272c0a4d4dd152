"""A small simulated world for the clinical monitors' store and app tests (not a test module).

One prediction per encounter at UMC and RVH for DAYS days; from SHIFT_DAY the true odds at
RVH are 2.7 times the score's and its lactate stops arriving.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, logit
from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from monitors.config import MonitorConfig
from tests.factories import T0, encounter, outcome, prediction, write_jsonl

DAYS = 30
SHIFT_DAY = 15  # RVH's true odds are 2.7 x the score's from here on
CONFIG = MonitorConfig(
    {
        "calibration": {"defaults": {"window_days": 10, "design_effect": 1.0}},
        "discrimination": {"defaults": {"window_days": 10, "design_effect": 1.0}},
        "calibration_drift": {
            "defaults": {
                "reference_days": 10,
                "in_control_arl_days": 3650,
                "simulation_paths": 100,
                "simulation_event_budget": 2e5,
                "design_effect": 1.0,
            }
        },
        "drift": {"defaults": {"window_days": 5, "reference_days": 10, "min_n": 200}},
    }
)


def records(
    first: int, last: int, *, seed: int, per_day: int = 160
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """One prediction per encounter for UMC and RVH over days [first, last)."""
    rng = np.random.default_rng(seed)
    preds, outs, encs = [], [], []
    for day in range(first, last):
        for site in ("UMC", "RVH"):
            for k in range(per_day):
                n = (day * 2 + (site == "RVH")) * 1000 + k
                scored = T0 + timedelta(days=day, minutes=int(rng.integers(0, 1440)))
                p = float(np.clip(expit(rng.normal(-2.8, 0.9)), 0.0005, 0.95))
                shift = 1.0 if site == "RVH" and day >= SHIFT_DAY else 0.0
                lactate = (
                    None if site == "RVH" and day >= SHIFT_DAY else round(rng.gamma(4, 0.4), 2)
                )
                eid = f"{site}-E{n:08d}"
                preds.append(
                    prediction(
                        n,
                        prediction_id=f"det-{eid}",
                        encounter_id=eid,
                        site=site,
                        scored=scored,
                        score=round(p, 6),
                        alert=p >= 0.1,
                        threshold=0.1,
                        inputs={"heart_rate": round(rng.normal(85, 15), 1), "lactate": lactate},
                    )
                )
                if rng.random() < expit(logit(p) + shift):
                    outs.append(outcome(eid, scored + timedelta(hours=3), site=site))
                else:
                    encs.append(encounter(eid, scored + timedelta(hours=20), site=site))
    return preds, outs, encs


def load(
    engine: Engine, tmp_path: Path, name: str, first: int, last: int, seed: int, per_day: int = 160
) -> None:
    preds, outs, encs = records(first, last, seed=seed, per_day=per_day)
    files = [
        write_jsonl(tmp_path / f"predictions-{name}.jsonl", preds),  # type: ignore[arg-type]
        write_jsonl(tmp_path / f"outcomes-{name}.jsonl", outs),  # type: ignore[arg-type]
        write_jsonl(tmp_path / f"encounters-{name}.jsonl", encs),  # type: ignore[arg-type]
    ]
    list(collect_files(engine, files, secret="s", now=lambda: T0 + timedelta(days=60)))
