"""An Evidently data-drift report on demand: a deep look at one model x site.

The drift monitor works on histograms; this samples raw predictions (the score and the named
inputs) from the site's reference window and from its current window, and hands both to
Evidently's DataDriftPreset. It reads raw rows, so it runs only when someone asks for it (CLI
or the drift page), never on the schedule.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from monitors.config import MonitorConfig
from monitors.drift_runner import DriftConfig, reference_window
from monitors.rollup_io import day_start, first_hours, load_models
from store.models import DriftReference, Prediction, Site, table_of, utcnow

logger = logging.getLogger(__name__)

P = table_of(Prediction)
DR = table_of(DriftReference)


def sample_predictions(
    conn: Connection,
    *,
    model_id: int,
    site_id: int,
    start: datetime,
    end: datetime,
    limit: int,
) -> pd.DataFrame:
    """Up to `limit` delivered predictions scored in [start, end), drawn at random: the score
    and one column per named input (missing inputs as NaN)."""
    rows = conn.execute(
        sa.select(P.c.score, P.c.inputs)
        .where(
            P.c.model_id == model_id,
            P.c.site_id == site_id,
            P.c.status == "ok",
            P.c.scored_at >= start,
            P.c.scored_at < end,
        )
        .order_by(sa.func.random())
        .limit(limit)
    ).all()
    frame = pd.DataFrame([{"score": score, **(inputs or {})} for score, inputs in rows])
    return frame.apply(pd.to_numeric, errors="coerce") if not frame.empty else frame


def _comparable(
    ref: pd.DataFrame, cur: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The columns Evidently can compare: an input missing in some rows also gets a 0/1
    "<name> missing" column (so an input that stopped arriving shows as drift), and a column
    with no values at all in one window is compared through that indicator only."""
    ref, cur = ref.copy(), cur.copy()
    columns: list[str] = []
    for name in sorted(set(ref.columns) | set(cur.columns), key=lambda c: (c != "score", c)):
        if name not in ref.columns:
            ref[name] = float("nan")
        if name not in cur.columns:
            cur[name] = float("nan")
        if ref[name].isna().any() or cur[name].isna().any():
            flag = f"{name} missing"
            ref[flag] = ref[name].isna().astype(int)
            cur[flag] = cur[name].isna().astype(int)
            columns.append(flag)
        if ref[name].notna().any() and cur[name].notna().any():
            columns.append(name)
    return ref, cur, columns


def report_windows(
    conn: Connection, *, model_id: int, model_name: str, site_id: int, site_code: str,
    config: MonitorConfig, now: datetime,
) -> tuple[tuple[datetime, datetime], tuple[datetime, datetime]]:  # fmt: skip
    """(reference, current) windows: the frozen reference if there is one, and the trailing
    current window of the drift monitor's configuration."""
    cfg = config.for_monitor("drift", DriftConfig, model=model_name, site=site_code)
    frozen = conn.execute(
        sa.select(DR.c.reference_start, DR.c.reference_end)
        .where(DR.c.model_id == model_id, DR.c.site_id == site_id)
        .limit(1)
    ).first()
    if frozen is not None:
        reference = (frozen[0], frozen[1])
    else:
        first = first_hours(conn, model_id).get(site_id)
        if first is None:
            raise ValueError(f"no predictions of model {model_name} at site {site_code}")
        days = reference_window(
            first // 24, cfg.reference_days, cfg.reference_start, cfg.reference_end
        )
        reference = (day_start(days[0]), day_start(days[1]))
    current = (now - timedelta(days=cfg.window_days), now)
    return reference, current


def build_drift_report(
    engine: Engine,
    *,
    model: str,
    site: str,
    now: datetime | None = None,
    sample: int = 20_000,
    config: MonitorConfig | None = None,
) -> str:
    """Evidently's DataDriftPreset (its default tests per column) as a standalone HTML page."""
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's telemetry stays off
    from evidently import Report
    from evidently.presets import DataDriftPreset

    now = now or utcnow()
    config = config or MonitorConfig.from_file()
    S = table_of(Site)
    with engine.connect() as conn:
        models = {m.name: m for m in load_models(conn).values()}
        if model not in models:
            raise ValueError(f"unknown model {model!r}")
        site_id = conn.execute(sa.select(S.c.id).where(S.c.code == site)).scalar()
        if site_id is None:
            raise ValueError(f"unknown site {site!r}")
        chosen = models[model]
        assert chosen.id is not None
        reference, current = report_windows(
            conn,
            model_id=chosen.id,
            model_name=model,
            site_id=int(site_id),
            site_code=site,
            config=config,
            now=now,
        )
        ref = sample_predictions(
            conn, model_id=chosen.id, site_id=int(site_id), start=reference[0],
            end=reference[1], limit=sample,
        )  # fmt: skip
        cur = sample_predictions(
            conn, model_id=chosen.id, site_id=int(site_id), start=current[0],
            end=current[1], limit=sample,
        )  # fmt: skip
    if ref.empty or cur.empty:
        raise ValueError(
            f"no predictions of {model} at {site} in the "
            f"{'reference' if ref.empty else 'current'} window"
        )
    ref, cur, columns = _comparable(ref, cur)
    logger.info(
        "Evidently report %s at %s: %d reference rows (%s to %s), %d current rows",
        model, site, len(ref), reference[0], reference[1], len(cur),
    )  # fmt: skip
    snapshot = Report([DataDriftPreset(columns=columns)]).run(
        current_data=cur[columns], reference_data=ref[columns]
    )
    return str(snapshot.get_html_str(as_iframe=False))
