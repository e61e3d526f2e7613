"""Reads of scoring: leaderboards, KPIs, the assessment table and a person's points, all
served from ``score_totals`` (and ``people``/``villages`` for names), never by summing the
ledger per request; plus the monthly 红黑榜 and the rebuild of the totals from the ledger.
"""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scoring import domain
from scoring.models import (
    Assignment,
    BoardPublication,
    Issue,
    Person,
    PointsEntry,
    ScoreTotal,
    Village,
)
from scoring.settings import ScoringSettings
from shared.auth import Principal
from shared.clock import utcnow
from shared.db import names_by_id
from shared.errors import Invalid, NotFound
from shared.events import emit
from shared.export import csv_bytes, xlsx_bytes
from shared.pagination import KeysetQuery, keyset_page

SCOPES = ("worker", "grid", "village")
KPI_SCOPES = ("worker", "grid", "village", "township")
_COUNTS = ("points", *domain.TOTAL_COUNTS)


def period_or_current(text: str | None, now: datetime) -> domain.Period:
    if not text:
        return domain.current_month(now)
    try:
        return domain.parse_period(text)
    except domain.InvalidPeriod:
        raise Invalid(
            "统计周期格式应为 month:2026-11、quarter:2026-Q4、year:2026 或 all。",
            code="invalid_period",
            details={"period": ["格式有误"]},
        ) from None


# --- rankings ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _ranking(scope: str, of_village: bool, period: str = "period") -> sa.Subquery:
    """Everyone on the board in ``scope`` (of one village, the parameter ``village``, when
    ``of_village``) with their totals of the period in the parameter named ``period`` and
    their standard competition rank (points, then on-time resolutions; equal on both share a
    rank). Reads ``people`` and one ``score_totals`` row per person: its cost follows the
    number of people, not the size of the ledger. Built once per shape: composing it took a
    leaderboard request more CPU than running it."""
    t = ScoreTotal
    joined = sa.outerjoin(
        Person,
        t,
        sa.and_(t.user_id == Person.id, t.period == sa.bindparam(period, type_=sa.String)),
    )
    where = [Person.on_board.is_(True)]
    if of_village:
        where.append(Person.village_id == sa.bindparam("village"))
    if scope == "worker":
        points = sa.func.coalesce(t.points, 0)
        on_time = sa.func.coalesce(t.resolved_on_time, 0)
        rated = sa.func.coalesce(t.rated, 0)
        satisfied = sa.func.coalesce(t.satisfied, 0)
        key = Person.id
        extra = [
            Person.name.label("name"),
            Person.village_id.label("village_id"),
            Person.grid_id.label("grid_id"),
        ]
        group: list[Any] = []
    else:
        points = sa.func.sum(sa.func.coalesce(t.points, 0))
        on_time = sa.func.sum(sa.func.coalesce(t.resolved_on_time, 0))
        rated = sa.func.sum(sa.func.coalesce(t.rated, 0))
        satisfied = sa.func.sum(sa.func.coalesce(t.satisfied, 0))
        key = Person.grid_id if scope == "grid" else Person.village_id
        where.append(key.is_not(None))
        extra = [
            sa.func.max(sa.cast(Person.grid_leader_id, sa.String)).label("leader_id")
            if scope == "grid"
            else sa.literal(None, sa.String).label("leader_id"),
            sa.func.max(sa.cast(Person.village_id, sa.String)).label("village_text"),
        ]
        group = [key]
    stmt = (
        sa.select(
            key.label("id"),
            *extra,
            sa.cast(points, sa.Integer).label("points"),
            sa.cast(on_time, sa.Integer).label("resolved_on_time"),
            sa.cast(rated, sa.Integer).label("rated"),
            sa.cast(satisfied, sa.Integer).label("satisfied"),
            sa.cast(
                sa.func.rank().over(order_by=(points.desc(), on_time.desc())), sa.Integer
            ).label("rank"),
        )
        .select_from(joined)
        .where(*where)
    )
    if group:
        stmt = stmt.group_by(*group)
    return stmt.subquery("ranking")


