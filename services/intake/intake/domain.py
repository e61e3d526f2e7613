"""Rules of intake that need no database: categories, states, ticket numbers, ratings."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from shared.contract import (  # noqa: F401 - the contract words, used here and re-exported
    CATEGORIES,
    DONE_STATES,
    LEVEL_LABELS,
    OPEN_STATES,
    RATINGS,
    STATES,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")

# ``GET /issues/mine?status=``: besides each state, the groups the mini-program shows.
STATUS_GROUPS: dict[str, frozenset[str]] = {
    "done": DONE_STATES,  # 已办结事项
    "open": OPEN_STATES,
}

LEVELS: dict[str, str] = LEVEL_LABELS


# A mainland mobile number: 11 digits starting 13-19, optionally written with +86 / 86.
_MOBILE = re.compile(r"^(?:\+?86)?(1[3-9]\d{9})$")
MIN_DESCRIPTION_WITH_PHOTO = 2
MIN_DESCRIPTION_WITHOUT_PHOTO = 5


def mobile_number(text: str | None) -> str | None:
    """The 11-digit mobile number written in ``text`` (spaces and dashes allowed), else None."""
    if not text:
        return None
    match = _MOBILE.match(re.sub(r"[\s\-]", "", text))
    return match.group(1) if match else None


def masked_phone(phone: str | None) -> str | None:
    """``138****5678``: enough for the resident to recognise their own number."""
    if not phone:
        return None
    return phone[:3] + "****" + phone[-4:] if len(phone) >= 8 else "****"


def description_problem(description: str | None, has_photo: bool) -> str | None:
    """Why a report's description is not enough, or None: a photo speaks for itself, so with one
    a short description (2 characters and up) or none will do (the seed's 随手拍)."""
    text = (description or "").strip()
    if has_photo:
        if text and len(text) < MIN_DESCRIPTION_WITH_PHOTO:
            return f"描述不能少于 {MIN_DESCRIPTION_WITH_PHOTO} 个字；也可以不写，只拍照片。"
        return None
    if not text:
        return "没有照片时，请用文字描述遇到的问题。"
    if len(text) < MIN_DESCRIPTION_WITHOUT_PHOTO:
        return f"没有照片时，描述不能少于 {MIN_DESCRIPTION_WITHOUT_PHOTO} 个字。"
    return None


def next_urge_at(last_urged_at: datetime | None, interval: timedelta) -> datetime | None:
    """When the reporter may urge again (催办 is rate-limited per issue); None: now."""
    return last_urged_at + interval if last_urged_at is not None else None


def ticket_number(prefix: str, reported_at: datetime, seq: int) -> str:
    """``SKJ-20261128-0042``: the township's day (Asia/Shanghai) and that day's sequence."""
    day = reported_at.astimezone(SHANGHAI).strftime("%Y%m%d")
    return f"{prefix}-{day}-{seq:04d}"


def shanghai_day(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(SHANGHAI).strftime("%Y%m%d")


def login_delay_seconds(failures: int, *, free: int, first: int, most: int) -> int:
    """How long an address waits after its ``failures``-th wrong password for one username:
    nothing for the first ``free - 1``, then ``first`` seconds, doubling with each further
    failure, at most ``most`` (5 free, 30 s: 30, 60, 120, ... 3600)."""
    if failures < free:
        return 0
    return min(most, first * 2 ** min(failures - free, 32))


def can_rate(status: str, rating: str | None = None, resolution_count: int = 0) -> bool:
    """A reporter rates the latest resolution (once): while it is resolved, and also after it
    closed by itself unrated (an unsatisfied rating then reopens it, DESIGN.md)."""
    if status == "resolved":
        return True
    return status == "closed" and rating is None and resolution_count > 0


# What the reporter of a duplicate sees of the original's timeline: the steps of its handling
# (from dispatch's events), with their titles only. The original reporter's own steps (rating,
# added details, urging, withdrawal) and every step's note stay private; the report step reads
# plainly "已受理" (its title may name a helper who submitted it for the resident).
PUBLIC_PROGRESS_KINDS: frozenset[str] = frozenset(
    {
        "issue.assigned",
        "issue.started",
        "issue.escalated",
        "issue.overdue",
        "issue.resolved",
        "issue.reopened",
        "issue.closed",
        "issue.rejected",
        "issue.callback_recorded",
    }
)


def public_step_title(kind: str, title: str) -> str | None:
    """The title the reporter of a duplicate may read for one step of the original, or None."""
    if kind == "issue.reported":
        return STATES["reported"]
    if kind == "issue.reopened":  # its title may say the original reporter was unsatisfied
        return STATES["reopened"]
    return title if kind in PUBLIC_PROGRESS_KINDS else None
