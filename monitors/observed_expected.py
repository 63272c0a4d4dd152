"""Observed-to-expected ratio of outcomes, on settled labels only, with an exact Poisson CI."""

from __future__ import annotations

from dataclasses import dataclass

from scipy import stats

from monitors.base import Status


@dataclass(frozen=True)
class OEConfig:
    window_days: int = 7
    min_expected: float = 10.0
    min_label_completeness: float = 0.95
    lower_tolerance: float = 0.8
    upper_tolerance: float = 1.25
    ci_level: float = 0.95
    # Variance inflation for outcomes shared by several predictions of one encounter
    # (Kish design effect). None: derived from the model, horizon / scoring interval.
    design_effect: float | None = None


@dataclass(frozen=True)
class OEEstimate:
    observed: int
    expected: float
    ratio: float | None
    ci_low: float | None
    ci_high: float | None


def observed_to_expected(
    observed: int, expected: float, ci_level: float = 0.95, design_effect: float = 1.0
) -> OEEstimate:
    """O:E with the exact (Garwood) Poisson interval for O divided by E.

    Garwood 1936: the interval for a Poisson mean given count O is
    chi2(a/2, 2O)/2 .. chi2(1-a/2, 2O+2)/2. With a design effect d > 1 (several predictions
    sharing one encounter's outcome) the interval is computed on the effective counts O/d and
    E/d (Kish 1965), which widens it by about sqrt(d) and leaves the ratio unchanged.
    """
    if expected <= 0:
        return OEEstimate(observed, expected, None, None, None)
    alpha = 1.0 - ci_level
    d = max(1.0, design_effect)
    o_eff, e_eff = observed / d, expected / d
    low = 0.0 if observed == 0 else stats.chi2.ppf(alpha / 2, 2 * o_eff) / 2
    high = stats.chi2.ppf(1 - alpha / 2, 2 * o_eff + 2) / 2
    return OEEstimate(
        observed, expected, observed / expected, float(low / e_eff), float(high / e_eff)
    )


def design_effect_for(horizon_hours: float, scoring_interval_minutes: int) -> float:
    """How many successive scores of one encounter can share one outcome (at least 1)."""
    if scoring_interval_minutes <= 0:
        return 1.0
    return max(1.0, horizon_hours * 60.0 / scoring_interval_minutes)


def classify(
    estimate: OEEstimate, *, n_ok: int, n_settled: int, config: OEConfig
) -> tuple[Status, str]:
    """Status of one O:E window and the reason in words."""
    completeness = n_settled / n_ok if n_ok else 0.0
    if n_ok == 0:
        return Status.INSUFFICIENT, "no scored predictions in the window"
    if completeness < config.min_label_completeness:
        return Status.INSUFFICIENT, (
            f"labels not yet settled: {completeness:.0%} of predictions settled "
            f"(needs {config.min_label_completeness:.0%})"
        )
    if estimate.ratio is None or estimate.ci_low is None or estimate.ci_high is None:
        return Status.INSUFFICIENT, "no expected events in the window"
    # An exact interval is valid at any count, so a clear breach is reported even when the
    # window is small; only the softer verdicts need the minimum expected count.
    if estimate.ci_low > config.upper_tolerance or estimate.ci_high < config.lower_tolerance:
        return Status.BREACH, "CI lies wholly outside the tolerance band"
    if estimate.expected < config.min_expected:
        return Status.INSUFFICIENT, (
            f"too few expected events ({estimate.expected:.1f} < {config.min_expected:g})"
        )
    if estimate.ci_low > 1.0 or estimate.ci_high < 1.0:
        return Status.WARN, "CI excludes 1 but overlaps the tolerance band"
    return Status.OK, "CI includes 1"


def rule_text(config: OEConfig) -> str:
    return (
        f"breach if the {config.ci_level:.0%} CI lies outside "
        f"{config.lower_tolerance:g}-{config.upper_tolerance:g}; warn if it excludes 1"
    )
