"""One Settings object: the only place that reads the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Secrets that ship in the repository for the demo; refused outside demo mode.
DEMO_PSEUDONYM_KEY = "vigil-demo-pseudonym-key-not-for-production"
# The consumer API's demo bearer token and its SHA-256 (tokens are configured only as hashes).
DEMO_API_TOKEN = "vigil-demo-api-token-not-for-production"
DEMO_API_TOKEN_SHA256 = "d486c045c25ad3824ebabf07bd654920fab226036cb8ed67c08dda8d2588562e"


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
    # Monthly governance reports written by the scheduler (the 1st, for the previous month).
    reports_dir: Path = Path("data/reports")
    log_level: str = "INFO"
    # Incident response. Consumer API bearer tokens as {consumer name: SHA-256 hex of the
    # token}; empty means only the demo token, and only in demo mode.
    api_tokens: dict[str, str] = {}
    api_host: str = "127.0.0.1"
    api_port: int = 8502
    api_cache_seconds: int = 15  # Cache-Control max-age; the Python client's default TTL
    dashboard_url: str = "http://localhost:8501"
    # Dashboard sign-in: demo accounts (demo mode only) and, in production, the role of each
    # OIDC user as {email or "@domain": role}; anyone not listed is a viewer.
    demo_accounts_path: Path = Path("config/demo_accounts.yaml")
    oidc_roles: dict[str, str] = {}
    live_refresh_seconds: int = 30  # how often the Live SLA page redraws itself
    small_sample_n: int = 100  # fewer predictions (or labels) in a window: shown with a caution
    # Runbook links in pages: {dashboard} and {id} are filled in.
    runbook_url_template: str = "{dashboard}/incidents?runbook={id}"
    slack_bot_token: str | None = None  # no token: pages queue in the outbox, none are sent
    slack_base_url: str = "https://slack.com/api/"
    slack_page_channel: str = "C0VIGILPAGE"  # channel IDs (history lookups need IDs)
    slack_ticket_channel: str = "C0VIGILTICKET"
    slack_page_mention: str = "<!here>"  # re-pages of unacknowledged pages
    slack_escalation_mention: str = "<!channel>"
    slack_timeout_seconds: float = 10.0
    slack_inline_retry_max_seconds: int = 5  # longer Retry-After waits go back to the outbox
    page_max_attempts: int = 20  # backoff 5 s doubling to 5 min: about 70 min of outage
    page_backoff_max_seconds: int = 300
    page_repage_minutes: int = 15
    page_max_repages: int = 3
    page_flap_window_minutes: int = 120  # a reopened alert within this joins the old thread
    page_lookback_hours: int = 24  # alerts resolved before this are not paged any more
    paging_interval_seconds: int = 30
    # Reliability. Of several scheduler processes one leads (monitors/leader.py); a standby
    # polls the lock this often, so it takes over within this many seconds of a leader's death.
    leader_poll_seconds: float = Field(default=5.0, gt=0)
    # Drop-folder files larger than this are rejected whole with one clear error.
    max_file_bytes: int = Field(default=2 * 1024**3, gt=0)
    # A line (JSON Lines, NDJSON, CSV) longer than this is quarantined as `line_too_long`; the
    # collectors read it once per process (collectors.contracts.MAX_LINE_BYTES).
    max_line_bytes: int = Field(default=64 * 1024, ge=1024, le=64 * 1024**2)
    # Raw predictions are kept this many days (whole months: a month goes once all of it is
    # older); None keeps everything. Rollups and histograms are kept for the whole history.
    # At least a month, longer than any model's horizon plus label lag (store/partitions.py).
    prediction_retention_days: int | None = Field(default=None, ge=31)

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

    @field_validator("api_tokens")
    @classmethod
    def _api_tokens_are_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ValueError(
                    f"VIGIL_API_TOKENS[{name!r}] must be the SHA-256 hex of the token "
                    "(`vigil hash-token`), never the token itself"
                )
        return {name: digest.lower() for name, digest in value.items()}

    @model_validator(mode="after")
    def _refuse_demo_api_token_in_production(self) -> Settings:
        if not self.demo_mode and DEMO_API_TOKEN_SHA256 in self.api_tokens.values():
            raise ValueError(
                "VIGIL_API_TOKENS holds the demo token; set your own when VIGIL_DEMO_MODE=false"
            )
        return self

    @property
    def api_token_hashes(self) -> dict[str, str]:
        """The API's accepted token hashes: configured ones, or the demo token in demo mode."""
        if self.api_tokens:
            return dict(self.api_tokens)
        return {"demo": DEMO_API_TOKEN_SHA256} if self.demo_mode else {}

    @property
    def scheduler_url(self) -> str:
        return self.scheduler_db_url or self.database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
