"""AppTest of the Sites page: funnel plot, the outlying site, case mix, metrics side by side."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from monitors.config import MonitorConfig
from monitors.sites import run_site_comparison
from store.rollups import refresh
from tests.app.operational import app_env, app_test, now_minute
from tests.factories import outcome, prediction, write_jsonl

__all__ = ["app_env"]


def test_sites_page_draws_the_funnel_and_names_the_outlier(
    app_env: None, engine: Engine, tmp_path: Path
) -> None:
    now = now_minute()
    rng = np.random.default_rng(9)
    records, outcomes = [], []
    for site, count, factor in [("UMC", 900, 1.0), ("RVH", 600, 1.0), ("LKS", 600, 2.5)]:
        for _ in range(count):
            n = len(records) + 1
            scored = now - timedelta(days=30) + timedelta(minutes=int(rng.integers(0, 26 * 1440)))
            score = float(np.clip(rng.beta(2, 30), 0.001, 0.9))
            records.append(prediction(n, site=site, encounter_id=f"E{n}", scored=scored,
                                      score=round(score, 6)))  # fmt: skip
            if rng.random() < min(1.0, score * factor):
                outcomes.append(outcome(f"E{n}", scored + timedelta(hours=2), site=site))
    files = [
        write_jsonl(tmp_path / "predictions-x.jsonl", records),
        write_jsonl(tmp_path / "outcomes-x.jsonl", outcomes),
    ]
    list(collect_files(engine, files, secret="s"))
    refresh(engine, now=now)
    config = MonitorConfig({"site_comparison": {"defaults": {"design_effect": 1.0}}})
    run_site_comparison(engine, config, now)
    at = app_test(default_timeout=30)
    at.switch_page("app_pages/sites.py").run()
    assert not at.exception
    assert at.title[0].value == "Sites"
    assert len(at.get("plotly_chart")) == 1
    [outlier] = [e.value for e in at.error]
    assert outlier.startswith("deterioration at LKS") and "site-outlier" in outlier
    mix = at.dataframe[0].value
    assert list(mix["site"]) == ["LKS", "RVH", "UMC"]
    assert mix.loc[mix["site"] == "LKS", "status"].item() == "breach"
    assert (mix["lactate missing"] == 0).all()
    side = at.dataframe[1].value
    assert "site_comparison · oe_vs_sites" in side.index
    assert "Heterogeneity" in " ".join(m.value for m in at.markdown)
