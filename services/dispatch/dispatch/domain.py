"""The issue life cycle as plain rules: which step is allowed from which state, and what it changes.

Functions here take any object with the work item's attributes (the ORM ``Issue`` or a test's
``FakeIssue``), check the rule, change the fields and return the ``Step`` to record. They know
nothing of sessions, HTTP or the broker; ``services.py`` loads, locks, stores and emits.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from shared import contract
from shared.clock import SHANGHAI
from shared.contract import (  # noqa: F401 - the contract's words, used here and re-exported
    CATEGORIES,
    DONE_STATES,
    LEVEL_LABELS,
    LEVELS,
    OPEN_STATES,
    RATINGS,
    SATISFIED_RATINGS,
    WORKING_STATES,
)
from shared.errors import Conflict, Forbidden, Invalid

# The admin's screens say 待交办 where the resident reads 已受理; the codes are the contract's.
STATES: dict[str, str] = {**contract.STATES, "reported": "待交办"}

REOPEN_REASONS: dict[str, str] = {
    "unsatisfied": "群众不满意",
    "callback_failed": "回访未通过",
    "admin": "管理员重新交办",
}

ACTIONS: dict[str, str] = {
    "report": "受理",
    "assign": "交办",
    "reassign": "改派",
    "reject": "不予受理",
    "start": "开始办理",
    "note": "记录进展",
    "resolve": "办结",
    "escalate": "升级",
    "rate": "评价",
    "rate_late": "自动关闭后评价",
    "rating_not_applied": "评价未采纳",
    "close": "关闭",
    "auto_close": "超期未评价自动关闭",
    "reopen": "重新办理",
    "callback": "回访",
    "remind": "到期提醒",
    "overdue": "超期",
    "urge": "群众催办",
    "details": "群众补充说明",
    "withdraw": "群众撤回",
    "withdraw_declined": "撤回未成功",
}

# action -> {from state: to state}; anything not listed is refused with a reason.
TRANSITIONS: dict[str, dict[str, str]] = {
    "assign": {"reported": "assigned"},
    "reassign": {"assigned": "assigned", "in_progress": "assigned", "reopened": "assigned"},
    "reject": {"reported": "rejected", "assigned": "rejected"},
    "start": {"assigned": "in_progress", "reopened": "in_progress"},
    "note": {s: s for s in WORKING_STATES},
    "resolve": {"in_progress": "resolved"},
    "escalate": {s: s for s in OPEN_STATES},
    "rate": {"resolved": "closed"},  # or "reopened" when unsatisfied
    # A rating of the resolution an item was auto-closed on (only while unrated): it is kept on
    # the closed item, or, unsatisfied, reopens it (DESIGN.md: "unsatisfied reopens it even then").
    "rate_late": {"closed": "closed"},
    "auto_close": {"resolved": "closed"},
    "reopen": {"resolved": "reopened", "closed": "reopened"},
    "callback": {"closed": "closed"},  # or "reopened" when it fails
    # The resident withdraws a report nobody holds yet (撤回); later, dispatch keeps it.
    "withdraw": {"reported": "withdrawn"},
}

# Why a step is refused, for the states where a plain "not now" would puzzle the person.
_WHY: dict[tuple[str, str], str] = {
    ("assign", "assigned"): "该事项已交办，不能重复交办；如需改派请注明改派。",
    ("assign", "in_progress"): "该事项正在办理中，不能重复交办；如需改派请注明改派。",
    ("assign", "reopened"): "该事项已重新交给原办理人；如需改派请注明改派。",
    ("resolve", "closed"): "该事项已关闭，不能再次办结。",
    ("resolve", "resolved"): "该事项已办结，不能重复办结。",
    ("resolve", "assigned"): "请先开始办理，再提交办结。",
    ("resolve", "reopened"): "该事项已重新办理，请先开始办理，再提交办结。",
    ("rate", "closed"): "该事项已评价并关闭，不能重复评价。",
    ("rate", "reopened"): "该事项正在重新办理，办结后才能评价。",
    ("start", "in_progress"): "该事项已在办理中。",
    ("reject", "in_progress"): "该事项已开始办理，不能再作不予受理处理。",
    ("callback", "reopened"): "该事项已重新办理，办结关闭后才能回访。",
}


@dataclass
class Step:
    """One recorded transition: what was done, from which state and level to which, and why."""

    action: str
    from_state: str
    to_state: str
    from_level: str
    to_level: str
    note: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class WorkItem(Protocol):
    """The attributes the rules read and change (the ORM ``Issue`` has them all)."""

    id: uuid.UUID
    state: str
    level: str
    category: str
    assignee_id: uuid.UUID | None
    grid_id: uuid.UUID | None
    grid_leader_id: uuid.UUID | None
    handler_id: uuid.UUID | None
    follower_id: uuid.UUID | None
    difficulty: int | None
    due_at: datetime | None
    assigned_at: datetime | None
    started_at: datetime | None
    resolved_at: datetime | None
    resolved_on_time: bool | None
    resolution_note: str | None
    resolution_photo_ids: list
    resolution_count: int
    closed_at: datetime | None
    rating: str | None
    reject_reason: str | None
    ever_unsatisfied: bool
    callback_status: str | None
    department_id: uuid.UUID | None
    reminded_at: datetime | None
    overdue_at: datetime | None
    overdue_escalated_at: datetime | None
    urge_count: int
    last_urged_at: datetime | None
    version: int


def refuse(action: str, state: str) -> Conflict:
    """The 409 for a step the state does not allow, with a reason a person understands."""
    message = _WHY.get((action, state)) or (
        f"事项当前为「{STATES.get(state, state)}」状态，不能{ACTIONS.get(action, action)}。"
    )
    return Conflict(message, code="wrong_state", details={"state": state, "action": action})


def target_state(action: str, state: str) -> str:
    """The state ``action`` leads to from ``state``, or the 409 saying why it may not."""
    allowed = TRANSITIONS[action]
    if state not in allowed:
        raise refuse(action, state)
    return allowed[state]


def check_version(item: WorkItem, expected: int | None) -> None:
    """Optimistic check: the caller saw ``expected``; someone else changed the item since."""
    if expected is not None and expected != item.version:
        raise Conflict(
            "该事项已被他人修改，请刷新后重试。",
            code="version_conflict",
            details={"expected": expected, "current": item.version},
        )


def _step(item: WorkItem, action: str, to_state: str, **kw: Any) -> Step:
    step = Step(action, item.state, to_state, item.level, kw.pop("to_level", item.level), **kw)
    item.state = to_state
    item.level = step.to_level
    return step


def _new_deadline(item: WorkItem, due_at: datetime) -> None:
    """A new deadline starts the reminder/overdue/escalation clock again."""
    item.due_at = due_at
    item.reminded_at = None
    item.overdue_at = None
    item.overdue_escalated_at = None


def due_at_for(
    *,
    now: datetime,
    due_at: datetime | None,
    due_in_hours: float | None,
    default_hours: float,
) -> datetime:
    """The deadline of an assignment: given outright, in hours from now, or the category default."""
    if due_at is not None and due_in_hours is not None:
        raise Invalid("截止时间和办理时限只能填写一项。", code="invalid_due")
    if due_at is not None:
        if due_at.tzinfo is None:
            raise Invalid("截止时间须带时区。", code="invalid_due")
        if due_at <= now:
            raise Invalid("截止时间必须晚于当前时间。", code="invalid_due")
        return due_at
    hours = due_in_hours if due_in_hours is not None else default_hours
    if hours <= 0:
        raise Invalid("办理时限必须大于 0 小时。", code="invalid_due")
    return now + timedelta(hours=hours)


def require_one_holder(assignee_id: uuid.UUID | None, department_id: uuid.UUID | None) -> None:
    """An assignment names a grid worker or a township department, not both, not neither."""
    if (assignee_id is None) == (department_id is None):
        message = "请指定办理人（网格员）或分管部门，二者选一。"
        raise Invalid(
            message,
            code="assignee_or_department",
            details={"assignee_id": [message], "department_id": [message]},
        )


def assign(
    item: WorkItem,
    *,
    assignee_id: uuid.UUID | None,
    grid_id: uuid.UUID | None,
    grid_leader_id: uuid.UUID | None,
    difficulty: int,
    due_at: datetime,
    now: datetime,
    reassign: bool = False,
    department_id: uuid.UUID | None = None,
) -> Step:
    """Hand the item to a grid worker, or to a township department (分管部门: its staff handle
    it at the township level), with a difficulty score and a deadline (交办 / 改派)."""
    if not 1 <= difficulty <= 5:
        raise Invalid("难度分值应在 1 到 5 之间。", code="invalid_difficulty")
    require_one_holder(assignee_id, department_id)
    action = "reassign" if reassign else "assign"
    if reassign and item.state == "reported":
        action = "assign"  # nothing to re-assign yet: a plain first assignment
    to_state = target_state(action, item.state)
    previous = item.assignee_id
    previous_department = item.department_id
    to_level = item.level
    if department_id is not None:
        if level_index(item.level) > level_index("township"):
            raise Conflict(
                f"该事项已在「{LEVEL_LABELS[item.level]}」层级，不能交给乡镇分管部门；"
                "如确需降级，请由管理员调整层级并说明理由。",
                code="level_above_township",
                details={"level": item.level},
            )
        # A township department holds it at the township level; nobody else does.
        to_level = "township"
        item.handler_id = None
    if department_id is not None or item.level != "county":
        item.department_id = department_id
    item.assignee_id = assignee_id
    item.grid_id = grid_id
    item.grid_leader_id = grid_leader_id
    item.difficulty = difficulty
    item.assigned_at = now
    item.started_at = None
    _new_deadline(item, due_at)
    details = {
        "assignee_id": assignee_id,
        "department_id": department_id,
        "difficulty": difficulty,
        "due_at": due_at,
    }
    if action == "reassign":
        details["previous_assignee_id"] = previous
        details["previous_department_id"] = previous_department
    return _step(item, action, to_state, to_level=to_level, details=details)


def reject(item: WorkItem, *, reason: str) -> Step:
    """Refuse an invalid or duplicate report; the resident sees the reason (不予受理)."""
    reason = (reason or "").strip()
    if not reason:
        raise Invalid("请填写不予受理的理由。", code="reason_required")
    to_state = target_state("reject", item.state)
    item.reject_reason = reason
    return _step(item, "reject", to_state, note=reason)


def withdraw(item: WorkItem, *, reason: str | None) -> Step:
    """The resident withdraws a report that is not yet assigned (撤回); it leaves the queue."""
    to_state = target_state("withdraw", item.state)
    return _step(item, "withdraw", to_state, note=(reason or "").strip() or None)


def urge(item: WorkItem, *, now: datetime, text: str | None) -> Step:
    """The resident urges an open item (催办): counted on it for its holder; no state change."""
    if item.state not in OPEN_STATES:
        raise refuse("urge", item.state)
    item.urge_count = (item.urge_count or 0) + 1
    item.last_urged_at = now
    return _step(
        item,
        "urge",
        item.state,
        note=(text or "").strip() or None,
        details={"urge_count": item.urge_count},
    )


def start(item: WorkItem, *, now: datetime) -> Step:
    """The assignee begins work (开始办理)."""
    to_state = target_state("start", item.state)
    item.started_at = now
    return _step(item, "start", to_state)


def note(item: WorkItem, *, text: str, media_ids: Sequence[uuid.UUID] = ()) -> Step:
    """A progress note on an open task; the state does not change."""
    text = (text or "").strip()
    if not text:
        raise Invalid("请填写进展内容。", code="text_required")
    to_state = target_state("note", item.state)
    return _step(item, "note", to_state, note=text, details={"media_ids": list(media_ids)})


def resolve(
    item: WorkItem, *, note: str, media_ids: Sequence[uuid.UUID] = (), now: datetime
) -> Step:
    """The assignee reports the problem solved (办结); points depend on ``on_time``."""
    text = (note or "").strip()
    if not text:
        raise Invalid("请填写办理结果。", code="note_required")
    to_state = target_state("resolve", item.state)
    item.resolved_at = now
    item.resolved_on_time = item.due_at is None or now <= item.due_at
    item.resolution_note = text
    item.resolution_photo_ids = [str(m) for m in media_ids]
    item.resolution_count = (item.resolution_count or 0) + 1
    item.rating = None  # a rating belongs to one resolution: the new one is not rated yet
    return _step(
        item,
        "resolve",
        to_state,
        note=text,
        details={"media_ids": list(media_ids), "on_time": item.resolved_on_time},
    )


def level_index(level: str) -> int:
    try:
        return LEVELS.index(level)
    except ValueError:
        raise Invalid(f"未知的处理层级：{level}。", code="invalid_level") from None


def next_level(level: str) -> str | None:
    """The level one step up, or None at the top (county)."""
    index = level_index(level)
    return LEVELS[index + 1] if index + 1 < len(LEVELS) else None


def check_department_level(to_level: str, department_id: uuid.UUID | None) -> None:
    """A department holds an item only at the township (分管部门) or the county level."""
    if department_id is not None and to_level not in ("township", "county"):
        raise Invalid(
            "只有乡镇层级（分管部门）和县级层级可以指定部门。", code="department_not_allowed"
        )


def escalate(
    item: WorkItem,
    *,
    to_level: str,
    reason: str,
    is_admin: bool,
    admin_override: bool = False,
    handler_id: uuid.UUID | None = None,
    department_id: uuid.UUID | None = None,
    due_at: datetime | None = None,
) -> Step:
    """Hand the item to the holder of another level with that level's new deadline.

    It climbs one level at a time (grid → township → area leader → county); only an admin may
    skip a level or refer it to the county, and only an admin's explicit decision moves it down;
    every move needs a reason. The grid worker stays on it (``assignee_id``: who knows the case);
    the level's holder is ``handler_id`` and/or ``department_id`` (a township department at the
    township, the county department at the county).
    """
    reason = (reason or "").strip()
    if not reason:
        raise Invalid("请填写升级（调整层级）的理由。", code="reason_required")
    to_state = target_state("escalate", item.state)
    current, wanted = level_index(item.level), level_index(to_level)
    if wanted == current:
        raise Conflict(
            f"该事项已在「{LEVEL_LABELS[to_level]}」层级。",
            code="same_level",
            details={"level": item.level},
        )
    if wanted > current + 1 and not is_admin:
        raise Forbidden(
            f"处理层级只能逐级上升（下一级为「{LEVEL_LABELS[LEVELS[current + 1]]}」）；"
            "越级须由管理员决定并说明理由。",
            code="level_skip",
            details={"level": item.level, "next_level": LEVELS[current + 1]},
        )
    if to_level == "county" and not is_admin:
        raise Forbidden(
            "转县级部门（纳入疑难问题台账）须由管理员决定并说明理由。", code="county_admin_only"
        )
    if wanted < current:
        if not is_admin:
            raise Forbidden("处理层级只能逐级上升；降级须由管理员决定。", code="level_down")
        if not admin_override:
            raise Conflict(
                "处理层级只能上升；如确需降级，管理员须明确确认（admin_override）并说明理由。",
                code="level_down",
            )
    if to_level == "county" and department_id is None:
        raise Invalid("转县级部门时须指定责任部门。", code="department_required")
    check_department_level(to_level, department_id)
    item.handler_id = handler_id
    item.department_id = department_id
    if due_at is not None:
        _new_deadline(item, due_at)
    details = {
        "handler_id": handler_id,
        "department_id": department_id,
        "override": wanted < current,
        "skipped": wanted > current + 1,
        "due_at": item.due_at,
    }
    return _step(item, "escalate", to_state, to_level=to_level, note=reason, details=details)


def reopen(
    item: WorkItem,
    *,
    reason: str,
    due_at: datetime,
    area_leader_id: uuid.UUID | None,
    note: str | None = None,
) -> Step:
    """Send the item back to its assignee with a new deadline; the area leader follows it."""
    if reason not in REOPEN_REASONS:
        raise Invalid("未知的重新办理原因。", code="invalid_reason")
    allowed_from = {
        "unsatisfied": {"resolved", "closed"},
        "callback_failed": {"closed"},
        "admin": {"resolved", "closed"},
    }[reason]
    if item.state not in allowed_from:
        raise refuse("reopen", item.state)
    to_state = target_state("reopen", item.state)
    item.closed_at = None
    item.follower_id = area_leader_id
    _new_deadline(item, due_at)
    if reason in ("unsatisfied", "callback_failed"):
        item.ever_unsatisfied = True
    return _step(
        item,
        "reopen",
        to_state,
        note=note or REOPEN_REASONS[reason],
        details={"reason": reason, "due_at": due_at, "area_leader_id": area_leader_id},
    )


def rate(
    item: WorkItem,
    *,
    rating: str,
    comment: str | None,
    now: datetime,
    reopen_due_at: datetime,
    area_leader_id: uuid.UUID | None,
) -> Step:
    """The resident's verdict: (basically) satisfied closes it, unsatisfied reopens it."""
    if rating not in RATINGS:
        raise Invalid("未知的评价结果。", code="invalid_rating")
    if item.state != "resolved":
        raise refuse("rate", item.state)
    item.rating = rating
    if rating == "unsatisfied":
        return _reopen_unsatisfied(item, comment, reopen_due_at, area_leader_id)
    to_state = target_state("rate", item.state)
    item.closed_at = now
    item.callback_status = "pending" if item.ever_unsatisfied else None
    return _step(item, "rate", to_state, note=comment, details={"rating": rating})


