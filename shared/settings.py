"""Settings: environment variables into one typed object per service, checked at start.

Example::

    class IntakeSettings(ServiceSettings):
        service_name: str = "intake"
        port: int = 8001

    settings = load_settings(IntakeSettings)   # exits with one clear line on a bad value
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Generic, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def var_dir() -> Path:
    """The folder for embedded defaults (SQLite files, keys, media, metrics, logs)."""
    import os

    path = Path(os.environ.get("SERVICE365_VAR_DIR", PROJECT_ROOT / "var"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class ServiceSettings(BaseSettings):
    """What every service reads from its environment; services subclass it to add their own."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    service_name: str = "service"
    app_env: Literal["development", "test", "production"] = "development"
    port: int = Field(8000, ge=1, le=65535)
    database_url: str | None = None
    rabbitmq_url: str = "amqp://guest:guest@localhost:5672/%2F"
    events_exchange: str = "service365.events"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    jwt_public_key_file: Path | None = None
    jwt_issuer: str = "service365-intake"
    jwt_audience: str = "service365"
    # Proxies in front of the web process that add ``X-Forwarded-For`` (werkzeug's ProxyFix):
    # 0 trusts none (the peer's address is the client's); 1 behind one reverse proxy.
    trusted_proxy_hops: int = Field(0, ge=0, le=10)
    # shared.request_guard: the largest request body (JSON or form; only routes named with
    # ``allow_larger_body``, such as intake's photo upload, take more) and the deepest JSON.
    max_json_body_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_json_depth: int = Field(32, ge=2, le=200)

    relay_batch_size: int = Field(200, ge=1, le=5000)
    relay_poll_seconds: float = Field(0.5, gt=0, le=60)
    # Unacked deliveries the broker hands a consumer; at least CONSUMER_BATCH_SIZE, so that the
    # next batch is already on its way while one is applied.
    consumer_prefetch: int = Field(200, ge=1, le=5000)
    # Deliveries applied in one transaction (each in its own savepoint) and acked together, and
    # how long the first of them waits for more before a smaller batch is applied.
    consumer_batch_size: int = Field(100, ge=1, le=1000)
    consumer_batch_linger_ms: float = Field(5.0, ge=0, le=1000)
    consumer_max_attempts: int = Field(5, ge=1, le=50)
    consumer_retry_delays_ms: list[int] = Field(default_factory=lambda: [1000, 5000, 30000, 120000])
    # Deliveries of one message (crashes, outages) before the broker dead-letters it to the DLQ.
    consumer_delivery_limit: int = Field(20, ge=2, le=1000)
    # An event no queue is bound for stays pending and is tried again after this delay,
    # doubling up to the maximum.
    relay_unroutable_retry_seconds: float = Field(5.0, gt=0, le=3600)
    relay_unroutable_retry_max_seconds: float = Field(300.0, gt=0, le=86400)
    # Retention (shared.retention): sent outbox rows, and processed-event (inbox) rows, which
    # must outlive any dead letter that may still be replayed.
    outbox_retention_days: float = Field(7.0, gt=0, le=3650)
    inbox_retention_days: float = Field(30.0, gt=0, le=3650)
    retention_interval_seconds: float = Field(3600.0, gt=0, le=86400)
    retention_batch_size: int = Field(1000, ge=1, le=100000)
    # A worker-type process (``worker``, dispatch's ``scheduler``) serves its own Prometheus
    # text on this port (0: not served); the web answers only for its own processes, so the
    # two are scraped side by side and never counted twice.
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"

    @field_validator("database_url")
    @classmethod
    def _database_url_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgresql", "sqlite")):
            raise ValueError("must be a postgresql:// or sqlite:// URL")
        if value and value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        return value

    @field_validator("rabbitmq_url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// or amqps:// URL")
        return value

    @field_validator("consumer_retry_delays_ms")
    @classmethod
    def _retry_delays(cls, value: list[int]) -> list[int]:
        if not value or any(delay < 1 for delay in value):
            raise ValueError("needs at least one delay, each at least 1 ms")
        return value

    @model_validator(mode="after")
    def _prefetch_holds_a_batch(self) -> ServiceSettings:
        if self.consumer_prefetch < self.consumer_batch_size:
            raise ValueError(
                "CONSUMER_PREFETCH must be at least CONSUMER_BATCH_SIZE: a batch can never hold "
                "more deliveries than the broker hands out unacked"
            )
        return self

    @model_validator(mode="after")
    def _inbox_outlives_outbox(self) -> ServiceSettings:
        if self.inbox_retention_days < self.outbox_retention_days:
            raise ValueError(
                "INBOX_RETENTION_DAYS must be at least OUTBOX_RETENTION_DAYS: processed-event "
                "rows must outlive any event that may still be delivered again"
            )
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL, or a SQLite file under var/ when DATABASE_URL is unset."""
        return self.database_url or f"sqlite:///{var_dir() / (self.service_name + '.db')}"

    @property
    def public_key_path(self) -> Path:
        return self.jwt_public_key_file or var_dir() / "keys" / "jwt-public.pem"

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"


S = TypeVar("S", bound=ServiceSettings)


def load_settings(cls: type[S], **overrides: object) -> S:
    """Build the settings; on a bad value print one line naming the variable and exit(2)."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        print(f"配置错误 / invalid settings for {cls.__name__}: {problems}", file=sys.stderr)
        raise SystemExit(2) from None


class SettingsHolder(Generic[S]):
    """Which settings a service's event handlers use: the app's inside a request, else those a
    worker (or a test) gave with ``use``, else read once from the environment.

    Example (a service's ``handlers.py``)::

        _settings = SettingsHolder(NotifySettings)
        settings, use_settings = _settings.get, _settings.use
    """

    def __init__(self, cls: type[S]) -> None:
        self.cls = cls
        self.value: S | None = None

    def get(self) -> S:
        from flask import current_app, has_app_context

        if has_app_context() and isinstance(current_app.extensions.get("settings"), self.cls):
            return current_app.extensions["settings"]
        if self.value is None:
            self.value = load_settings(self.cls)
        return self.value

    def use(self, value: S | None) -> None:
        self.value = value
