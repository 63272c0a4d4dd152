"""Model cards: every shipped card states every HTI-1 source attribute; gaps are named."""

from __future__ import annotations

from pathlib import Path

import yaml

from reports.model_cards import REQUIRED_ATTRIBUTES, load_card

CARDS = Path(__file__).resolve().parents[2] / "config" / "model_cards"
REGISTRY = Path(__file__).resolve().parents[2] / "config" / "registry.yaml"


def test_every_registered_model_has_a_complete_card() -> None:
    models = [m["name"] for m in yaml.safe_load(REGISTRY.read_text())["models"]]
    for model in models:
        card = load_card(model, CARDS)
        assert card.source is not None, model
        assert card.missing == [], (model, card.missing)


def test_missing_attributes_are_reported(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("model: m\nname: M\ndeveloper: Someone\nknown_risks: '  '\n")
    card = load_card("m", tmp_path)
    assert "developer" not in card.missing
    assert "known_risks" in card.missing
    assert len(card.missing) == len(REQUIRED_ATTRIBUTES) - 1
    assert load_card("absent", tmp_path).missing == list(REQUIRED_ATTRIBUTES)
