"""Deep links: the model, site and time range a page shows live in the URL's query string, so
a link (from a Slack page, say) opens exactly that view and the address bar always names it.

Every page picks these through the functions below, which read `st.query_params` first and
write the choice back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

MODEL, SITE, DAYS = "model", "site", "days"


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


def url(path: str, **params: object) -> str:
    """A relative deep link: `url("incidents", model="sepsis", site="UMC")`."""
    from urllib.parse import urlencode

    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return f"/{path.strip('/')}" + (f"?{query}" if query else "")
