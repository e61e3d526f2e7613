"""Issue statistics: reports and completions per category and village, open work, overdue and
time to resolve.

Without a reporting period (the whole township, a village, a category: the dashboard and the
public figures) the answer comes from the running aggregates that ``dispatch.aggregates`` keeps
with every issue change, so it costs the same at 10 k and at 1 M issues: the counts from
``issue_stats_counts``, the overdue items from an index over the open work past due, and the
median and 90th percentile of the resolve time exactly as ``percentile_cont`` would give them
(the resolve-time buckets say which bucket holds the rank, the resolve-time index gives the
values). With a period, or on the embedded SQLite database, one grouped query scans the issues
reported in it (``issue_stats_scan``, also the reference the aggregates are tested against).
"""

from __future__ import annotations

import functools
import math
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from dispatch import aggregates, domain
from dispatch.models import WORKING as WORKING_SQL
from dispatch.models import Issue, IssueStatsCount, IssueStatsResolveTime, Village
from shared.clock import utcnow

DONE = tuple(sorted(domain.DONE_STATES))
WORKING = tuple(sorted(domain.WORKING_STATES))
# Word for word the predicate of ``ix_issues_resolve_seconds`` (migration 0009).
DONE_SQL = "state IN ('closed', 'resolved') AND resolved_at IS NOT NULL"


@dataclass(frozen=True)
class StatsFilter:
    reported_from: datetime | None = None
    reported_to: datetime | None = None
    village_id: uuid.UUID | None = None
    category: str | None = None


def _where(filters: StatsFilter) -> list[sa.ColumnElement[bool]]:
    clauses: list[sa.ColumnElement[bool]] = []
    if filters.reported_from is not None:
        clauses.append(Issue.reported_at >= filters.reported_from)
    if filters.reported_to is not None:
        clauses.append(Issue.reported_at < filters.reported_to)
    if filters.village_id is not None:
        clauses.append(Issue.village_id == filters.village_id)
    if filters.category is not None:
        clauses.append(Issue.category == filters.category)
    return clauses


def _rate_row(reports: int, completed: int) -> dict[str, Any]:
    return {
        "reports": reports,
        "completed": completed,
        "completion_rate": domain.completion_rate(completed, reports),
    }


def issue_stats(session: Session, filters: StatsFilter, now: datetime | None = None) -> dict:
    """The statistics table of the seed article, for any period, village or category."""
    now = now or utcnow()
    if filters.reported_from is not None or filters.reported_to is not None:
        return issue_stats_scan(session, filters, now)
    if session.get_bind().dialect.name != "postgresql":
        return issue_stats_scan(session, filters, now)
    shape = (filters.village_id is not None, filters.category is not None)
    binds = {"village": filters.village_id, "category": filters.category}
    counts = session.execute(_counts_statement(*shape), binds).all()
    overdue = session.execute(_overdue_statement(*shape), {**binds, "now": now}).all()
    return _answer(
        session, filters, counts, overdue, _time_to_resolve_from_buckets(session, filters)
    )


# The aggregate path's statements are built once per shape (by village, by category), their
# values bound: composing them took a statistics request more CPU than running them.


def _filtered(table: Any, by_village: bool, by_category: bool) -> list[sa.ColumnElement[bool]]:
    """``table`` (``Issue`` or an aggregate) of the parameters ``village`` and ``category``."""
    clauses: list[sa.ColumnElement[bool]] = []
    if by_village:
        clauses.append(table.village_id == sa.bindparam("village"))
    if by_category:
        clauses.append(table.category == sa.bindparam("category"))
    return clauses


@functools.lru_cache(maxsize=4)
def _counts_statement(by_village: bool, by_category: bool) -> sa.Select:
    c = IssueStatsCount
    # Three grouping sets instead of every (village, category, state, level) row: a few hundred
    # rows to fold in Python whatever the township's size. GROUPING() tags each row's set.
    return (
        sa.select(
            c.category,
            c.village_id,
            c.state,
            c.level,
            sa.cast(sa.func.sum(c.n), sa.BigInteger).label("n"),
            sa.literal(0).label("overdue"),
            sa.cast(sa.func.sum(c.rated), sa.BigInteger).label("rated"),
            sa.cast(sa.func.sum(c.satisfied), sa.BigInteger).label("satisfied"),
            sa.func.grouping(c.category, c.village_id, c.level).label("part"),
        )
        .where(*_filtered(c, by_village, by_category))
        .group_by(
            sa.func.grouping_sets(
                sa.tuple_(c.category, c.state),
                sa.tuple_(c.village_id, c.state),
                sa.tuple_(c.state, c.level),
            )
        )
        .having(sa.func.sum(c.n) != 0)
    )


@functools.lru_cache(maxsize=4)
def _overdue_statement(by_village: bool, by_category: bool) -> sa.Select:
    """Open work past due (the parameter ``now``) per village."""
    return (
        sa.select(Issue.village_id, sa.func.count())
        .where(
            sa.text(WORKING_SQL),
            Issue.due_at < sa.bindparam("now", type_=Issue.due_at.type),
            *_filtered(Issue, by_village, by_category),
        )
        .group_by(Issue.village_id)
    )


