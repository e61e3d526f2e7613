"""The words every service's events use, with their Chinese labels, kept once (DESIGN.md).

Events carry the codes; each service shows the labels. A service that needs another wording
for its own screens (dispatch's admin says 待交办 where the resident reads 已受理) overrides the
label locally, never the code. Example::

    from shared.contract import CATEGORIES, RATINGS
    CATEGORIES["water_power"]   # "用水用电"
"""

from __future__ import annotations

CATEGORIES: dict[str, str] = {
    "admin_affairs": "群众办事",
    "road_traffic": "道路交通",
    "neighbor_dispute": "邻里纠纷",
    "medical_elderly": "医疗养老",
    "water_power": "用水用电",
    "other": "其他",
}

# The life cycle's states (as the resident reads them).
STATES: dict[str, str] = {
    "reported": "已受理",
    "assigned": "已交办",
    "in_progress": "办理中",
    "resolved": "已办结",
    "reopened": "重新办理",
    "closed": "已关闭",
    "rejected": "不予受理",
    "withdrawn": "已撤回",
}
OPEN_STATES: frozenset[str] = frozenset({"reported", "assigned", "in_progress", "reopened"})
# States in which someone holds the task and a deadline runs.
WORKING_STATES: frozenset[str] = frozenset({"assigned", "in_progress", "reopened"})
DONE_STATES: frozenset[str] = frozenset({"resolved", "closed"})

# Escalation levels, lowest first: each climbs one at a time.
LEVELS: tuple[str, ...] = ("grid", "township", "area_leader", "county")
LEVEL_LABELS: dict[str, str] = {
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
# What counts as satisfied in every satisfaction rate.
SATISFIED_RATINGS: frozenset[str] = frozenset({"satisfied", "basically_satisfied"})

# Why an issue went back to work (``issue.reopened`` reason).
REOPEN_REASONS: tuple[str, ...] = ("unsatisfied", "callback_failed", "admin")
