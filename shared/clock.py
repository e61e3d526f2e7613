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

    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(value, attr, data, **kwargs).astimezone(UTC)
