"""Times are stored in UTC and shown in Asia/Shanghai: the conversions, in one place.

Example::

    LocalDateTime()            # marshmallow field: dumps 2026-11-28T21:00:00+08:00
    local_text(due_at)         # "2026年11月28日 21:00" for messages and exports
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from marshmallow import fields

SHANGHAI = ZoneInfo("Asia/Shanghai")


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_local(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return moment.astimezone(SHANGHAI)


def local_text(moment: datetime | None) -> str:
    """``2026年11月28日 21:00`` (Asia/Shanghai), the form people read."""
    if moment is None:
        return ""
    return to_local(moment).strftime("%Y年%m月%d日 %H:%M")


class LocalDateTime(fields.AwareDateTime):
    """Loads any ISO-8601 time with a zone (naive means Asia/Shanghai); dumps in Asia/Shanghai."""

    def __init__(self, **kwargs) -> None:
        super().__init__(default_timezone=SHANGHAI, **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        return to_local(value).isoformat()

    default_error_messages = {"out_of_range": "时间超出可用范围。"}

    def _deserialize(self, value, attr, data, **kwargs):
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00 in Shanghai is before year 1 in UTC
            raise self.make_error("out_of_range") from None