def _reopen_unsatisfied(
    item: WorkItem,
    comment: str | None,
    reopen_due_at: datetime,
    area_leader_id: uuid.UUID | None,
) -> Step:
    step = reopen(
        item,
        reason="unsatisfied",
        due_at=reopen_due_at,
        area_leader_id=area_leader_id,
        note=comment or REOPEN_REASONS["unsatisfied"],
    )
    step.details["rating"] = "unsatisfied"
    return step


def rate_after_auto_close(
    item: WorkItem,
    *,
    rating: str,
    comment: str | None,
    reopen_due_at: datetime,
    area_leader_id: uuid.UUID | None,
) -> Step:
    """A rating of the resolution the item was auto-closed on: unsatisfied reopens it with the
    area leader following; (basically) satisfied is kept on the closed item."""
    if rating not in RATINGS:
        raise Invalid("未知的评价结果。", code="invalid_rating")
    if not was_auto_closed_unrated(item):
        raise refuse("rate", item.state)
    item.rating = rating
    if rating == "unsatisfied":
        step = _reopen_unsatisfied(item, comment, reopen_due_at, area_leader_id)
        step.details["after_auto_close"] = True
        return step
    to_state = target_state("rate_late", item.state)
    return _step(
        item,
        "rate_late",
        to_state,
        note=comment,
        details={"rating": rating, "after_auto_close": True},
    )


