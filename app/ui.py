"""What every page shares: the health banners (database, scheduler heartbeat), explained empty
states and the small-sample caution. Pages call these instead of writing their own."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TypeVar

import pandas as pd
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app import data
from incidents.auth import PermissionDenied
from vigil.config import get_settings

T = TypeVar("T")

# Characters that make Markdown (or Streamlit's :color[] and :icon: syntax) out of plain text:
# code, emphasis, links and images, HTML, strikethrough, LaTeX, tables, headings; a colon only
# where it opens a directive. Line-start markers are escaped at the start of the text.
_MARKUP = re.compile(r"[\\`*_\[\]<>~$|#]|:(?=[\w/+-]+[\[:])")
_LINE_START = re.compile(r"^(\s*)([-+=]|\d+(?=[.)]))")


def markdown_text(value: object) -> str:
    """Free text (reasons, notes, names, alert text) to put inside a Markdown string: the
    characters that would make markup backslash-escaped and line breaks flattened, so HTML,
    links, images, emphasis and :color[] directives show as the characters typed."""
    if value is None:
        return ""
    text = _MARKUP.sub(lambda m: "\\" + m.group(), " ".join(str(value).splitlines()))
    start = _LINE_START.match(text)
    if start is None:
        return text
    if start.group(2)[0].isdigit():  # "1. text" would start a numbered list
        at = start.end()
        return text[:at] + "\\" + text[at:]
    return start.group(1) + "\\" + text[len(start.group(1)) :]


def run_action(call: Callable[[], T]) -> T | None:
    """Run an action from a page: its result, or None once the refusal (permission, invalid
    input, unknown name) is shown. The action checks the role itself; messages are shown as
    text, since they may repeat what was typed."""
    try:
        return call()
    except PermissionDenied as exc:
        st.error(f"Refused: {markdown_text(exc)}", icon=":material/block:")
    except (ValueError, LookupError) as exc:
        st.error(markdown_text(exc), icon=":material/error:")
    return None


def age(moment: object, *, now: datetime | None = None) -> str:
    """'42 s ago', '12 min ago', '3.5 h ago', '2.0 days ago' or 'never'."""
    if isinstance(moment, pd.Timestamp):
        moment = moment.to_pydatetime()
    if not isinstance(moment, datetime):
        return "never"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def database_unreachable(exc: BaseException | None = None) -> None:
    cause = getattr(exc, "orig", None) or exc
    st.error(
        "The Vigil database is unreachable, so nothing on this page can be shown. "
        "Check that the database is running and VIGIL_DATABASE_URL points at it"
        + (f" ({type(cause).__name__})." if cause is not None else "."),
        icon=":material/database_off:",
    )


def heartbeat_late(beat: dict[str, object] | None, *, now: datetime, late_after: int) -> bool:
    """Whether the scheduler's last heartbeat is older than `late_after` seconds (or absent)."""
    if beat is None:
        return True
    at = beat.get("beat_at")
    return not isinstance(at, datetime) or (now - at).total_seconds() > late_after


def health_banner() -> bool:
    """Banners on every page: the database unreachable (returns False: show nothing else) or
    the scheduler's heartbeat late (the figures may be stale)."""
    try:
        beat = data.heartbeat()
    except SQLAlchemyError as exc:
        database_unreachable(exc)
        return False
    now = datetime.now(UTC)
    late_after = get_settings().heartbeat_late_seconds
    if beat is None:
        st.warning(
            "The scheduler has never run: no monitors have been computed yet. "
            "Start it with `vigil schedule` (or `make run`).",
            icon=":material/schedule:",
        )
    elif heartbeat_late(beat, now=now, late_after=late_after):
        st.warning(
            f"The scheduler's heartbeat is late (last beat {age(beat.get('beat_at'), now=now)}; "
            f"expected within {late_after} s): the figures on this page may be stale.",
            icon=":material/heart_broken:",
        )
    return True


def small_samples(
    frame: pd.DataFrame, *, n_column: str = "n", minimum: int | None = None
) -> pd.DataFrame:
    """The rows whose sample (`n_column`) is below the caution size."""
    limit = get_settings().small_sample_n if minimum is None else minimum
    if frame.empty or n_column not in frame:
        return frame.iloc[0:0]
    n = pd.to_numeric(frame[n_column], errors="coerce")
    return frame[n.notna() & (n < limit)]


def small_sample_caution(
    frame: pd.DataFrame,
    *,
    n_column: str = "n",
    what: str = "predictions",
    keys: Iterable[str] = ("model", "site"),
) -> None:
    """A caution under a table or chart naming the low-volume cells, whose figures are noisy."""
    small = small_samples(frame, n_column=n_column)
    if small.empty:
        return
    keys = [k for k in keys if k in small]
    cells = sorted(
        {
            " at ".join(str(row[k]) for k in keys) + f" (n={int(row[n_column])})"
            for _, row in small.iterrows()
        }
    )
    st.caption(
        f":material/warning: Small samples — fewer than {get_settings().small_sample_n} {what} "
        f"in the window, so read these with caution (wide intervals): {', '.join(cells)}."
    )


def no_predictions_since(volumes: pd.DataFrame, *, model: str, site: str) -> str:
    """The empty-state sentence for a model × site that has gone quiet."""
    rows = (
        volumes[(volumes["model"] == model) & (volumes["site"] == site)]
        if not volumes.empty
        else volumes
    )
    if rows.empty or pd.isna(rows["last_hour"].max()):
        return f"No predictions from {site} for {model} have ever been collected."
    last = datetime.fromtimestamp(int(rows["last_hour"].max()) * 3600, tz=UTC)
    return f"No predictions from {site} for {model} since {last:%Y-%m-%d %H:00} UTC ({age(last)})."


LABELS_PENDING = (
    "Labels not yet settled for this window: outcomes arrive up to the model's label lag after "
    "scoring, so this figure appears once enough of them are in."
)
