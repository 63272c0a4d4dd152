"""Per-encounter event counts of a canary's arms: what the judge's design effects sum.

Scores of one patient are not independent, so the judge corrects each variance with, per arm
and kind of event, sum(c_i) and sum(c_i^2) over the arm's encounters (monitors/canary.py).
Rollups cannot know which scores share a patient; only raw predictions can. Summed from raw
rows (`cluster_query`) that is every prediction of the canary period at the site, each
time: a read that grows with the canary's age (at one site of a 1 M/day system, about
70,000 rows a day).

`maintained_clusters` keeps each encounter's counts in `canaryencounter` instead (for the
period so far, and for the planned analysis's fixed window, which is judged again every run
until its labels are complete: weeks, for a 30-day outcome), and per run
recomputes only the encounters with a prediction that is new since the last run (by id, or
scored in an hour that has since entered the period) or whose label settled since (by
`settled_at`), then adjusts the sums by the difference. It reads rows the rollups already
hold (ids up to the refresh watermark), so the counts describe the same rows as the canary's
rollup totals. It starts over from raw rows when the period's first hour, the latency SLO or
the store's settlement history (a refresh that re-stamped labels, store.rollups.RESTAMPS)
changed, or on a canary's first run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from monitors.canary import PPV_CROSS
from store.models import CanaryEncounter, JobState, Prediction, table_of
from store.rollups import LAST_RUN, RESTAMPS, WM_PREDICTION, get_state, set_state

P = table_of(Prediction)
CE = table_of(CanaryEncounter)
J = table_of(JobState)

KINDS = (
    "scores", "alerts", "errors", "late", "degraded", "positives", "alerts_settled",
    "alert_positives",
)  # fmt: skip
STATE_PREFIX = "canary.clusters."
KEYS_PER_STATEMENT = 500
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Clusters = dict[str, dict[str, tuple[float, float]]]
Sums = dict[str, list[int]]  # per arm: sum c of each kind, sum c^2 of each kind, sum cross


PERIODS = ("so_far", "planned")


@dataclass(frozen=True)
class Arms:
    """Which predictions make a canary's two arms (the canary version's canary arm and the
    control version's control arm of one model at one site), and which window's counts are
    kept: `so_far`, the canary period so far (each run extends it), or `planned`, the planned
    analysis's fixed window (judged once its labels are complete; until then, every run)."""

    model_id: int
    site_id: int
    version_id: int
    control_version_id: int
    latency_slo_seconds: float
    period: str = "so_far"

    def kept(self, period: str) -> Arms:
        return replace(self, period=period)

    @property
    def state_key(self) -> str:
        return (
            f"{STATE_PREFIX}{self.model_id}.{self.site_id}.{self.version_id}."
            f"{self.control_version_id}.{self.period}"
        )

    def label(self) -> sa.ColumnElement[Any]:
        """'canary' or 'control' for a prediction of either arm."""
        return sa.case(
            (sa.and_(P.c.arm == "canary", P.c.version_id == self.version_id), "canary"),
            else_="control",
        )

    def member(self) -> sa.ColumnElement[bool]:
        return sa.or_(
            sa.and_(P.c.arm == "canary", P.c.version_id == self.version_id),
            sa.and_(P.c.arm == "control", P.c.version_id == self.control_version_id),
        )

    def keys(self) -> dict[str, int | str]:
        """The columns of `canaryencounter` that name this canary's kept window."""
        return {
            "model_id": self.model_id,
            "site_id": self.site_id,
            "version_id": self.version_id,
            "control_version_id": self.control_version_id,
            "period": self.period,
        }

    def rows(self) -> sa.ColumnElement[bool]:
        """This canary's rows in `canaryencounter`."""
        return sa.and_(
            CE.c.model_id == self.model_id,
            CE.c.site_id == self.site_id,
            CE.c.version_id == self.version_id,
            CE.c.control_version_id == self.control_version_id,
            CE.c.period == self.period,
        )


def encounter_counts(latency_slo_seconds: float) -> dict[str, sa.ColumnElement[Any]]:
    """Per kind of event, its count over a group of predictions (one encounter's)."""
    ok = P.c.status == "ok"

    def count_if(condition: Any) -> Any:
        return sa.func.sum(sa.case((condition, 1), else_=0))

    late = sa.and_(
        ok, sa.or_(P.c.latency_seconds.is_(None), P.c.latency_seconds > latency_slo_seconds)
    )
    return {
        "scores": count_if(ok),
        "alerts": count_if(P.c.alert),
        "errors": count_if(P.c.status.in_(("error", "timeout"))),
        "late": count_if(late),
        "degraded": count_if(sa.and_(ok, P.c.degraded)),
        "positives": count_if(sa.and_(ok, P.c.label == 1)),
        "alerts_settled": count_if(sa.and_(ok, P.c.alert, P.c.label.is_not(None))),
        "alert_positives": count_if(sa.and_(ok, P.c.alert, P.c.label == 1)),
    }


