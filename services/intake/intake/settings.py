"""Settings of the intake service (environment variables; see the README's table)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.settings import ServiceSettings, var_dir


class IntakeSettings(ServiceSettings):
    service_name: str = "intake"
    port: int = 8001

    jwt_private_key_file: Path | None = None
    # Short-lived: a refresh token (rotating, revocable) keeps a resident signed in for weeks.
    access_token_ttl_seconds: int = Field(900, ge=60, le=7 * 86400)
    refresh_token_ttl_days: float = Field(30.0, gt=0, le=365)

    wechat_mode: Literal["dev", "real"] = "real"
    wechat_api_base: str = "https://api.weixin.qq.com"
    wechat_app_id: str = ""
    wechat_app_secret: str = ""
    wechat_timeout_seconds: float = Field(5.0, gt=0, le=60)

    demo_password: str = "demo365"
    demo_data: bool = False

    password_min_length: int = Field(8, ge=6, le=128)
    # Failed staff logins are counted per (username, client address): after LOGIN_MAX_FAILURES
    # that address waits LOGIN_DELAY_SECONDS, doubling with each further failure up to the
    # maximum; the right password from another address still signs in.
    login_max_failures: int = Field(5, ge=1, le=100)
    login_delay_seconds: int = Field(30, ge=1, le=24 * 3600)
    login_delay_max_seconds: int = Field(3600, ge=1, le=7 * 24 * 3600)
    rate_limit_login: str = "10 per minute"
    rate_limit_login_ip: str = "60 per minute"
    rate_limit_wechat_login_ip: str = "60 per minute"
    rate_limit_reports: str = "20 per hour"
    rate_limit_uploads: str = "60 per hour"
    # 催办: a reporter urges one report at most once in this many hours.
    urge_interval_hours: float = Field(12.0, gt=0, le=24 * 30)
    redis_url: str | None = None

    media_dir: Path | None = None
    media_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    media_max_pixels: int = Field(40_000_000, ge=10_000)
    media_s3_bucket: str | None = None
    media_s3_endpoint_url: str | None = None
    media_s3_region: str | None = None
    thumbnail_px: int = Field(320, ge=32, le=2048)

    ticket_prefix: str = Field("SKJ", pattern=r"^[A-Z]{2,6}$")
    open311_api_keys: str = ""
    open311_jurisdiction_id: str = "shakouji.weixian.hebei.cn"
    # What Open311 shows without an api_key: reports of these categories only (not neighbour
    # disputes nor care of the elderly), coordinates rounded to this many decimals (2: ~1 km),
    # and no free text. A key from OPEN311_API_KEYS reads every category in full.
    open311_public_categories: str = "admin_affairs,road_traffic,water_power,other"
    open311_coordinate_decimals: int = Field(2, ge=0, le=6)

    @field_validator("open311_public_categories")
    @classmethod
    def _known_categories(cls, value: str) -> str:
        from intake.domain import CATEGORIES

        unknown = [c for c in _codes(value) if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; known: {', '.join(CATEGORIES)}")
        return value

    @model_validator(mode="after")
    def _no_dev_login_in_production(self) -> IntakeSettings:
        if self.is_production and self.wechat_mode == "dev":
            raise ValueError("WECHAT_MODE=dev is refused when APP_ENV=production")
        if self.is_production and self.demo_data:
            raise ValueError("DEMO_DATA is refused when APP_ENV=production")
        if self.wechat_mode == "real" and not self.is_production and not self.wechat_app_id:
            pass  # checked when a login is attempted: a clear 503 rather than a dead service
        return self

    @property
    def private_key_path(self) -> Path:
        return self.jwt_private_key_file or var_dir() / "keys" / "jwt-private.pem"

    @property
    def media_path(self) -> Path:
        return self.media_dir or var_dir() / "media"

    @property
    def open311_public_category_set(self) -> frozenset[str]:
        return frozenset(_codes(self.open311_public_categories))

    @property
    def open311_keys(self) -> dict[str, str]:
        """``name:key,name2:key2`` (or bare keys) into {key: client name}."""
        keys: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in self.open311_api_keys.split(","))):
            name, _, key = item.rpartition(":")
            keys[key] = name or "open311"
        return keys


def _codes(value: str) -> list[str]:
    """``a, b,c`` into ``["a", "b", "c"]``."""
    return [part.strip() for part in value.split(",") if part.strip()]
