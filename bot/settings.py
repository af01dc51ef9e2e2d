"""Process settings from `CHATOPS_*` environment variables (and a `.env` file).

Everything about *who may do what where* lives in the YAML config (`bot.config`); these
settings say how the process connects to the world. Built once and passed down.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SLACK_API_URL = "https://slack.com/api/"
SECRET_FIELDS = frozenset({"slack_bot_token", "slack_signing_secret", "slack_app_token", "alertmanager_token",
                           "alertmanager_password"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHATOPS_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- Slack -----------------------------------------------------------------------------
    slack_bot_token: SecretStr | None = Field(None, description="Bot token (xoxb-...)")
    slack_signing_secret: SecretStr | None = Field(None, description="Signing secret for HTTP mode")
    slack_app_token: SecretStr | None = Field(None, description="App-level token (xapp-...) for Socket Mode")
    slack_api_url: str = Field(DEFAULT_SLACK_API_URL, description="Slack Web API base URL")
    slack_response_url_prefixes: list[str] = Field(
        default_factory=lambda: ["https://hooks.slack.com/"],
        description="response_url values the bot will POST to; anything else is refused",
    )

    # --- Alertmanager webhook (POST /alerts/alertmanager) -------------------------------------
    alertmanager_token: SecretStr | None = Field(None, description="Bearer token Alertmanager sends "
                                                 "(http_config.authorization.credentials)")
    alertmanager_username: str | None = Field(None, description="Basic auth user, instead of or besides the token")
    alertmanager_password: SecretStr | None = Field(None, description="Basic auth password")

    # --- storage and config ------------------------------------------------------------------
    database_url: str = Field("sqlite:///chatops.db", description="SQLAlchemy URL")
    config: Path = Field(Path("chatops.yml"), description="YAML config path")
    db_upgrade_on_start: bool = Field(True, description="Run migrations when `serve` starts")
    audit_marker: str | None = Field(
        None, description="File recording the audit chain's length and head hash, outside the database, so "
        "`serve` refuses a database that lost records. Default: `<sqlite file>.audit-head` beside a SQLite "
        "database, none for PostgreSQL; `off` disables it")

    # --- server -------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address of `chatops serve`")
    port: int = Field(3000, ge=0, le=65535)
    log_level: str = Field("INFO")
    log_format: str = Field("text", description="text or json")
    http_max_body_bytes: int = Field(1_000_000, ge=1024, le=50_000_000,
                                     description="Largest request body accepted (413 beyond, checked on "
                                     "Content-Length at once and counted while streaming)")
    http_body_timeout_seconds: float = Field(5.0, gt=0, le=120,
                                             description="Time a client has to send a whole request body "
                                             "(408 and the connection closed after it)")
    http_max_body_reads: int = Field(64, ge=1, le=10_000,
                                     description="Request bodies read at the same time before their signature "
                                     "is checked (503 with Retry-After beyond)")

    # --- background work ------------------------------------------------------------------------
    worker_threads: int = Field(8, ge=1, le=64, description="Bounded background task concurrency")
    shutdown_grace_seconds: float = Field(20.0, ge=0, description="SIGTERM: time to finish in-flight work")
    outbox_max_attempts: int = Field(8, ge=1, description="Delivery attempts before a message is dead")
    deploy_lease_seconds: float = Field(15.0, ge=1, le=300, description="How long a deploy run stays claimed "
                                        "by a process that stopped renewing (then another resumes it)")
    # outbox deadlines (each row carries its own `retry_until`; these are the defaults posters use)
    outbox_reply_retry_minutes: float = Field(15.0, gt=0, le=1440, description="How long an ordinary Slack "
                                              "call (a reply, a thread line, an update) is retried")
    outbox_alert_retry_minutes: float = Field(60.0, ge=60, le=1440, description="How long an alert to an "
                                              "incident channel is retried (at least an hour)")
    outbox_retry_cap_seconds: float = Field(30.0, ge=1, le=600, description="Longest pause between two "
                                            "attempts of a failing Slack call (backoff doubles up to it, jittered)")
    outbox_claim_seconds: float = Field(10.0, ge=1, le=300, description="How long a replica's claim on the "
                                        "outbox row it is sending lasts unless renewed (renewed while in flight)")

    @field_validator("slack_api_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value not in {"text", "json"}:
            raise ValueError("must be 'text' or 'json'")
        return value

    def secret(self, name: str) -> str | None:
        value = getattr(self, name)
        return value.get_secret_value() if value is not None else None

    def redacted(self) -> dict[str, object]:
        """Settings as shown to an operator: secrets replaced by whether they are set."""
        out: dict[str, object] = {}
        for key, value in self.model_dump().items():
            if key in SECRET_FIELDS:
                out[key] = "set" if value is not None else "unset"
            elif key == "database_url":
                out[key] = redact_url(str(value))
            else:
                out[key] = str(value) if isinstance(value, Path) else value
        return out


def redact_url(url: str) -> str:
    """Hide a password in a URL such as postgresql://user:pw@host/db."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"