def _sums_select(source: Any, group: Any) -> sa.Select[Any]:
    """Per group: sum c and sum c^2 of each kind, and sum(alerts_settled * alert_positives),
    over the per-encounter rows of `source` (a subquery or `canaryencounter`)."""
    columns = []
    for kind in KINDS:
        c = source.c[kind]
        columns += [sa.func.sum(c).label(f"{kind}_s"), sa.func.sum(c * c).label(f"{kind}_q")]
    cross = source.c["alerts_settled"] * source.c["alert_positives"]
    return sa.select(group.label("grp"), *columns, sa.func.sum(cross).label("cross_s")).group_by(
        group
    )


def _clusters_of_rows(rows: Iterable[Any]) -> Clusters:
    out: Clusters = {}
    for row in rows:
        sums = {k: (float(row[f"{k}_s"] or 0.0), float(row[f"{k}_q"] or 0.0)) for k in KINDS}
        sums[PPV_CROSS] = (float(row["cross_s"] or 0.0), 0.0)
        out[row["grp"]] = sums
    return out


def cluster_query(
    conn: Connection,
    *,
    group: sa.ColumnElement[Any],
    where: sa.ColumnElement[bool],
    latency_slo_seconds: float,
) -> Clusters:
    """Per group, (sum c, sum c^2) over encounters for every kind of event, from raw rows."""
    kinds = encounter_counts(latency_slo_seconds)
    per_encounter = (
        sa.select(group.label("grp"), *[expr.label(k) for k, expr in kinds.items()])
        .where(where)
        .group_by(group, P.c.encounter_key)
        .subquery("per_encounter")
    )
    return _clusters_of_rows(
        conn.execute(_sums_select(per_encounter, per_encounter.c.grp)).mappings()
    )


# ---------------------------------------------------------------- sums of encounters (pure)


def add_encounters(sums: Sums, rows: Iterable[Sequence[Any]], *, sign: int = 1) -> Sums:
    """Add (arm, count of each kind...) rows, one per encounter, into `sums` (in place)."""
    n = len(KINDS)
    by_arm: dict[str, list[Sequence[Any]]] = {}
    for arm, *counts in rows:
        by_arm.setdefault(str(arm), []).append(counts)
    settled, positive = KINDS.index("alerts_settled"), KINDS.index("alert_positives")
    for arm, counts in by_arm.items():
        c = np.asarray(counts, dtype=np.int64).reshape(-1, n)
        acc = sums.setdefault(arm, [0] * (2 * n + 1))
        totals = [*c.sum(axis=0), *(c * c).sum(axis=0), (c[:, settled] * c[:, positive]).sum()]
        for i, total in enumerate(totals):
            acc[i] += sign * int(total)
    return sums


def clusters_of(sums: Sums) -> Clusters:
    """`Sums` in the judge's shape: per arm, kind -> (sum c, sum c^2)."""
    n = len(KINDS)
    out: Clusters = {}
    for arm, acc in sums.items():
        kinds = {k: (float(acc[i]), float(acc[n + i])) for i, k in enumerate(KINDS)}
        kinds[PPV_CROSS] = (float(acc[2 * n]), 0.0)
        out[arm] = kinds
    return out


# ---------------------------------------------------------------- kept up to date


def _hour_start(hour: int) -> datetime:
    return EPOCH + timedelta(hours=hour)


def _period(arms: Arms, dialect: str, first_hour: int, end_hour: int, wm: int) -> Any:
    """The canary period's rows of both arms that the rollups hold, implying no index.

    `+ 0` keeps the planners off the indexes whose prefix is the model and the site (the
    site's whole history: PostgreSQL would otherwise AND a scan of it into an id range), so
    the selective condition each caller adds drives the query. The hour stays plain on
    PostgreSQL, which prunes partitions on it.
    """
    hour = P.c.scored_hour + 0 if dialect == "sqlite" else P.c.scored_hour
    return sa.and_(
        P.c.model_id + 0 == arms.model_id,
        P.c.site_id + 0 == arms.site_id,
        hour >= first_hour,
        hour < end_hour,
        P.c.id <= wm,
        arms.member(),
    )


