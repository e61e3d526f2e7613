"""Settings of the intake service (environment variables; see the README's table)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from shared.settings import ServiceSettings, var_dir


class IntakeSettings(ServiceSettings):
    service_name: str = "intake"
    port: int = 8001

    jwt_private_key_file: Path | None = None
    access_token_ttl_seconds: int = Field(7200, ge=60, le=7 * 86400)

    wechat_mode: Literal["dev", "real"] = "real"
    wechat_api_base: str = "https://api.weixin.qq.com"
    wechat_app_id: str = ""
    wechat_app_secret: str = ""
    wechat_timeout_seconds: float = Field(5.0, gt=0, le=60)

    demo_password: str = "demo365"
    demo_data: bool = False

    password_min_length: int = Field(8, ge=6, le=128)
    login_max_failures: int = Field(5, ge=1, le=100)
    login_lockout_minutes: int = Field(15, ge=1, le=24 * 60)
    rate_limit_login: str = "10 per minute"
    rate_limit_login_ip: str = "60 per minute"
    rate_limit_reports: str = "20 per hour"
    rate_limit_uploads: str = "60 per hour"
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
    def open311_keys(self) -> dict[str, str]:
        """``name:key,name2:key2`` (or bare keys) into {key: client name}."""
        keys: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in self.open311_api_keys.split(","))):
            name, _, key = item.rpartition(":")
            keys[key] = name or "open311"
        return keys