def was_auto_closed_unrated(item: WorkItem) -> bool:
    """Closed without a rating of its latest resolution: only ``auto_close`` does that."""
    return item.state == "closed" and item.rating is None and (item.resolution_count or 0) > 0


def auto_close(item: WorkItem, *, now: datetime) -> Step:
    """A resolved item nobody rated within the configured days closes by itself."""
    to_state = target_state("auto_close", item.state)
    item.closed_at = now
    item.callback_status = "pending" if item.ever_unsatisfied else None
    return _step(item, "auto_close", to_state)


def callback_passed(*, lawful: bool, implemented: bool, accepted: bool) -> bool:
    """回头看 passes only if the handling was lawful, carried out and accepted by the resident."""
    return lawful and implemented and accepted


def record_callback(
    item: WorkItem,
    *,
    passed: bool,
    notes: str | None,
    reopen_due_at: datetime,
    area_leader_id: uuid.UUID | None,
) -> Step:
    """A supervisor's callback on a closed item; a failed one reopens it."""
    if item.state != "closed":
        raise refuse("callback", item.state)
    if passed:
        item.callback_status = "passed"
        return _step(item, "callback", "closed", note=notes, details={"passed": True})
    item.callback_status = "failed"
    step = reopen(
        item,
        reason="callback_failed",
        due_at=reopen_due_at,
        area_leader_id=area_leader_id,
        note=notes or REOPEN_REASONS["callback_failed"],
    )
    step.details["passed"] = False
    return step