def _to_recount(
    conn: Connection, arms: Arms, state: dict[str, Any], *, first_hour: int, end_hour: int,
    wm: int,
) -> set[str]:  # fmt: skip
    """Encounters whose counts cannot be updated by adding their new rows: those with a row
    whose label settled since the run of `state` in a way a count sees (positive, or on an
    alert; a negative label on a row without an alert changes no count), and those with an
    older row scored in an hour that has entered the period since."""
    dialect = conn.dialect.name
    keys: set[str] = set()
    clauses = [
        sa.and_(  # the site's (model, site, scored_at) range of the new hours drives
            P.c.model_id == arms.model_id,
            P.c.site_id == arms.site_id,
            P.c.scored_at >= _hour_start(int(state["end_hour"])),
            P.c.scored_at < _hour_start(end_hour),
            P.c.id <= int(state["wm"]),
            arms.member(),
        )
    ]
    if state["settled"]:  # the settled_at index drives
        clauses.append(
            sa.and_(
                _period(arms, dialect, first_hour, end_hour, wm),
                P.c.settled_at > datetime.fromisoformat(state["settled"]),
                P.c.status == "ok",
                sa.or_(P.c.label == 1, P.c.alert),
            )
        )
    for clause in clauses:
        keys.update(conn.execute(sa.select(P.c.encounter_key).where(clause)).scalars())
    return keys


