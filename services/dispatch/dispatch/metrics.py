"""Dispatch's own business series (the plumbing's series live in ``shared.metrics``)."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from prometheus_client import Counter, Gauge
from sqlalchemy.orm import Session

from dispatch.models import IssueStatsCount, Village
from shared.db import Database
from shared.metrics import ScrapeGauge

RATINGS_NOT_APPLIED = Counter(
    "ratings_not_applied_total",
    "Ratings recorded but not applied: another resolution, or a state that does not take them",
    ["service", "reason"],
)

# The scheduler's heartbeat: an alert fires when it stops moving (the process hangs, or every
# pass fails, e.g. on a database outage), which `up` alone would not show.
SCHEDULER_LAST_RUN = Gauge(
    "scheduler_last_run_timestamp_seconds",
    "Unix time at which the scheduler last finished a pass without an error",
    ["service"],
    multiprocess_mode="mostrecent",
)
SCHEDULER_RUNS = Counter(
    "scheduler_runs_total", "Scheduler passes, by outcome (ok, failed)", ["service", "outcome"]
)
SCHEDULER_ACTIONS = Counter(
    "scheduler_actions_total",
    "What the scheduler did: reminded, overdue, escalated, closed, sampled, digests",
    ["service", "action"],
)


# --- the township's figures, read at scrape time from the running aggregates ---------------------
# ``issue_stats_counts`` (dispatch.aggregates) is kept in the same transaction as every issue
# change and holds one row per (village, category, state, level), never one per issue: reading
# it costs the same at 10 k and at 1 M issues, and the figures agree with GET /api/v1/stats.

Rows = list[tuple[tuple[str, ...], int]]


def _village_label() -> sa.ColumnElement[str]:
    """The village's name; an issue whose village dispatch does not know yet shows its id."""
    return sa.func.coalesce(Village.name, sa.cast(IssueStatsCount.village_id, sa.String))


def issues_by_village(session: Session) -> Rows:
    """((village, category, state), issues) for the ``issues_by_village`` gauge."""
    c = IssueStatsCount
    village = _village_label()
    rows = session.execute(
        sa.select(village, c.category, c.state, sa.func.sum(c.n))
        .outerjoin(Village, Village.id == c.village_id)
        .group_by(village, c.category, c.state)
        .having(sa.func.sum(c.n) != 0)
    )
    return [((str(v), cat, state), int(n)) for v, cat, state, n in rows]


def ratings_by_village(session: Session) -> Rows:
    """((village, category, satisfied yes/no), rated issues) for ``issue_ratings_by_village``."""
    c = IssueStatsCount
    village = _village_label()
    rows = session.execute(
        sa.select(village, c.category, sa.func.sum(c.rated), sa.func.sum(c.satisfied))
        .outerjoin(Village, Village.id == c.village_id)
        .group_by(village, c.category)
        .having(sa.func.sum(c.rated) != 0)
    )
    answer: Rows = []
    for v, cat, rated, satisfied in rows:
        answer.append(((str(v), cat, "yes"), int(satisfied)))
        answer.append(((str(v), cat, "no"), int(rated) - int(satisfied)))
    return answer


def township_gauges(db: Database) -> list[ScrapeGauge]:
    """The scrape-time gauges of the township dashboard (reports per village and category,
    completion and satisfaction rates); each read is one small grouped query."""

    def read(query: Callable[[Session], Rows]) -> Callable[[], Rows]:
        def run() -> Rows:
            with db.transaction() as session:
                return query(session)

        return run

    return [
        ScrapeGauge(
            "issues_by_village",
            "Issues in dispatch's ledger by village, category and state (rejected included)",
            read(issues_by_village),
            labels=("village", "category", "state"),
        ),
        ScrapeGauge(
            "issue_ratings_by_village",
            "Rated issues by village, category and whether the rating is satisfied "
            "(满意 or 基本满意: yes)",
            read(ratings_by_village),
            labels=("village", "category", "satisfied"),
        ),
    ]
