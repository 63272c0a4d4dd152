"""Model cards: one YAML file per model holding the HTI-1 predictive DSI source attributes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CARDS_DIR = Path("config/model_cards")

# The source attributes every card must state, with the words a reader sees.
REQUIRED_ATTRIBUTES: dict[str, str] = {
    "developer": "Developer",
    "intended_use": "Intended use",
    "intended_population": "Intended population",
    "intended_users": "Intended users",
    "cautioned_uses": "Cautioned (out-of-scope) uses",
    "known_risks": "Known risks and limitations",
    "training_data": "Training data",
    "fairness_approach": "Fairness approach",
    "external_validation": "External validation",
    "monitoring": "Monitoring process and frequency",
    "update_process": "Update process",
}


@dataclass(frozen=True)
class ModelCard:
    model: str
    name: str
    attributes: dict[str, str]
    source: Path | None

    @property
    def missing(self) -> list[str]:
        """Required attributes the card leaves empty or out."""
        return [key for key in REQUIRED_ATTRIBUTES if not self.attributes.get(key, "").strip()]


def parse_card(data: dict[str, Any], *, model: str, source: Path | None = None) -> ModelCard:
    attributes = {
        key: " ".join(str(value).split())
        for key, value in data.items()
        if key not in {"model", "name"} and value is not None
    }
    return ModelCard(
        model=str(data.get("model") or model),
        name=str(data.get("name") or model),
        attributes=attributes,
        source=source,
    )


def load_card(model: str, cards_dir: Path = DEFAULT_CARDS_DIR) -> ModelCard:
    """The card of `model`; a model without a card file gets an empty card (all missing)."""
    path = cards_dir / f"{model}.yaml"
    if not path.exists():
        return ModelCard(model=model, name=model, attributes={}, source=None)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a model card must be a mapping of attributes")
    return parse_card(data, model=model, source=path)
