"""Monitor settings from config/monitors.yaml: defaults, then per model, then per site."""

from __future__ import annotations

from dataclasses import fields
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

DEFAULT_MONITOR_CONFIG = Path("config/monitors.yaml")


class MonitorConfig:
    """Layered settings for every monitor, read once from a YAML file."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self._data = data or {}

    @classmethod
    def from_file(cls, path: Path = DEFAULT_MONITOR_CONFIG) -> MonitorConfig:
        """The settings in `path` (none when it is missing). The parsed file is reused while
        its modification time and size stay the same: every monitor run asks for it."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            return cls({})
        return cls(_parse(path.resolve(), stat.st_mtime_ns, stat.st_size))

    def for_monitor(self, monitor: str, cls: type[T], *, model: str, site: str | None = None) -> T:
        """`cls` (a dataclass) filled from defaults, overridden by the model, then the site."""
        section = self._data.get(monitor, {})
        merged: dict[str, Any] = dict(section.get("defaults", {}))
        model_section = section.get("models", {}).get(model, {})
        merged.update({k: v for k, v in model_section.items() if k != "sites"})
        if site is not None:
            merged.update(model_section.get("sites", {}).get(site, {}))
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(merged) - known
        if unknown:
            raise ValueError(f"{monitor}: unknown settings {sorted(unknown)}")
        return cls(**merged)


@lru_cache(maxsize=16)
def _parse(path: Path, mtime_ns: int, size: int) -> dict[str, Any]:
    """The YAML in `path` as of that modification time and size (the cache key)."""
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
