"""CLI commands of each area; each module exposes register(app: typer.Typer)."""
