"""One Settings object: the only place that reads the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Secrets that ship in the repository for the demo; refused outside demo mode.
DEMO_PSEUDONYM_KEY = "vigil-demo-pseudonym-key-not-for-production"


class Settings(BaseSettings):
    """Runtime configuration, read from VIGIL_* environment variables (or a .env file)."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///data/vigil.db"
    registry_path: Path = Path("config/registry.yaml")
    inbox_dir: Path = Path("data/inbox")
    processed_dir: Path = Path("data/processed")
    scheduler_db_url: str | None = None  # defaults to database_url
    demo_mode: bool = True
    # HMAC-SHA256 key that turns encounter ids into pseudonymous keys at ingestion.
    pseudonym_key: str = DEMO_PSEUDONYM_KEY
    heartbeat_seconds: int = 15
    heartbeat_late_seconds: int = 90
    collect_interval_seconds: int = 60
    monitor_interval_seconds: int = 300
    simulate_interval_seconds: int = 60
    app_port: int = 8501
    # Size of the demo `vigil bootstrap` loads into an empty store.
    demo_days: int = 90
    demo_future_days: int = 14
    demo_bed_scale: float = 1.0
    spool_dir: Path = Path("data/spool")
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _normalise_postgres_driver(cls, value: str) -> str:
        # Plain postgresql:// would pick psycopg2, which is not installed.
        if value.startswith("postgresql://"):
            return "postgresql+psycopg://" + value.removeprefix("postgresql://")
        return value

    @model_validator(mode="after")
    def _refuse_demo_secrets_in_production(self) -> Settings:
        if not self.demo_mode and self.pseudonym_key == DEMO_PSEUDONYM_KEY:
            raise ValueError(
                "VIGIL_PSEUDONYM_KEY is the demo key; set a secret key when VIGIL_DEMO_MODE=false"
            )
        return self

    @property
    def scheduler_url(self) -> str:
        return self.scheduler_db_url or self.database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
