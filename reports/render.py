"""The governance report as one self-contained HTML file, and its print variant for the PDF.

Pure: a GovernanceReport in, a string out. Every free-text field (names, reasons, summaries,
card attributes) goes through `html.escape`, so text from the store is shown, never run.

Charts: the screen HTML carries interactive plotly charts with plotly.js inlined once (the
first chart) and no network reference. The print variant draws the same series as inline SVG
polylines: static by construction, so the PDF never depends on scripts having run before
Chromium prints, and the PDF stays small.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import plotly.graph_objects as go

from app.charts import STATUS_COLORS
from reports.governance import (
    Episode,
    GovernanceReport,
    Measure,
    ModelReport,
    Trend,
)
from reports.model_cards import REQUIRED_ATTRIBUTES

RAG_COLORS = {
    "green": STATUS_COLORS["ok"],
    "amber": STATUS_COLORS["warn"],
    "red": STATUS_COLORS["breach"],
    "grey": STATUS_COLORS["insufficient-data"],
}
SERIES_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")

CSS = """
body { font-family: "DejaVu Sans", Arial, sans-serif; font-size: 12px; color: #222;
       margin: 24px; }
h1 { font-size: 22px; } h2 { font-size: 18px; border-bottom: 2px solid #444; }
h3 { font-size: 14px; margin-top: 18px; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.rag { color: #fff; font-weight: bold; text-align: center; }
.note { color: #555; font-style: italic; }
.missing { color: #c62828; font-weight: bold; }
section.model { page-break-before: always; break-before: page; }
@media print { body { margin: 0; } .screen-only { display: none; } }
@page { size: A4; margin: 14mm; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ts(moment: datetime | None) -> str:
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if hours or days:
        parts.append(f"{hours} h")
    parts.append(f"{mins} min")
    return " ".join(parts)


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if value is None else fmt.format(value)


def _measure(m: Measure, fmt: str = "{:.2f}") -> str:
    """A value with its CI; a withheld value shows the reason instead (never a zero)."""
    if m.value is None:
        return f'<span class="note">{esc(m.note or "not available")}</span>'
    ci = ""
    if m.ci_low is not None and m.ci_high is not None:
        ci = f" ({fmt.format(m.ci_low)}–{fmt.format(m.ci_high)})"
    return f"{fmt.format(m.value)}{ci}"


def _change(value: float | None, fmt: str = "{:+.2f}") -> str:
    return "—" if value is None else fmt.format(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="note">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _rag_cell(rag: str) -> str:
    return f'<td class="rag" style="background:{RAG_COLORS[rag]}">{esc(rag.upper())}</td>'


def _rag_span(rag: str) -> str:
    return (
        f'<span class="rag" style="background:{RAG_COLORS[rag]};padding:1px 6px">'
        f"{esc(rag.upper())}</span>"
    )


# ---------------------------------------------------------------- charts


def trend_figure(trend: Trend) -> go.Figure:
    """A daily/weekly series per site as a plotly line chart."""
    fig = go.Figure()
    for site, values in trend.values.items():
        fig.add_trace(go.Scatter(x=trend.days, y=values, mode="lines+markers", name=site))
    fig.update_layout(title=trend.name, height=300, margin={"l": 40, "r": 10, "t": 40, "b": 40})
    return fig


def trend_svg(trend: Trend, width: int = 640, height: int = 220) -> str:
    """The same series as a static inline SVG line chart (for print)."""
    points = [v for values in trend.values.values() for v in values if v is not None]
    title = f"<p><b>{esc(trend.name)}</b></p>"
    if not points or len(trend.days) < 2:
        return title + '<p class="note">no values to chart for this month</p>'
    top = max(points) * 1.1 or 1.0
    left, right, upper, lower = 48, 10, 10, 30
    plot_w, plot_h = width - left - right, height - upper - lower

    def xy(i: int, v: float) -> str:
        x = left + plot_w * i / (len(trend.days) - 1)
        y = upper + plot_h * (1 - v / top)
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(trend.name)}">',
        f'<rect x="{left}" y="{upper}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#999"/>',
        f'<text x="{left - 4}" y="{upper + 8}" font-size="9" text-anchor="end">{top:.3g}</text>',
        f'<text x="{left - 4}" y="{upper + plot_h}" font-size="9" text-anchor="end">0</text>',
        f'<text x="{left}" y="{height - 12}" font-size="9">{esc(trend.days[0])}</text>',
        f'<text x="{left + plot_w}" y="{height - 12}" font-size="9" text-anchor="end">'
        f"{esc(trend.days[-1])}</text>",
    ]
    legend_x = left + 4
    for k, (site, values) in enumerate(trend.values.items()):
        colour = SERIES_COLORS[k % len(SERIES_COLORS)]
        segment: list[str] = []
        segments = []
        for i, v in enumerate(values):
            if v is None:
                if segment:
                    segments.append(segment)
                segment = []
            else:
                segment.append(xy(i, v))
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) == 1:
                x, y = seg[0].split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2" fill="{colour}"/>')
            else:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                    f'points="{" ".join(seg)}"/>'
                )
        parts.append(
            f'<text x="{legend_x}" y="{height - 2}" font-size="9" fill="{colour}">'
            f"■ {esc(site)}</text>"
        )
        legend_x += 12 + 7 * len(site)
    parts.append("</svg>")
    return title + "".join(parts)


class _Charts:
    """Turns trends into chart markup: plotly (plotly.js inlined once) or static SVG."""

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive
        self.first = True

    def __call__(self, trend: Trend) -> str:
        if not self.interactive or not any(
            v is not None for vs in trend.values.values() for v in vs
        ):
            return trend_svg(trend)  # also says so when there is nothing to chart
        markup = trend_figure(trend).to_html(
            full_html=False, include_plotlyjs=self.first, config={"displaylogo": False}
        )
        self.first = False
        return markup


# ---------------------------------------------------------------- sections


def summary_section(report: GovernanceReport) -> str:
    sites = sorted({s.site for m in report.models for s in m.status})
    rows = []
    for m in report.models:
        by_site = {s.site: s.rag for s in m.status}
        cells = "".join(
            _rag_cell(by_site[s]) if s in by_site else '<td class="note">not deployed</td>'
            for s in sites
        )
        rows.append(f"<tr><td>{esc(m.title)} ({esc(m.model)})</td>{cells}</tr>")
    head = "".join(f"<th>{esc(s)}</th>" for s in sites)
    grid = (
        f"<table><thead><tr><th>model</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="note">no models in the registry</p>'
    )
    counts = []
    for m in report.models:
        kinds: dict[str, int] = {}
        for e in m.episodes:
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
        text = ", ".join(f"{n} {esc(k)}" for k, n in sorted(kinds.items())) or "none"
        counts.append(f"<li><b>{esc(m.model)}</b>: {text}</li>")
    return (
        "<section><h2>Summary</h2>"
        f"<p>Status of each model at each site in {esc(report.month.title)} "
        f"(red / amber / green).</p>{grid}"
        f'<p class="note">{esc(report.rag_rules)}</p>'
        f"<h3>Incidents, alerts and disablements in the month</h3><ul>{''.join(counts)}</ul>"
        "</section>"
    )


def _episode_rows(episodes: Sequence[Episode], month_end: datetime) -> list[list[str]]:
    return [
        [
            esc(e.kind),
            esc(e.site),
            esc(_ts(e.start)),
            esc(_ts(e.end)) if e.end else "ongoing at month end",
            esc(_duration(e.duration(month_end))) + ("" if e.end else "+"),
            esc(e.severity),
            esc(e.summary),
        ]
        for e in episodes
    ]


def model_section(m: ModelReport, report: GovernanceReport, charts: _Charts) -> str:
    month = report.month
    out = [f'<section class="model"><h2>{esc(m.title)} ({esc(m.model)})</h2>']
    out.append(f"<p>{esc(month.title)}: {len(m.sites)} site(s).</p>")

    out.append("<h3>Status by site</h3>")
    out.append(
        _table(
            ["site", "status", "why"],
            (
                [esc(s.site), _rag_span(s.rag), "; ".join(esc(r) for r in s.reasons)]
                for s in m.status
            ),
            "no sites",
        )
    )

    out.append("<h3>Model card (ONC HTI-1 source attributes)</h3>")
    attrs = m.card.attributes
    card_rows = []
    for key, label in REQUIRED_ATTRIBUTES.items():
        value = attrs.get(key, "").strip()
        shown = esc(value) if value else '<span class="missing">MISSING</span>'
        card_rows.append([esc(label), shown])
    out.append(_table(["attribute", "statement"], card_rows, "no card"))
    if m.card_missing:
        out.append(
            '<p class="missing">Missing source attributes: '
            + esc(", ".join(m.card_missing))
            + "</p>"
        )
    out.append(
        _table(
            [
                "version",
                "stage",
                "threshold",
                "training data",
                "features",
                "calibration",
                "approver",
                "deployments",
            ],
            (
                [
                    esc(v.version),
                    esc(v.stage),
                    f"{v.threshold:g}",
                    esc(v.training_data),
                    esc(v.feature_set),
                    esc(v.calibration),
                    esc(v.approver or "—"),
                    esc("; ".join(v.deployments) or "none"),
                ]
                for v in m.versions
            ),
            "no versions registered",
        )
    )

    out.append("<h3>Volume</h3>")
    out.append(
        _table(
            ["site", "scores", "produced", "failed", "alerting", "degraded"],
            (
                [
                    esc(v.site),
                    f"{v.scored:,}",
                    f"{v.ok:,}",
                    f"{v.failed:,}",
                    f"{v.alerts:,}",
                    f"{v.degraded:,}",
                ]
                for v in m.volume
            ),
            f"no predictions for {m.model} in {month.label}",
        )
    )

    out.append("<h3>Service levels (whole month)</h3>")
    out.append(
        _table(
            ["SLO", "site", "target", "attained", "good / total", "error budget left", "met"],
            (
                [
                    esc(s.slo),
                    esc(s.site),
                    f"{s.target:.2%}",
                    _num(s.attainment, "{:.3%}"),
                    f"{s.good:,} / {s.total:,}",
                    _num(s.budget_remaining, "{:.0%}"),
                    "—" if s.met is None else ("yes" if s.met else "<b>NO</b>"),
                ]
                for s in m.slos
            ),
            f"no SLO data for {m.model} in {month.label}",
        )
    )

    out.append("<h3>Incidents, alerts and disablements</h3>")
    out.append(
        _table(
            ["kind", "site", "start", "end", "duration", "severity", "what"],
            _episode_rows(m.episodes, month.end),
            f"no incidents, alerts or disablements for {m.model} in {month.label}",
        )
    )

    out.append(
        "<h3>Calibration and discrimination by site (month, settled labels; 95% CI; "
        "change from the previous month)</h3>"
    )
    rows = []
    for q in m.quality:
        c = q.current
        if c is None:
            rows.append(
                [
                    esc(q.site),
                    f'<span class="note">no predictions for {esc(m.model)} at '
                    f"{esc(q.site)} in {esc(month.label)}</span>",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        measures = (c.oe, c.intercept, c.slope, c.ici, c.auroc, c.ppv)
        if all(x.value is None for x in measures) and len({x.note for x in measures}) == 1:
            # One reason withholds every figure (e.g. labels not yet settled): say it once.
            rows.append(
                [
                    esc(q.site),
                    f"{c.observed:,} / {c.expected:,.1f}"
                    + (f" ({c.completeness:.0%} settled)" if c.completeness is not None else ""),
                    f'<span class="note">{esc(c.oe.note)}</span>',
                    *[""] * 5,
                ]
            )
            continue
        rows.append(
            [
                esc(q.site),
                f"{c.observed:,} / {c.expected:,.1f}"
                + (f" ({c.completeness:.0%} settled)" if c.completeness is not None else ""),
                _measure(c.oe) + f"<br>Δ {_change(q.change('oe'))}",
                _measure(c.intercept) + f"<br>Δ {_change(q.change('intercept'))}",
                _measure(c.slope) + f"<br>Δ {_change(q.change('slope'))}",
                _measure(c.ici, "{:.4f}") + f"<br>Δ {_change(q.change('ici'), '{:+.4f}')}",
                _measure(c.auroc, "{:.3f}") + f"<br>Δ {_change(q.change('auroc'), '{:+.3f}')}",
                _measure(c.ppv, "{:.3f}") + f"<br>Δ {_change(q.change('ppv'), '{:+.3f}')}",
            ]
        )
    out.append(
        _table(
            [
                "site",
                "observed / expected events",
                "O:E",
                "intercept",
                "slope",
                "ICI",
                "AUROC",
                "PPV",
            ],
            rows,
            "no sites",
        )
    )

    out.append("<h3>Drift signals and actions</h3>")
    out.append(
        _table(
            ["site", "input", "days flagged", "worst", "max PSI", "missing (this / last month)"],
            (
                [
                    esc(d.site),
                    esc(d.feature),
                    str(d.flagged_days),
                    esc(d.worst_status),
                    _num(d.max_psi),
                    _num(d.missing_share, "{:.1%}")
                    + " / "
                    + _num(d.previous_missing_share, "{:.1%}"),
                ]
                for d in m.drift
            ),
            f"no data drift flagged for {m.model} in {month.label}",
        )
    )
    actions = [c for c in m.changes if c.action in ("disable_score", "rollback", "edit_thresholds")]
    out.append(f"<p>Actions taken on signals this month: {len(actions)} (see the change log).</p>")

    out.append("<h3>Alert burden</h3>")
    out.append(
        _table(
            [
                "site",
                "scores",
                "alerting scores",
                "shown alerts",
                "per 100 patient-days",
                "PPV (95% CI)",
                "NNE",
                "spike days",
            ],
            (
                [
                    esc(b.site),
                    f"{b.scored:,}",
                    f"{b.alerting_scores:,}",
                    "not counted" if b.shown_alerts is None else f"{b.shown_alerts:,}",
                    _num(b.alerts_per_100_patient_days, "{:.1f}"),
                    _measure(b.ppv, "{:.3f}"),
                    _num(b.nne, "{:.1f}"),
                    esc(", ".join(b.spike_days) or "none"),
                ]
                for b in m.burden
            ),
            f"no alerts data for {m.model} in {month.label}",
        )
    )
    for trend in m.trends:
        out.append(charts(trend))

    out.append("<h3>Canary results and promotions</h3>")
    out.append(
        _table(
            [
                "site",
                "canary",
                "control",
                "judgement",
                "window",
                "verdict",
                "score",
                "recommendation",
            ],
            (
                [
                    esc(c.site),
                    esc(c.version),
                    esc(c.control_version),
                    esc(c.kind),
                    f"{esc(_ts(c.window_start))} → {esc(_ts(c.window_end))}",
                    esc(c.verdict),
                    _num(c.score, "{:.0f}"),
                    esc(c.recommendation),
                ]
                for c in m.canary
            ),
            f"no canary judged for {m.model} in {month.label}",
        )
    )

    out.append("<h3>Change log (from the audit log)</h3>")
    out.append(
        _table(
            ["when", "who", "role", "action", "target", "detail"],
            (
                [
                    esc(_ts(c.at)),
                    esc(c.actor),
                    esc(c.role),
                    esc(c.action),
                    esc(c.target),
                    esc(c.summary),
                ]
                for c in m.changes
            ),
            f"no versions, thresholds or approvals changed for {m.model} in {month.label}",
        )
    )

    out.append("<h3>What this month's data cannot say</h3>")
    if m.missing:
        out.append("<ul>" + "".join(f"<li>{esc(s)}</li>" for s in m.missing) + "</ul>")
    else:
        out.append("<p>Every site has predictions and settled labels for the month.</p>")
    out.append("</section>")
    return "".join(out)


def render_html(report: GovernanceReport, *, interactive: bool = True) -> str:
    """The whole report as one HTML document (interactive=False: the print variant)."""
    charts = _Charts(interactive)
    body = [
        f"<h1>Vigil governance report — {esc(report.month.title)}</h1>",
        f"<p>Generated {esc(_ts(report.generated_at))} for the month "
        f"{esc(_ts(report.month.start))} to {esc(_ts(report.month.end))} (end exclusive). "
        f"Models: {esc(', '.join(m.model for m in report.models) or 'none')}.</p>",
        summary_section(report),
    ]
    if not report.models:
        body.append('<p class="note">No models are registered.</p>')
    body.extend(model_section(m, report, charts) for m in report.models)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Vigil governance report {esc(report.month.label)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>"
    )
