"""Cached loaders for the pages: the engine once per process, queries for a short time."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from sqlalchemy.engine import Engine

from store import queries
from store.db import make_engine
from vigil.config import get_settings


@st.cache_resource
def engine() -> Engine:
    return make_engine(get_settings().database_url)


@st.cache_data(ttl=30, show_spinner=False)
def status_grid(monitor: str, metric: str) -> pd.DataFrame:
    return queries.latest_status_grid(engine=engine(), monitor=monitor, metric=metric)


@st.cache_data(ttl=30, show_spinner=False)
def metric_series(monitor: str, metric: str, model: str) -> pd.DataFrame:
    return queries.metric_series(engine=engine(), monitor=monitor, metric=metric, model=model)


@st.cache_data(ttl=10, show_spinner=False)
def heartbeat() -> dict[str, object] | None:
    return queries.scheduler_heartbeat(engine=engine())


@st.cache_data(ttl=30, show_spinner=False)
def volumes() -> pd.DataFrame:
    return queries.volume_summary(engine=engine())


@st.cache_data(ttl=30, show_spinner=False)
def quarantine() -> pd.DataFrame:
    return queries.quarantine_counts(engine=engine())
