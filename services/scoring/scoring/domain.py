"""Scoring's rules, free of Flask, pika and SQLAlchemy: periods in Asia/Shanghai, which rule
version is in force on a day, what an event earns, how an entry moves the totals, the ranks and
the KPI rates.

Rule codes and what their ``points`` mean (versions are data: ``rules`` table):

=============================  =========================================================
``resolved_on_time``           points per difficulty point (1 → difficulty 4 earns 4)
``resolved_late``              points for a resolution after ``due_at`` (0)
``rating_satisfied``           the resolver, on a 满意 rating (+1)
``rating_basically_satisfied`` on a 基本满意 rating (0)
``rating_unsatisfied``         on a 不满意 rating (−1)
``reopen_clawback``            on a reopen, this many times the on-time points of the
                               reopened resolution are taken back (1: all of them)
``callback_passed``            the resolver, on a passed follow-up callback (0)
``callback_failed``            on a failed callback (−2)
=============================  =========================================================
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from shared.clock import SHANGHAI, to_local
from shared.contract import SATISFIED_RATINGS

# code → (default points, 中文名称, meaning of points)
DEFAULT_RULES: dict[str, tuple[int, str, str]] = {
    "resolved_on_time": (1, "按时办结", "每难度分得分（难度 1-5 乘以此值）"),
    "resolved_late": (0, "超期办结", "超期办结得分"),
    "rating_satisfied": (1, "群众满意", "评价满意时办结人得分"),
    "rating_basically_satisfied": (0, "群众基本满意", "评价基本满意时办结人得分"),
    "rating_unsatisfied": (-1, "群众不满意", "评价不满意时办结人得分"),
    "reopen_clawback": (1, "重新办理扣回", "事项重新办理时扣回该次办结按时得分的倍数"),
    "callback_passed": (0, "回访通过", "回访通过时办结人得分"),
    "callback_failed": (-2, "回访未通过", "回访未通过时办结人得分"),
}
RULE_CODES: tuple[str, ...] = tuple(DEFAULT_RULES)
RULE_LABELS: dict[str, str] = {code: label for code, (_, label, _) in DEFAULT_RULES.items()}
# The date the built-in versions (version 1) apply from.
DEFAULT_EFFECTIVE_FROM = date(2020, 1, 1)

RATING_RULES = {
    "satisfied": "rating_satisfied",
    "basically_satisfied": "rating_basically_satisfied",
    "unsatisfied": "rating_unsatisfied",
}

# The columns of ``score_totals`` each rule's entry counts one up (besides points and entries).
COUNTS_BY_RULE: dict[str, tuple[str, ...]] = {
    "resolved_on_time": ("resolved", "resolved_on_time"),
    "resolved_late": ("resolved",),
    "rating_satisfied": ("rated", "satisfied"),
    "rating_basically_satisfied": ("rated", "satisfied"),
    "rating_unsatisfied": ("rated",),
    "reopen_clawback": ("reopened",),
    "callback_passed": ("callbacks", "callbacks_passed"),
    "callback_failed": ("callbacks",),
}
TOTAL_COUNTS: tuple[str, ...] = (
    "resolved",
    "resolved_on_time",
    "rated",
    "satisfied",
    "reopened",
    "callbacks",
    "callbacks_passed",
    "assigned",
    "responded",
)
assert {"satisfied", "basically_satisfied"} == SATISFIED_RATINGS  # COUNTS_BY_RULE follows it


class InvalidPeriod(ValueError):
    """A period that is not ``month:YYYY-MM``, ``quarter:YYYY-Qn``, ``year:YYYY`` or ``all``."""


# --- periods (Asia/Shanghai) ---------------------------------------------------------------------

_PERIOD = re.compile(r"^(?:month:(\d{4})-(\d{2})|quarter:(\d{4})-Q([1-4])|year:(\d{4})|all)$")


@dataclass(frozen=True)
class Period:
    kind: str  # month, quarter, year, all
    year: int = 0
    number: int = 0  # month 1-12 or quarter 1-4

    @property
    def key(self) -> str:
        if self.kind == "month":
            return f"month:{self.year:04d}-{self.number:02d}"
        if self.kind == "quarter":
            return f"quarter:{self.year:04d}-Q{self.number}"
        if self.kind == "year":
            return f"year:{self.year:04d}"
        return "all"

    @property
    def month_text(self) -> str:
        """``2026-11`` of a month period (the ledger's ``period_month``)."""
        return f"{self.year:04d}-{self.number:02d}"

    def previous(self) -> Period | None:
        """The period before this one (for the change in rank); ``all`` has none."""
        if self.kind == "month":
            y, m = (self.year, self.number - 1) if self.number > 1 else (self.year - 1, 12)
            return Period("month", y, m)
        if self.kind == "quarter":
            y, q = (self.year, self.number - 1) if self.number > 1 else (self.year - 1, 4)
            return Period("quarter", y, q)
        if self.kind == "year":
            return Period("year", self.year - 1)
        return None

    def months(self) -> list[str]:
        """The ``YYYY-MM`` months the period covers (empty for ``all``: every month)."""
        if self.kind == "month":
            return [self.month_text]
        if self.kind == "quarter":
            first = (self.number - 1) * 3 + 1
            return [f"{self.year:04d}-{m:02d}" for m in range(first, first + 3)]
        if self.kind == "year":
            return [f"{self.year:04d}-{m:02d}" for m in range(1, 13)]
        return []


def parse_period(text: str) -> Period:
    match = _PERIOD.match(text.strip())
    if not match:
        raise InvalidPeriod(text)
    my, mm, qy, qn, yy = match.groups()
    if my:
        if not 1 <= int(mm) <= 12:
            raise InvalidPeriod(text)
        return Period("month", int(my), int(mm))
    if qy:
        return Period("quarter", int(qy), int(qn))
    if yy:
        return Period("year", int(yy))
    return Period("all")


def month_of(moment: datetime) -> str:
    """The Asia/Shanghai month ``YYYY-MM`` a moment counts in (2026-11-30T16:00Z → 2026-12)."""
    local = to_local(moment)
    return f"{local.year:04d}-{local.month:02d}"


def periods_of_month(month: str) -> tuple[str, ...]:
    """The four totals a ``YYYY-MM`` month rolls into: month, quarter, year and all."""
    year, number = int(month[:4]), int(month[5:7])
    return (
        f"month:{month}",
        f"quarter:{year:04d}-Q{(number - 1) // 3 + 1}",
        f"year:{year:04d}",
        "all",
    )


def periods_of(moment: datetime) -> tuple[str, ...]:
    return periods_of_month(month_of(moment))


def current_month(now: datetime) -> Period:
    local = to_local(now)
    return Period("month", local.year, local.month)


def local_day(moment: datetime) -> date:
    return to_local(moment).date()


def tomorrow(now: datetime) -> date:
    return local_day(now) + timedelta(days=1)


def month_start(period: Period) -> datetime:
    return datetime(period.year, period.number, 1, tzinfo=SHANGHAI)


# --- rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleVersion:
    code: str
    version: int
    points: int
    effective_from: date


def rule_in_force(versions: Iterable[RuleVersion], code: str, day: date) -> RuleVersion:
    """The version of ``code`` that applies on ``day``: the latest whose date is not after it
    (the built-in default when none is stored yet, or for a day before every version)."""
    candidates = [v for v in versions if v.code == code and v.effective_from <= day]
    if candidates:
        return max(candidates, key=lambda v: (v.effective_from, v.version))
    return RuleVersion(code, 0, DEFAULT_RULES[code][0], DEFAULT_EFFECTIVE_FROM)


@dataclass(frozen=True)
class Award:
    """What one event earns one person under one rule (not yet an entry)."""

    rule: RuleVersion
    points: int

    @property
    def code(self) -> str:
        return self.rule.code


def resolution_award(
    versions: Sequence[RuleVersion], *, on_time: bool, difficulty: int | None, day: date
) -> Award:
    """On time: difficulty × the rule's points; late: the late rule's (flat) points."""
    if on_time:
        rule = rule_in_force(versions, "resolved_on_time", day)
        return Award(rule, rule.points * clamp_difficulty(difficulty))
    rule = rule_in_force(versions, "resolved_late", day)
    return Award(rule, rule.points)


def clamp_difficulty(difficulty: int | None) -> int:
    """Difficulty 1-5 (a missing one counts as 1)."""
    if difficulty is None:
        return 1
    return max(1, min(5, int(difficulty)))


def rating_award(versions: Sequence[RuleVersion], *, rating: str, day: date) -> Award | None:
    code = RATING_RULES.get(rating)
    if code is None:
        return None
    rule = rule_in_force(versions, code, day)
    return Award(rule, rule.points)


def clawback_award(versions: Sequence[RuleVersion], *, earned: int, day: date) -> Award:
    """A reopened resolution gives back ``earned`` × the rule's factor (never a gain)."""
    rule = rule_in_force(versions, "reopen_clawback", day)
    return Award(rule, -max(earned, 0) * rule.points)


def callback_award(versions: Sequence[RuleVersion], *, passed: bool, day: date) -> Award:
    rule = rule_in_force(versions, "callback_passed" if passed else "callback_failed", day)
    return Award(rule, rule.points)


def total_increments(rule_code: str, points: int) -> dict[str, int]:
    """How one ledger entry moves a ``score_totals`` row."""
    increments = {"points": points, "entries": 1}
    for column in COUNTS_BY_RULE.get(rule_code, ()):
        increments[column] = increments.get(column, 0) + 1
    return increments


def responded(assigned_at: datetime, started_at: datetime, limit_hours: float) -> bool:
    """Response: an assigned item started within the limit."""
    return started_at - assigned_at <= timedelta(hours=limit_hours)


def on_time(resolved_at: datetime, due_at: datetime | None) -> bool:
    return due_at is None or resolved_at <= due_at


# --- ranks and rates -----------------------------------------------------------------------------


def standard_ranks(keys: Sequence[tuple]) -> list[int]:
    """Standard competition ranks (1, 1, 3) of keys already sorted best first."""
    ranks: list[int] = []
    for position, key in enumerate(keys, start=1):
        ranks.append(ranks[-1] if ranks and keys[position - 2] == key else position)
    return ranks


def rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass(frozen=True)
class Kpis:
    response_rate: float | None
    on_time_rate: float | None
    satisfaction_rate: float | None
    reopen_rate: float | None
    callback_pass_rate: float | None
    composite: float | None


def kpis(counts: Mapping[str, int], weights: Mapping[str, int]) -> Kpis:
    """The KPI rates of some totals, and their weighted composite (a rate with no data leaves
    the composite, the other weights are scaled up; none at all: no composite)."""
    rates = {
        "response_rate": rate(counts.get("responded", 0), counts.get("assigned", 0)),
        "on_time_rate": rate(counts.get("resolved_on_time", 0), counts.get("resolved", 0)),
        "satisfaction_rate": rate(counts.get("satisfied", 0), counts.get("rated", 0)),
    }
    present = {k: w for k, w in weights.items() if rates.get(k) is not None}
    total = sum(present.values())
    composite = (
        round(sum(rates[k] * w for k, w in present.items()) / total, 4) if total else None  # type: ignore[operator]
    )
    return Kpis(
        response_rate=rates["response_rate"],
        on_time_rate=rates["on_time_rate"],
        satisfaction_rate=rates["satisfaction_rate"],
        reopen_rate=rate(counts.get("reopened", 0), counts.get("resolved", 0)),
        callback_pass_rate=rate(counts.get("callbacks_passed", 0), counts.get("callbacks", 0)),
        composite=composite,
    )
