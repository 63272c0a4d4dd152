"""Deep links: the model, site and time range a page shows live in the URL's query string, so
a link (from a Slack page, say) opens exactly that view and the address bar always names it.

A time range is either the last `?days=N` (moving with the clock) or an explicit range of
whole UTC days, `?from=YYYY-MM-DD&to=YYYY-MM-DD` (both inclusive), which shows the same data
whenever the link is opened. Every page picks these through the functions below, which read
`st.query_params` first and write the choice back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import streamlit as st

MODEL, SITE, DAYS, FROM, TO = "model", "site", "days", "from", "to"


def _write(param: str, value: str | None) -> None:
    if value is None:
        if param in st.query_params:
            del st.query_params[param]
    elif st.query_params.get(param) != value:
        st.query_params[param] = value


def pick(
    label: str,
    options: Sequence[str],
    *,
    param: str,
    where: Any = None,
    default: str | None = None,
    key: str | None = None,
) -> str:
    """A selectbox whose initial choice comes from `?param=`, and whose choice goes back there.

    An option named in the URL that does not exist is ignored (the default is shown). With
    nothing to choose from, the page says so and stops.
    """
    options = [str(o) for o in options]
    if not options:
        st.info(
            f"Nothing to choose as {label.lower()} yet: none is registered or has data. "
            "`vigil registry sync` loads config/registry.yaml.",
            icon=":material/hourglass_empty:",
        )
        st.stop()
    wanted = st.query_params.get(param)
    start = wanted if wanted in options else default if default in options else options[0]
    value = (where or st).selectbox(
        label, options, index=options.index(start), key=key or f"link_{param}"
    )
    _write(param, str(value))
    return str(value)


def days(
    label: str = "Days",
    *,
    low: int,
    high: int,
    default: int,
    where: Any = None,
    key: str | None = None,
) -> int:
    """A days slider whose value comes from `?days=` (clipped to its range) and goes back."""
    try:
        wanted = int(float(st.query_params.get(DAYS, default)))
    except ValueError:
        wanted = default
    value = int(
        (where or st).slider(
            label, low, high, min(max(wanted, low), high), key=key or f"link_{DAYS}"
        )
    )
    _write(DAYS, str(value))
    return value


@dataclass(frozen=True)
class TimeRange:
    """The last `days` days up to now, or (`first`, `last`) whole UTC days, both inclusive."""

    days: int | None = None
    first: date | None = None
    last: date | None = None

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        """[start, end) as aware UTC datetimes."""
        if self.first is not None and self.last is not None:
            start = datetime.combine(self.first, time(), tzinfo=UTC)
            return start, datetime.combine(self.last + timedelta(days=1), time(), tzinfo=UTC)
        return now - timedelta(days=self.days or 0), now

    def describe(self) -> str:
        if self.first is not None and self.last is not None:
            return f"{self.first.isoformat()} to {self.last.isoformat()} (UTC)"
        return f"the last {self.days} days"


def parse_range(
    first: str | None, last: str | None, *, today: date, longest: int
) -> tuple[date, date] | None:
    """Dates of `?from=&to=`: None unless both parse as ISO dates with from <= to. `to` is
    clipped to today and the range to its last `longest` days (a page's widest window)."""
    try:
        start, end = date.fromisoformat(str(first)), date.fromisoformat(str(last))
    except ValueError:
        return None
    if start > end:
        return None
    end = min(end, today)
    start = min(max(start, end - timedelta(days=longest - 1)), end)
    return start, end


def range_params(first: date, last: date) -> dict[str, str]:
    """The query parameters of an explicit range, for `url(...)`."""
    return {FROM: first.isoformat(), TO: last.isoformat()}


def time_range(
    label: str = "Days",
    *,
    low: int,
    high: int,
    default: int,
    where: Any = None,
    key: str | None = None,
    today: date | None = None,
) -> TimeRange:
    """The page's time range: the explicit `?from=&to=` dates when the link names valid ones
    (a date picker, clipped to `high` days), else the `?days=` slider; written back either way."""
    place = where or st
    today = today or datetime.now(UTC).date()
    named = parse_range(
        st.query_params.get(FROM), st.query_params.get(TO), today=today, longest=high
    )
    base = key or f"link_{DAYS}"
    exact = place.toggle(
        "Exact dates", value=named is not None, key=f"{base}_exact", help="Whole UTC days."
    )
    if not exact:
        for param in (FROM, TO):
            _write(param, None)
        return TimeRange(
            days=days(label, low=low, high=high, default=default, where=place, key=key)
        )
    first, last = named or (today - timedelta(days=default - 1), today)
    picked = place.date_input(
        "Dates (UTC)",
        value=(first, last),
        min_value=today - timedelta(days=365),
        max_value=today,
        key=f"{base}_dates",
    )
    if isinstance(picked, tuple | list) and len(picked) == 2:
        checked = parse_range(
            picked[0].isoformat(), picked[1].isoformat(), today=today, longest=high
        )
        first, last = checked or (first, last)
    _write(DAYS, None)
    _write(FROM, first.isoformat())
    _write(TO, last.isoformat())
    return TimeRange(first=first, last=last)


def url(path: str, **params: object) -> str:
    """A relative deep link: `url("incidents", model="sepsis", site="UMC")`."""
    from urllib.parse import urlencode

    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return f"/{path.strip('/')}" + (f"?{query}" if query else "")
