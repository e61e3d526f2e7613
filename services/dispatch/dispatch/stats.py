"""Issue statistics: reports and completions per category and village, open work, overdue and
time to resolve. One grouped query does the counting; percentiles are computed by PostgreSQL
(``percentile_cont``), or in Python on the embedded SQLite database.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from dispatch import domain
from dispatch.models import Issue, Village
from shared.clock import utcnow

DONE = tuple(sorted(domain.DONE_STATES))
WORKING = tuple(sorted(domain.WORKING_STATES))


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

    by_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_village: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    open_by_state: dict[str, int] = defaultdict(int)
    open_by_level: dict[str, int] = defaultdict(int)
    open_by_state_level: dict[tuple[str, str], int] = defaultdict(int)
    totals = dict.fromkeys(("reports", "completed", "overdue", "rejected", "rated", "satisfied"), 0)
    for row in rows:
        done = row.n if row.state in domain.DONE_STATES else 0
        totals["reports"] += row.n
        totals["completed"] += done
        totals["overdue"] += row.overdue
        totals["rated"] += row.rated
        totals["satisfied"] += row.satisfied
        if row.state == "rejected":
            totals["rejected"] += row.n
        by_category[row.category][0] += row.n
        by_category[row.category][1] += done
        village = by_village[row.village_id]
        village[0] += row.n
        village[1] += done
        village[3] += row.overdue
        if row.state in domain.OPEN_STATES:
            village[2] += row.n
            open_by_state[row.state] += row.n
            open_by_level[row.level] += row.n
            open_by_state_level[(row.state, row.level)] += row.n

    names = {row.id: row.name for row in session.execute(sa.select(Village.id, Village.name))}
    categories = [c for c in domain.CATEGORIES if filters.category in (None, c)]
    categories += sorted(c for c in by_category if c not in domain.CATEGORIES)
    median, p90, resolved_count = _time_to_resolve(session, where)
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
