"""Settings of the notify service (environment variables; see the README's table)."""

from __future__ import annotations

from datetime import time

from pydantic import Field, field_validator, model_validator

from shared.settings import ServiceSettings


class NotifySettings(ServiceSettings):
    service_name: str = "notify"
    port: int = 8005

    # Inbox page size when the caller gives none, and the most it may ask for.
    inbox_default_limit: int = Field(20, ge=1, le=100)

    # --- WeChat subscribe messages (residents) -------------------------------------------------
    # Switched on by WECHAT_NOTIFY_ENABLED; the base URL is a setting so tests (and a proxy) can
    # stand in for api.weixin.qq.com. The app id and secret are the mini-program's (as intake's).
    wechat_notify_enabled: bool = False
    wechat_api_base: str = "https://api.weixin.qq.com"
    wechat_app_id: str = ""
    wechat_app_secret: str = ""
    # Template id per notification kind, as JSON: {"resolved": "tmpl-...", "rejected": "..."}.
    wechat_templates: dict[str, str] = Field(default_factory=dict)
    # formal | trial | developer: which build of the mini-program the message opens.
    wechat_miniprogram_state: str = Field("formal", pattern="^(formal|trial|developer)$")
    # Refresh the cached access token this many seconds before WeChat says it expires.
    wechat_token_refresh_margin_seconds: int = Field(300, ge=0, le=3600)

    # --- SMS (Aliyun-style signed HTTP API) ----------------------------------------------------
    sms_enabled: bool = False
    sms_api_base: str = "https://dysmsapi.aliyuncs.com"
    sms_access_key_id: str = ""
    sms_access_key_secret: str = ""
    sms_sign_name: str = "沙口镇"
    # Template code per notification kind, as JSON; kinds without one use SMS_DEFAULT_TEMPLATE.
    sms_templates: dict[str, str] = Field(default_factory=dict)
    sms_default_template: str = ""
    # SMS is held in this window (Asia/Shanghai) unless it is an overdue alert.
    sms_quiet_start: time = time(22, 0)
    sms_quiet_end: time = time(7, 0)

    # --- webhook for the township's own systems -------------------------------------------------
    webhook_url: str = ""
    webhook_secret: str = ""
    # Kinds sent to the webhook (JSON list); empty sends every kind.
    webhook_kinds: list[str] = Field(default_factory=list)

    # --- deliveries ------------------------------------------------------------------------------
    channel_timeout_seconds: float = Field(5.0, gt=0, le=60)
    delivery_max_attempts: int = Field(6, ge=1, le=50)
    delivery_backoff_base_seconds: float = Field(5.0, gt=0, le=3600)
    delivery_backoff_max_seconds: float = Field(3600.0, gt=0, le=86400)
    # How often the worker looks for due deliveries, and how many it takes per pass.
    delivery_poll_seconds: float = Field(1.0, gt=0, le=60)
    delivery_batch_size: int = Field(50, ge=1, le=1000)

    # --- the real-time stream (server-sent events) ----------------------------------------------
    stream_port: int = Field(8015, ge=1, le=65535)
    stream_threads: int = Field(100, ge=1, le=2000)
    stream_heartbeat_seconds: float = Field(15.0, gt=0, le=300)
    # How often one watcher per stream process looks for new inbox rows (for all its clients).
    stream_poll_seconds: float = Field(1.0, gt=0, le=60)
    # A client's connection is closed after this long (it reconnects): workers are recycled.
    stream_max_seconds: float = Field(300.0, gt=0, le=86400)

    @field_validator("webhook_kinds")
    @classmethod
    def _known_kinds(cls, value: list[str]) -> list[str]:
        from notify.templates import KINDS

        unknown = sorted(set(value) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown notification kinds: {', '.join(unknown)}")
        return value

    @model_validator(mode="after")
    def _channels_configured(self) -> NotifySettings:
        if self.wechat_notify_enabled and not (self.wechat_app_id and self.wechat_app_secret):
            raise ValueError("WECHAT_NOTIFY_ENABLED needs WECHAT_APP_ID and WECHAT_APP_SECRET")
        if self.sms_enabled and not (self.sms_access_key_id and self.sms_access_key_secret):
            raise ValueError("SMS_ENABLED needs SMS_ACCESS_KEY_ID and SMS_ACCESS_KEY_SECRET")
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("WEBHOOK_URL needs WEBHOOK_SECRET (the receiver checks the signature)")
        return self