_BUCKETS = (
    sa.select(IssueStatsResolveTime.bucket, IssueStatsResolveTime.n)
    .where(
        IssueStatsResolveTime.village_id == sa.bindparam("village"),
        IssueStatsResolveTime.category == sa.bindparam("category"),
        IssueStatsResolveTime.n != 0,
    )
    .order_by(IssueStatsResolveTime.bucket)
)
_resolve_seconds = sa.func.extract("epoch", Issue.resolved_at - Issue.reported_at)


@functools.lru_cache(maxsize=8)
def _resolve_seconds_statement(by_village: bool, by_category: bool, from_start: bool) -> sa.Select:
    """Done items' resolve times in seconds, ascending, from the parameter ``start`` when
    ``from_start``, skipping ``skip`` and taking ``take`` (the resolve-time index's order)."""
    clauses = [sa.text(DONE_SQL), *_filtered(Issue, by_village, by_category)]
    if from_start:
        clauses.append(_resolve_seconds >= sa.bindparam("start", type_=sa.Integer))
    return (
        sa.select(sa.cast(_resolve_seconds, sa.Float))
        .where(*clauses)
        .order_by(_resolve_seconds)
        .offset(sa.bindparam("skip", type_=sa.Integer))
        .limit(sa.bindparam("take", type_=sa.Integer))
    )


def issue_stats_scan(session: Session, filters: StatsFilter, now: datetime | None = None) -> dict:
    """The same answer from one grouped scan of the issues (a period, SQLite, the reference)."""
    now = now or utcnow()
    where = _where(filters)
    overdue = sa.and_(Issue.state.in_(WORKING), Issue.due_at < now)
    satisfied = Issue.rating.in_(sorted(domain.SATISFIED_RATINGS))
    rows = session.execute(
        sa.select(
            Issue.category,
            Issue.village_id,
            Issue.state,
            Issue.level,
            sa.func.count().label("n"),
            sa.func.count().filter(overdue).label("overdue"),
            sa.func.count(Issue.rating).label("rated"),
            sa.func.count().filter(satisfied).label("satisfied"),
        )
        .where(*where)
        .group_by(Issue.category, Issue.village_id, Issue.state, Issue.level)
    ).all()
    return _answer(session, filters, rows, [], _time_to_resolve(session, where))


# GROUPING(category, village_id, level) of each grouping set.
_BY_CATEGORY, _BY_VILLAGE, _BY_STATE_LEVEL = 0b011, 0b101, 0b110


def _answer(
    session: Session,
    filters: StatsFilter,
    rows: Iterable[Any],
    overdue_by_village: Iterable[tuple[uuid.UUID, int]],
    time_to_resolve: tuple[float | None, float | None, int],
) -> dict:
    """Fold (category, village, state, level, n, overdue, rated, satisfied) rows, plus overdue
    counts per village, into the answer. A row with a ``part`` (a GROUPING() mask) counts only
    towards what its grouping set holds: 3 categories and totals, 5 villages, 6 open work."""
    by_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_village: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    open_by_state: dict[str, int] = defaultdict(int)
    open_by_level: dict[str, int] = defaultdict(int)
    open_by_state_level: dict[tuple[str, str], int] = defaultdict(int)
    totals = dict.fromkeys(("reports", "completed", "overdue", "rejected", "rated", "satisfied"), 0)
    for row in rows:
        part = getattr(row, "part", None)
        done = row.n if row.state in domain.DONE_STATES else 0
        if part == _BY_VILLAGE:
            village = by_village[row.village_id]
            village[0] += row.n
            village[1] += done
            village[2] += row.n if row.state in domain.OPEN_STATES else 0
            continue
        if part == _BY_STATE_LEVEL:
            if row.state in domain.OPEN_STATES:
                open_by_state[row.state] += row.n
                open_by_level[row.level] += row.n
                open_by_state_level[(row.state, row.level)] += row.n
            continue
        totals["reports"] += row.n
        totals["completed"] += done
        totals["overdue"] += row.overdue
        totals["rated"] += row.rated
        totals["satisfied"] += row.satisfied
        if row.state == "rejected":
            totals["rejected"] += row.n
        by_category[row.category][0] += row.n
        by_category[row.category][1] += done
        if part == _BY_CATEGORY:
            continue
        village = by_village[row.village_id]
        village[0] += row.n
        village[1] += done
        village[3] += row.overdue
        if row.state in domain.OPEN_STATES:
            village[2] += row.n
            open_by_state[row.state] += row.n
            open_by_level[row.level] += row.n
            open_by_state_level[(row.state, row.level)] += row.n

    for village_id, count in overdue_by_village:
        totals["overdue"] += count
        by_village[village_id][3] += count

    names = {row.id: row.name for row in session.execute(sa.select(Village.id, Village.name))}
    categories = [c for c in domain.CATEGORIES if filters.category in (None, c)]
    categories += sorted(c for c in by_category if c not in domain.CATEGORIES)
    median, p90, resolved_count = time_to_resolve
    return {
        "from": filters.reported_from,
        "to": filters.reported_to,
        "village_id": filters.village_id,
        "category": filters.category,
        **_rate_row(totals["reports"], totals["completed"]),
        "overdue": totals["overdue"],
        "rejected": totals["rejected"],
        # Satisfaction: 满意 and 基本满意 among the items that carry a rating.
        "rated": totals["rated"],
        "satisfied": totals["satisfied"],
        "satisfaction_rate": domain.satisfaction_rate(totals["satisfied"], totals["rated"]),
        "by_category": [
            {
                "category": code,
                "label": domain.CATEGORIES.get(code, code),
                **_rate_row(*by_category.get(code, [0, 0])),
            }
            for code in categories
        ],
        "open": {
            "total": sum(open_by_state.values()),
            "by_state": {
                s: open_by_state.get(s, 0) for s in domain.STATES if s in domain.OPEN_STATES
            },
            "by_level": {lv: open_by_level.get(lv, 0) for lv in domain.LEVELS},
            "by_state_level": [
                {"state": s, "level": lv, "count": n}
                for (s, lv), n in sorted(open_by_state_level.items())
            ],
        },
        "time_to_resolve_hours": {
            "count": resolved_count,
            "median": _hours(median),
            "p90": _hours(p90),
        },
        "by_village": sorted(
            (
                {
                    "village_id": vid,
                    "name": names.get(vid),
                    **_rate_row(v[0], v[1]),
                    "open": v[2],
                    "overdue": v[3],
                }
                for vid, v in by_village.items()
            ),
            key=lambda item: (item["name"] is None, item["name"] or "", str(item["village_id"])),
        ),
    }


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 3600, 2)