def leaderboard(
    session: Session,
    *,
    period: domain.Period,
    scope: str,
    village_id: uuid.UUID | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the board, best first, with each row's change in rank since the period
    before (positive: climbed)."""
    of_village = village_id is not None
    rows, next_cursor = keyset_page(
        session,
        _board_query(scope, of_village),
        key=lambda r: [r.rank, r.id],
        cursor=cursor,
        limit=limit,
        scalars=False,
        params={"period": period.key, "village": village_id},
    )
    previous: dict[Any, int] = {}
    before = period.previous()
    if before is not None and rows:
        binds = {"before": before.key, "village": village_id, "ids": [r.id for r in rows]}
        previous = dict(session.execute(_earlier_ranks(scope, of_village), binds).all())
    names = _names(session, scope, rows)
    items = []
    for row in rows:
        name, village, village_name = names[row.id]
        items.append(
            {
                "rank": row.rank,
                "id": row.id,
                "name": name,
                "village_id": village,
                "village_name": village_name,
                "points": row.points,
                "resolved_on_time": row.resolved_on_time,
                "satisfaction_rate": domain.rate(row.satisfied, row.rated),
                "rank_change": (previous[row.id] - row.rank) if row.id in previous else None,
            }
        )
    return items, next_cursor


@functools.lru_cache(maxsize=8)
def _board_query(scope: str, of_village: bool) -> KeysetQuery:
    ranking = _ranking(scope, of_village)
    return KeysetQuery(sa.select(ranking), order=[ranking.c.rank.asc(), ranking.c.id.asc()])


@functools.lru_cache(maxsize=8)
def _earlier_ranks(scope: str, of_village: bool) -> sa.Select:
    """The ranks in the period before (parameter ``before``) of the rows ``ids``."""
    earlier = _ranking(scope, of_village, "before")
    return sa.select(earlier.c.id, earlier.c.rank).where(
        earlier.c.id.in_(sa.bindparam("ids", expanding=True)),
        # Only who was on last period's board by what they did: a board where everyone shared
        # rank 1 with nothing would make every change look large.
        sa.or_(earlier.c.points != 0, earlier.c.resolved_on_time > 0, earlier.c.rated > 0),
    )


def _names(session: Session, scope: str, rows: list[Any]) -> dict[Any, tuple[str, Any, Any]]:
    """Display names: a worker's own; a grid's as 村名 + 网格长 name; a village's name."""
    if scope == "worker":
        villages = _village_names(session, {r.village_id for r in rows})
        return {r.id: (r.name, r.village_id, villages.get(r.village_id)) for r in rows}
    village_ids = {uuid.UUID(r.village_text) for r in rows if r.village_text}
    if scope == "village":
        villages = _village_names(session, {r.id for r in rows})
        return {r.id: (villages.get(r.id) or "", r.id, villages.get(r.id)) for r in rows}
    villages = _village_names(session, village_ids)
    leaders = {uuid.UUID(r.leader_id) for r in rows if r.leader_id}
    leader_names = dict(
        session.execute(sa.select(Person.id, Person.name).where(Person.id.in_(leaders))).all()
    )
    out = {}
    for r in rows:
        village = uuid.UUID(r.village_text) if r.village_text else None
        leader = leader_names.get(uuid.UUID(r.leader_id)) if r.leader_id else None
        label = f"{villages.get(village) or ''}{leader + '的网格' if leader else '网格'}"
        out[r.id] = (label, village, villages.get(village))
    return out


def _village_names(session: Session, ids: set[Any]) -> dict[Any, str]:
    return names_by_id(session, Village, ids)


# --- KPIs ----------------------------------------------------------------------------------------


@dataclass
class KpiRow:
    scope: str
    id: Any
    name: str
    village_id: Any = None
    village_name: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    kpis: domain.Kpis | None = None


def kpi_rows(
    session: Session,
    settings: ScoringSettings,
    *,
    scope: str,
    period: domain.Period,
    village_id: uuid.UUID | None = None,
) -> list[KpiRow]:
    """The KPI rates per worker, grid, village, or for the whole township, from the totals."""
    t = ScoreTotal
    joined = sa.outerjoin(Person, t, sa.and_(t.user_id == Person.id, t.period == period.key))
    stmt = (
        sa.select(
            Person.id,
            Person.name,
            Person.village_id,
            Person.grid_id,
            *[sa.func.coalesce(getattr(t, c), 0).label(c) for c in _COUNTS],
        )
        .select_from(joined)
        .where(Person.on_board.is_(True))
        .order_by(Person.name, Person.id)
    )
    if village_id is not None:
        stmt = stmt.where(Person.village_id == village_id)
    people = session.execute(stmt).all()
    villages = _village_names(session, {p.village_id for p in people})
    groups: dict[Any, KpiRow] = {}
    for p in people:
        if scope == "worker":
            key, name = p.id, p.name
        elif scope == "grid":
            if p.grid_id is None:
                continue
            key, name = p.grid_id, f"{villages.get(p.village_id) or ''}网格"
        elif scope == "village":
            if p.village_id is None:
                continue
            key, name = p.village_id, villages.get(p.village_id) or ""
        else:
            key, name = "township", "全乡"
        row = groups.get(key)
        if row is None:
            row = groups[key] = KpiRow(
                scope=scope,
                id=key if key != "township" else None,
                name=name,
                village_id=p.village_id if scope != "township" else None,
                village_name=villages.get(p.village_id) if scope != "township" else None,
                counts={c: 0 for c in _COUNTS},
            )
        for c in _COUNTS:
            row.counts[c] += getattr(p, c)
    for row in groups.values():
        row.kpis = domain.kpis(row.counts, settings.kpi_weights)
    if scope == "township" and not groups:
        empty = {c: 0 for c in _COUNTS}
        groups["township"] = KpiRow(
            "township", None, "全乡", counts=empty, kpis=domain.kpis(empty, settings.kpi_weights)
        )
    return list(groups.values())


ASSESSMENT_HEADERS = (
    "排名",
    "姓名",
    "所在村",
    "积分",
    "办结数",
    "按时办结数",
    "响应率(%)",
    "按时办结率(%)",
    "满意率(%)",
    "返工率(%)",
    "回访通过率(%)",
    "综合得分",
)


def _percent(value: float | None) -> float | str:
    return "" if value is None else round(value * 100, 2)


def assessment(
    session: Session, settings: ScoringSettings, period: domain.Period, fmt: str
) -> bytes:
    """The township's assessment table (考核表): one row per grid worker or leader, ranked."""
    rows = kpi_rows(session, settings, scope="worker", period=period)
    ranked = sorted(rows, key=lambda r: (-r.counts["points"], -r.counts["resolved_on_time"]))
    ranks = domain.standard_ranks(
        [(r.counts["points"], r.counts["resolved_on_time"]) for r in ranked]
    )
    table = []
    for rank, row in zip(ranks, ranked, strict=True):
        k = row.kpis
        assert k is not None
        table.append(
            [
                rank,
                row.name,
                row.village_name or "",
                row.counts["points"],
                row.counts["resolved"],
                row.counts["resolved_on_time"],
                _percent(k.response_rate),
                _percent(k.on_time_rate),
                _percent(k.satisfaction_rate),
                _percent(k.reopen_rate),
                _percent(k.callback_pass_rate),
                _percent(k.composite),
            ]
        )
    if fmt == "xlsx":
        return xlsx_bytes(
            ASSESSMENT_HEADERS,
            table,
            title=f"网格员考核 {period.key.replace(':', ' ')}",
            widths=(6, 12, 14, 8, 8, 10, 10, 12, 10, 10, 12, 10),
        )
    return csv_bytes(ASSESSMENT_HEADERS, table)


# --- a person's points ---------------------------------------------------------------------------


def points_of(
    session: Session,
    user_id: uuid.UUID,
    *,
    now: datetime,
    period: domain.Period | None,
    cursor: str | None,
    limit: int,
) -> dict[str, Any]:
    """A person's ledger entries, newest first (with the issue's ticket number), and their
    totals in the periods containing today (or the one asked for)."""
    stmt = (
        sa.select(
            PointsEntry,
            sa.func.coalesce(PointsEntry.ticket_no, Issue.ticket_no).label("ticket"),
        )
        .outerjoin(Issue, Issue.id == PointsEntry.issue_id)
        .where(PointsEntry.user_id == user_id)
    )
    if period is not None and period.kind != "all":
        stmt = stmt.where(PointsEntry.period_month.in_(period.months()))
    rows, next_cursor = keyset_page(
        session,
        stmt,
        order=[PointsEntry.occurred_at.desc(), PointsEntry.id.desc()],
        key=lambda r: [r[0].occurred_at, r[0].id],
        cursor=cursor,
        limit=limit,
        scalars=False,
    )
    items = []
    for entry, ticket in rows:
        items.append(
            {
                "id": entry.id,
                "points": entry.points,
                "rule": entry.rule_code,
                "reason": domain.RULE_LABELS.get(entry.rule_code, entry.rule_code),
                "rule_version": entry.rule_version,
                "issue_id": entry.issue_id,
                "ticket_no": ticket,
                "occurred_at": entry.occurred_at,
                "period": f"month:{entry.period_month}",
            }
        )
    keys = [period.key] if period is not None else list(domain.periods_of(now))
    found = {
        t.period: t
        for t in session.scalars(
            sa.select(ScoreTotal).where(ScoreTotal.user_id == user_id, ScoreTotal.period.in_(keys))
        )
    }
    totals = []
    for key in keys:
        row = found.get(key)
        totals.append(
            {
                "period": key,
                "points": row.points if row else 0,
                "resolved": row.resolved if row else 0,
                "resolved_on_time": row.resolved_on_time if row else 0,
                "rated": row.rated if row else 0,
                "satisfied": row.satisfied if row else 0,
            }
        )
    person = session.get(Person, user_id)
    return {
        "user_id": user_id,
        "name": person.name if person else "",
        "totals": totals,
        "items": items,
        "next_cursor": next_cursor,
    }


def check_may_see_worker(session: Session, viewer: Principal, worker_id: uuid.UUID) -> Person:
    """Admins see anyone's points; a grid leader their grid's workers; an area leader the
    workers of their villages; anyone themselves. Anyone else: not found (404)."""
    worker = session.get(Person, worker_id)
    if worker is None:
        raise NotFound("未找到该网格员。", code="worker_not_found")
    if viewer.has("admin") or viewer.id == worker.id:
        return worker
    if viewer.has("grid_leader") and worker.grid_leader_id == viewer.id:
        return worker
    if viewer.has("area_leader") and worker.village_id is not None:
        village = session.get(Village, worker.village_id)
        if village is not None and village.area_leader_id == viewer.id:
            return worker
    raise NotFound("未找到该网格员。", code="worker_not_found")


# --- the monthly 红黑榜 ---------------------------------------------------------------------------


def publish_board(
    session: Session, settings: ScoringSettings, period: domain.Period, *, by: str
) -> dict[str, Any]:
    """Announce a month's top and bottom ``BOARD_SIZE`` workers (``leaderboard.published``)
    and remember that it was published."""
    if period.kind != "month":
        raise Invalid("红黑榜按月发布，周期应为 month:YYYY-MM。", code="invalid_period")
    ranking = _ranking("worker", False)
    rows = session.execute(
        sa.select(ranking).order_by(ranking.c.rank.asc(), ranking.c.id.asc()),
        {"period": period.key},
    ).all()
    size = settings.board_size

    def place(row: Any) -> dict[str, Any]:
        return {"user_id": row.id, "name": row.name, "points": row.points, "rank": row.rank}

    top = [place(r) for r in rows[:size]]
    bottom = [place(r) for r in reversed(rows[max(size, len(rows) - size) :])]
    data = {"period": period.key, "top": top, "bottom": bottom}
    emit(session, "leaderboard.published", data)
    publication = session.get(BoardPublication, period.key)
    if publication is None:
        session.add(BoardPublication(period=period.key, published_by=by))
    else:
        publication.published_by = by
        publication.published_at = utcnow()
    return data


def already_published(session: Session, period: domain.Period) -> bool:
    return session.get(BoardPublication, period.key) is not None


def publish_last_month(
    session: Session, settings: ScoringSettings, now: datetime | None = None
) -> dict[str, Any] | None:
    """The worker's monthly job: last month's board, unless it was published already."""
    period = domain.current_month(now or utcnow()).previous()
    if period is None or already_published(session, period):
        return None
    return publish_board(session, settings, period, by="worker")


# --- rebuild -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    period: str
    user_id: uuid.UUID
    column: str
    stored: int
    expected: int


def expected_totals(session: Session) -> dict[tuple[str, uuid.UUID], dict[str, int]]:
    """Every total, recomputed: the ledger grouped by person, month and rule, and the
    assignments grouped by person and month, rolled up into month, quarter, year and all."""
    expected: dict[tuple[str, uuid.UUID], dict[str, int]] = defaultdict(
        lambda: {c: 0 for c in (*_COUNTS, "entries")}
    )
    ledger = session.execute(
        sa.select(
            PointsEntry.user_id,
            PointsEntry.period_month,
            PointsEntry.rule_code,
            sa.func.sum(PointsEntry.points),
            sa.func.count(),
        ).group_by(PointsEntry.user_id, PointsEntry.period_month, PointsEntry.rule_code)
    )
    for user_id, month, rule, points, count in ledger:
        for period in domain.periods_of_month(month):
            row = expected[(period, user_id)]
            row["points"] += int(points)
            row["entries"] += count
            for column in domain.COUNTS_BY_RULE.get(rule, ()):
                row[column] += count
    assignments = session.execute(
        sa.select(
            Assignment.assignee_id,
            Assignment.period_month,
            sa.func.count(),
            sa.func.sum(sa.case((Assignment.responded.is_(True), 1), else_=0)),
        ).group_by(Assignment.assignee_id, Assignment.period_month)
    )
    for user_id, month, count, responded in assignments:
        for period in domain.periods_of_month(month):
            row = expected[(period, user_id)]
            row["assigned"] += count
            row["responded"] += int(responded or 0)
    return expected


def rebuild(session: Session, *, fix: bool = True) -> list[Difference]:
    """Recompute every total from the ledger (and the assignments), report each difference
    and, with ``fix``, write the recomputed values. The totals table is locked meanwhile so
    that the consumer's updates wait rather than interleave."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("LOCK TABLE score_totals IN SHARE ROW EXCLUSIVE MODE"))
    expected = expected_totals(session)
    columns = (*_COUNTS, "entries")
    stored = {(t.period, t.user_id): t for t in session.scalars(sa.select(ScoreTotal))}
    differences: list[Difference] = []
    for key in sorted(set(expected) | set(stored), key=lambda k: (k[0], str(k[1]))):
        want = expected.get(key) or {c: 0 for c in columns}
        have = stored.get(key)
        for column in columns:
            value = getattr(have, column) if have is not None else 0
            if value != want[column]:
                differences.append(Difference(key[0], key[1], column, value, want[column]))
        if not fix:
            continue
        if have is None:
            session.add(ScoreTotal(period=key[0], user_id=key[1], **want))
        elif key not in expected:
            session.delete(have)
        else:
            for column in columns:
                setattr(have, column, want[column])
    return differences
