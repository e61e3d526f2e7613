"""Settings of the feed service (environment variables; see the README's table)."""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.settings import ServiceSettings

# Comments holding one of these wait for an admin (MODERATION_WORDS): spam and what the law
# forbids in public comments; the township sets its own list.
DEFAULT_MODERATION_WORDS = [
    "法轮功",
    "赌博",
    "博彩",
    "六合彩",
    "代开发票",
    "办证",
    "色情",
    "裸聊",
    "枪支",
    "毒品",
    "刷单",
    "高利贷",
]


class FeedSettings(ServiceSettings):
    service_name: str = "feed"
    port: int = 8004

    # Words that send a comment to moderation instead of showing it at once (MODERATION_WORDS):
    # a JSON list (["赌博", "办证"]) or words separated by commas; matched ignoring case, width
    # and spaces. Empty: every comment shows at once.
    moderation_words: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_MODERATION_WORDS)
    )
    # News views are counted in each web process and written with one UPDATE per article every
    # VIEW_FLUSH_SECONDS or once VIEW_FLUSH_VIEWS views are waiting, whichever comes first.
    view_flush_seconds: float = Field(10.0, gt=0, le=3600)
    view_flush_views: int = Field(200, ge=1, le=100000)
    # Rows per page when the caller gives no ``limit`` (a caller may ask for up to 100).
    news_page_size: int = Field(20, ge=1, le=100)
    posts_page_size: int = Field(20, ge=1, le=100)
    comments_page_size: int = Field(20, ge=1, le=100)
    # How long browsers and proxies may keep a public news answer (Cache-Control: max-age).
    news_cache_seconds: int = Field(60, ge=0, le=86400)
    # How often the worker publishes news whose scheduled time has come.
    scheduled_publish_check_seconds: float = Field(30.0, gt=0, le=3600)

    @field_validator("moderation_words", mode="before")
    @classmethod
    def _words(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            # A JSON list, or words separated by commas (full-width ones too).
            value = json.loads(text) if text.startswith("[") else text.replace("，", ",").split(",")
        if isinstance(value, list):
            return [str(w).strip() for w in value if str(w).strip()]
        return value