def _time_to_resolve_from_buckets(
    session: Session, filters: StatsFilter
) -> tuple[float | None, float | None, int]:
    """Median and 90th percentile as ``percentile_cont`` computes them over the same items: the
    buckets give each rank's bucket, the resolve-time index the exact values."""
    village = filters.village_id or aggregates.ANY_VILLAGE
    category = filters.category or aggregates.ANY_CATEGORY
    buckets = session.execute(_BUCKETS, {"village": village, "category": category}).all()
    total = sum(n for _, n in buckets)
    if total == 0:
        return None, None, 0
    shape = (filters.village_id is not None, filters.category is not None)
    binds = {"village": filters.village_id, "category": filters.category}

    def values_from(rank: int, count: int) -> list[float]:
        before, start = 0, None
        for bucket, n in buckets:
            if rank < before + n:
                start = aggregates.bucket_start(bucket)
                break
            before += n
        stmt = _resolve_seconds_statement(*shape, start is not None)
        values = {**binds, "start": start, "skip": rank - before, "take": count}
        return [float(v) for v in session.scalars(stmt, values)]

    def percentile_cont(fraction: float) -> float:
        # PostgreSQL's percentile_cont_final_common and float8_lerp, step for step.
        position = fraction * (total - 1)
        first, second = math.floor(position), math.ceil(position)
        values = values_from(first, 1 if first == second else 2)
        if first == second:
            return values[0]
        return values[0] + (position - first) * (values[1] - values[0])

    return percentile_cont(0.5), percentile_cont(0.9), total


def _time_to_resolve(
    session: Session, where: list[sa.ColumnElement[bool]]
) -> tuple[float | None, float | None, int]:
    """Median and 90th percentile of report → resolution, in seconds, over completed items."""
    done = [Issue.state.in_(DONE), Issue.resolved_at.is_not(None), *where]
    if session.get_bind().dialect.name == "postgresql":
        seconds = sa.func.extract("epoch", Issue.resolved_at - Issue.reported_at)
        row = session.execute(
            sa.select(
                sa.func.percentile_cont(0.5).within_group(seconds),
                sa.func.percentile_cont(0.9).within_group(seconds),
                sa.func.count(),
            ).where(*done)
        ).one()
        return (
            float(row[0]) if row[0] is not None else None,
            float(row[1]) if row[1] is not None else None,
            int(row[2]),
        )
    pairs = session.execute(sa.select(Issue.reported_at, Issue.resolved_at).where(*done))
    values = sorted((resolved - reported).total_seconds() for reported, resolved in pairs)
    return domain.percentile(values, 0.5), domain.percentile(values, 0.9), len(values)


def open_counts(session: Session) -> list[tuple[str, str, int]]:
    """(state, level, count) of open items, for the ``issues_open`` gauge."""
    rows = session.execute(
        sa.select(Issue.state, Issue.level, sa.func.count())
        .where(Issue.state.in_(domain.OPEN_STATES))
        .group_by(Issue.state, Issue.level)
    )
    return [(r[0], r[1], int(r[2])) for r in rows]


def overdue_count(session: Session, now: datetime | None = None) -> int:
    """Open items past their deadline (uses the tasks index's predicate)."""
    now = now or utcnow()
    return int(
        session.execute(
            sa.select(sa.func.count()).where(Issue.state.in_(WORKING), Issue.due_at < now)
        ).scalar_one()
    )