def is_overdue(item: WorkItem, now: datetime) -> bool:
    """Past its deadline (or flagged so by the scheduler) while someone still holds it."""
    if item.state not in WORKING_STATES or item.due_at is None:
        return False
    return item.overdue_at is not None or item.due_at < now


def in_callback_sample(issue_id: uuid.UUID, share: float) -> bool:
    """A stable random draw per issue: the same issue is always in or out for the same share."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    digest = hashlib.sha256(issue_id.bytes).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def completion_rate(completed: int, reports: int) -> float:
    """Percent completed, two decimals (2750 of 2811 → 97.83)."""
    if reports == 0:
        return 0.0
    return round(completed * 100 / reports + 1e-12, 2)


def satisfaction_rate(satisfied: int, rated: int) -> float:
    """Percent of rated items rated 满意 or 基本满意, two decimals (0.0 when none is rated)."""
    return completion_rate(satisfied, rated)


EARTH_RADIUS_M = 6_371_008.8


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine; plenty for a township's few kilometres)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True)
class DuplicateRule:
    """When two reports are likely the same problem: same village and category, reported at most
    ``window`` apart, and at most ``radius_m`` apart when both carry coordinates (a report
    without them cannot be placed, so village, category and time decide alone)."""

    radius_m: float
    window: timedelta

    def distance(self, item: Any, other: Any) -> float | None:
        """Metres between the two reports, or None when either lacks coordinates."""
        if None in (item.lat, item.lon, other.lat, other.lon):
            return None
        return distance_m(item.lat, item.lon, other.lat, other.lon)

    def matches(self, item: Any, other: Any) -> bool:
        if item.id == other.id:
            return False
        if item.village_id != other.village_id or item.category != other.category:
            return False
        if abs(item.reported_at - other.reported_at) > self.window:
            return False
        distance = self.distance(item, other)
        return distance is None or distance <= self.radius_m


def check_duplicate_of(item: Any, original: Any) -> None:
    """A report rejected as a duplicate names another report of its village that is open or
    done (not itself rejected), so that its reporter can follow that one's progress."""
    if original.id == item.id:
        raise Invalid("不能把事项标记为自身的重复。", code="duplicate_of_self")
    if original.village_id != item.village_id:
        raise Invalid("重复的原事项必须属于同一个村。", code="duplicate_of_other_village")
    if original.state not in OPEN_STATES | DONE_STATES:
        raise Invalid("原事项已不予受理，不能作为重复的原事项。", code="duplicate_of_rejected")


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Continuous percentile like PostgreSQL's ``percentile_cont`` (linear interpolation)."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    low, high = math.floor(position), math.ceil(position)
    if low == high:
        return float(sorted_values[low])
    weight = position - low
    return float(sorted_values[low] * (1 - weight) + sorted_values[high] * weight)


def local_time(moment: datetime | None) -> datetime | None:
    """A UTC time as the township reads it (Asia/Shanghai)."""
    return moment.astimezone(SHANGHAI) if moment is not None else None
