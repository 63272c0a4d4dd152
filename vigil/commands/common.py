"""What every area's commands share: the engine, the acting person, and running an action."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from sqlalchemy.engine import Engine

from incidents.auth import Actor, PermissionDenied, Role
from vigil.config import get_settings


def engine() -> Engine:
    from store.db import make_engine

    return make_engine(get_settings().database_url)


def actor(name: str, role: str) -> Actor:
    try:
        return Actor(name, Role(role))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def run_action(call: Callable[[], Any]) -> None:
    """Run an action; permission, validation and lookup errors exit non-zero with the reason."""
    try:
        result = call()
    except PermissionDenied as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(3) from exc
    except (ValueError, LookupError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(result.message)