def _per_encounter(arms: Arms, where: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """Per (encounter, arm), the count of each kind over the rows `where` selects."""
    kinds = encounter_counts(arms.latency_slo_seconds)
    label = arms.label()
    return (
        sa.select(P.c.encounter_key, label.label("arm"), *[e.label(k) for k, e in kinds.items()])
        .where(where)
        .group_by(P.c.encounter_key, label)
    )


def _new_rows(
    conn: Connection, arms: Arms, state: dict[str, Any], *, first_hour: int, end_hour: int,
    wm: int,
) -> dict[tuple[str, str], tuple[int, ...]]:  # fmt: skip
    """(encounter, arm) -> counts of the period's rows new since the run of `state` (by id:
    the id range drives)."""
    query = _per_encounter(
        arms,
        sa.and_(
            _period(arms, conn.dialect.name, first_hour, end_hour, wm), P.c.id > int(state["wm"])
        ),
    )
    return {
        (str(key), str(arm)): tuple(int(c or 0) for c in counts)
        for key, arm, *counts in conn.execute(query)
    }


def _chunks(keys: Iterable[str]) -> Iterable[list[str]]:
    ordered = sorted(keys)
    for start in range(0, len(ordered), KEYS_PER_STATEMENT):
        yield ordered[start : start + KEYS_PER_STATEMENT]


def _add_new_rows(
    conn: Connection, arms: Arms, sums: Sums, new: dict[tuple[str, str], tuple[int, ...]]
) -> None:
    """Add each encounter's new rows to its kept counts, and the difference to `sums`."""
    for chunk in _chunks({key for key, _ in new}):
        kept = {
            (row["encounter_key"], row["arm"]): row
            for row in conn.execute(
                sa.select(CE.c.id, CE.c.encounter_key, CE.c.arm, *[CE.c[k] for k in KINDS]).where(
                    arms.rows(), CE.c.encounter_key.in_(chunk)
                )
            ).mappings()
        }
        updates, inserts = [], []
        olds: list[tuple[Any, ...]] = []
        totals: list[tuple[Any, ...]] = []
        for key in chunk:
            for arm in ("canary", "control"):
                delta = new.get((key, arm))
                if delta is None:
                    continue
                row = kept.get((key, arm))
                old = tuple(int(row[k]) for k in KINDS) if row is not None else (0,) * len(KINDS)
                total = tuple(a + b for a, b in zip(old, delta, strict=True))
                olds.append((arm, *old))
                totals.append((arm, *total))
                values = dict(zip(KINDS, total, strict=True))
                if row is not None:
                    updates.append({"row_id": row["id"], **values})
                else:
                    inserts.append({**arms.keys(), "encounter_key": key, "arm": arm, **values})
        add_encounters(sums, olds, sign=-1)
        add_encounters(sums, totals)
        if updates:
            conn.execute(
                sa.update(CE)
                .where(CE.c.id == sa.bindparam("row_id"))
                .values({k: sa.bindparam(k) for k in KINDS}),
                updates,
            )
        if inserts:
            conn.execute(sa.insert(CE), inserts)


def _recount(
    conn: Connection, arms: Arms, keys: list[str], *, first_hour: int, end_hour: int, wm: int
) -> list[dict[str, Any]]:
    """Rows of `canaryencounter` for `keys`, counted from their predictions in the period."""
    query = _per_encounter(
        arms,
        sa.and_(
            _period(arms, conn.dialect.name, first_hour, end_hour, wm),
            P.c.encounter_key.in_(keys),  # the encounter_key index drives
        ),
    )
    return [{**arms.keys(), **row} for row in conn.execute(query).mappings()]


def _counts(row: Any) -> tuple[Any, ...]:
    return (row["arm"], *[row[k] for k in KINDS])


def _replace(
    conn: Connection, arms: Arms, sums: Sums, keys: set[str], *, first_hour: int, end_hour: int,
    wm: int,
) -> None:  # fmt: skip
    """Recount the encounters `keys` from raw rows, and adjust `sums` by the difference."""
    for chunk in _chunks(keys):
        mine = sa.and_(arms.rows(), CE.c.encounter_key.in_(chunk))
        old = conn.execute(sa.select(CE.c.arm, *[CE.c[k] for k in KINDS]).where(mine)).all()
        new = _recount(conn, arms, chunk, first_hour=first_hour, end_hour=end_hour, wm=wm)
        add_encounters(sums, old, sign=-1)
        add_encounters(sums, [_counts(r) for r in new])
        conn.execute(sa.delete(CE).where(mine))
        if new:
            conn.execute(sa.insert(CE), new)


def _rebuild(conn: Connection, arms: Arms, *, first_hour: int, end_hour: int, wm: int) -> Sums:
    """Every encounter's counts of the period from raw rows, and their sums."""
    conn.execute(sa.delete(CE).where(arms.rows()))
    period = sa.and_(
        P.c.model_id == arms.model_id,  # the site's (model, site, scored_at) range drives
        P.c.site_id == arms.site_id,
        P.c.scored_at >= _hour_start(first_hour),
        P.c.scored_at < _hour_start(end_hour),
        P.c.scored_hour >= first_hour,  # the same rows; prunes PostgreSQL's partitions
        P.c.scored_hour < end_hour,
        P.c.id <= wm,
        arms.member(),
    )
    fixed = [sa.literal(value).label(name) for name, value in arms.keys().items()]
    select = _per_encounter(arms, period).add_columns(*fixed)
    names = [c.name for c in select.selected_columns]
    conn.execute(sa.insert(CE).from_select(names, select))
    rows = conn.execute(_sums_select(CE, CE.c.arm).where(arms.rows())).mappings()
    sums: Sums = {}
    for row in rows:
        sums[str(row["grp"])] = [
            *[int(row[f"{k}_s"] or 0) for k in KINDS],
            *[int(row[f"{k}_q"] or 0) for k in KINDS],
            int(row["cross_s"] or 0),
        ]
    return sums


def maintained_clusters(
    conn: Connection, arms: Arms, *, first_hour: int, end_hour: int
) -> Clusters:
    """Per arm, (sum c, sum c^2) over the encounters of the period [first_hour, end_hour),
    kept in `canaryencounter` and brought up to date from what changed since the last run."""
    wm = int(get_state(conn, WM_PREDICTION))
    settled = get_state(conn, LAST_RUN, "")
    restamps = get_state(conn, RESTAMPS)
    state: dict[str, Any] = json.loads(get_state(conn, arms.state_key, "{}"))
    current = (
        bool(state)
        and state["first_hour"] == first_hour
        and state["latency"] == arms.latency_slo_seconds
        and state["restamps"] == restamps
        and state["end_hour"] <= end_hour
        and state["wm"] <= wm
        and (not state["settled"] or (bool(settled) and state["settled"] <= settled))
    )
    if current:
        window = {"first_hour": first_hour, "end_hour": end_hour, "wm": wm}
        sums = state["sums"]
        recount = _to_recount(conn, arms, state, **window)
        new = _new_rows(conn, arms, state, **window)
        _add_new_rows(conn, arms, sums, {k: v for k, v in new.items() if k[0] not in recount})
        _replace(conn, arms, sums, recount, **window)
    else:
        sums = _rebuild(conn, arms, first_hour=first_hour, end_hour=end_hour, wm=wm)
    state = {
        "first_hour": first_hour,
        "end_hour": end_hour,
        "latency": arms.latency_slo_seconds,
        "wm": wm,
        "settled": settled,
        "restamps": restamps,
        "sums": sums,
    }
    set_state(conn, arms.state_key, json.dumps(state))
    return clusters_of(sums)


def forget_others(conn: Connection, keep: Iterable[Arms]) -> int:
    """Drop the kept counts of canaries no longer deployed (both windows of each of `keep`
    stay); returns how many windows' counts were dropped."""
    kept = {arms.kept(period).state_key for arms in keep for period in PERIODS}
    stale = [
        key
        for key in conn.execute(
            sa.select(J.c.key).where(J.c.key.startswith(STATE_PREFIX))
        ).scalars()
        if key not in kept
    ]
    for key in stale:
        *ids, period = key.removeprefix(STATE_PREFIX).split(".")
        model_id, site_id, version_id, control_version_id = map(int, ids)
        arms = Arms(model_id, site_id, version_id, control_version_id, 0.0, period)
        conn.execute(sa.delete(CE).where(arms.rows()))
        conn.execute(sa.delete(J).where(J.c.key == key))
    return len(stale)
