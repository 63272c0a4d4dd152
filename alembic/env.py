"""Alembic environment: migrates the database named by VIGIL_DATABASE_URL (or the ini)."""

from __future__ import annotations

from sqlmodel import SQLModel

import store.models  # noqa: F401  (registers every table on SQLModel.metadata)
from alembic import context
from store.db import make_engine
from store.partitions import modelled, modelled_on_postgresql
from vigil.config import get_settings

config = context.config
target_metadata = SQLModel.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            # PostgreSQL's month partitions and key table are made by migration 0008 and
            # store/partitions.py, not by a model: autogenerate must not drop them.
            include_name=modelled,
            include_object=modelled_on_postgresql
            if connection.dialect.name == "postgresql"
            else None,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
