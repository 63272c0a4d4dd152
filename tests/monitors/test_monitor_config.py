"""Monitor settings from YAML: layered defaults, and an edited file is read again."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from monitors.config import MonitorConfig


@dataclass
class Settings:
    window_days: int = 7
    threshold: float = 0.1


def _write(path: Path, text: str, *, mtime_ns: int) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_settings_layer_defaults_model_and_site(tmp_path: Path) -> None:
    path = tmp_path / "monitors.yaml"
    _write(
        path,
        "drift:\n  defaults: {window_days: 14}\n  models:\n    sepsis:\n      threshold: 0.2\n"
        "      sites: {UMC: {window_days: 3}}\n",
        mtime_ns=1_000_000_000,
    )
    config = MonitorConfig.from_file(path)
    assert config.for_monitor("drift", Settings, model="sepsis") == Settings(14, 0.2)
    assert config.for_monitor("drift", Settings, model="sepsis", site="UMC") == Settings(3, 0.2)
    assert config.for_monitor("drift", Settings, model="other") == Settings(14, 0.1)
    assert config.for_monitor("calibration", Settings, model="sepsis") == Settings()


def test_an_edited_file_is_read_again_and_a_missing_one_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "monitors.yaml"
    _write(path, "drift:\n  defaults: {window_days: 14}\n", mtime_ns=1_000_000_000)
    assert MonitorConfig.from_file(path).for_monitor("drift", Settings, model="m").window_days == 14
    # The same size, a later modification time: the parsed copy must not be reused.
    _write(path, "drift:\n  defaults: {window_days: 21}\n", mtime_ns=2_000_000_000)
    assert MonitorConfig.from_file(path).for_monitor("drift", Settings, model="m").window_days == 21
    # Asking for settings does not change what a later caller reads.
    first = MonitorConfig.from_file(path)
    first.for_monitor("drift", Settings, model="m", site="X")
    assert MonitorConfig.from_file(path).for_monitor("drift", Settings, model="m") == Settings(21)
    path.unlink()
    assert MonitorConfig.from_file(path).for_monitor("drift", Settings, model="m") == Settings()


def test_an_unknown_setting_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "monitors.yaml"
    _write(path, "drift:\n  defaults: {windw_days: 14}\n", mtime_ns=1_000_000_000)
    with pytest.raises(ValueError, match="windw_days"):
        MonitorConfig.from_file(path).for_monitor("drift", Settings, model="m")
