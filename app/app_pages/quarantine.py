"""Quarantine: input rows refused by their contract, per source and reason, and the latest ones."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from sqlalchemy.exc import DBAPIError

from app import data
from collectors import quarantine as q
from collectors.contracts import REASONS

ALL = "all"


@st.cache_data(ttl=30, show_spinner=False)
def _counts() -> pd.DataFrame:
    return q.quarantine_counts(engine=data.engine())


@st.cache_data(ttl=30, show_spinner=False)
def _recent(source: str | None, reason: str | None, limit: int) -> pd.DataFrame:
    return q.recent_quarantine(engine=data.engine(), source=source, reason=reason, limit=limit)


st.title("Quarantined input")
st.caption(
    "Rows that broke their data contract (docs/contracts.md). The rest of each file landed; "
    "identifiers are redacted."
)
try:
    counts = _counts()
except DBAPIError:
    st.error("The Vigil database is unreachable.", icon=":material/database_off:")
    st.stop()

if counts.empty:
    st.success("No input rows have been quarantined.", icon=":material/check_circle:")
    st.stop()

total = int(counts["rows"].sum())
cols = st.columns(3)
cols[0].metric("Rows quarantined", f"{total:,}")
cols[1].metric("Sources", counts["source"].nunique())
cols[2].metric("Reasons", counts["reason"].nunique())

shown = counts.assign(meaning=counts["reason"].map(REASONS).fillna(""))
st.subheader("Per source and reason")
st.dataframe(shown, hide_index=True, width="stretch")

st.subheader("Latest rows")
left, right = st.columns(2)
source = left.selectbox("Source", [ALL, *sorted(counts["source"].unique())])
reason = right.selectbox("Reason", [ALL, *sorted(counts["reason"].unique())])
recent = _recent(None if source == ALL else source, None if reason == ALL else reason, 200)
st.dataframe(recent, hide_index=True, width="stretch")
