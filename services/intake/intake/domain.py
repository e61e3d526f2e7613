"""Rules of intake that need no database: categories, states, ticket numbers, ratings."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")

CATEGORIES: dict[str, str] = {
    "admin_affairs": "群众办事",
    "road_traffic": "道路交通",
    "neighbor_dispute": "邻里纠纷",
    "medical_elderly": "医疗养老",
    "water_power": "用水用电",
    "other": "其他",
}

STATES: dict[str, str] = {
    "reported": "已受理",
    "assigned": "已交办",
    "in_progress": "办理中",
    "resolved": "已办结",
    "reopened": "重新办理",
    "closed": "已关闭",
    "rejected": "不予受理",
}

LEVELS: dict[str, str] = {
    "grid": "网格",
    "township": "乡镇",
    "area_leader": "包片领导",
    "county": "县级部门",
}

RATINGS: dict[str, str] = {
    "satisfied": "满意",
    "basically_satisfied": "基本满意",
    "unsatisfied": "不满意",
}

OPEN_STATES = frozenset({"reported", "assigned", "in_progress", "reopened"})


def ticket_number(prefix: str, reported_at: datetime, seq: int) -> str:
    """``SKJ-20261128-0042``: the township's day (Asia/Shanghai) and that day's sequence."""
    day = reported_at.astimezone(SHANGHAI).strftime("%Y%m%d")
    return f"{prefix}-{day}-{seq:04d}"


def shanghai_day(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(SHANGHAI).strftime("%Y%m%d")


def can_rate(status: str, rating: str | None = None, resolution_count: int = 0) -> bool:
    """A reporter rates the latest resolution (once): while it is resolved, and also after it
    closed by itself unrated (an unsatisfied rating then reopens it, DESIGN.md)."""
    if status == "resolved":
        return True
    return status == "closed" and rating is None and resolution_count > 0
