"""Scoring's use cases: one function per event it takes in, the ledger entry that each award
becomes (with its totals and its ``points.awarded`` in the same transaction), and the rule
changes an admin makes. Reads for boards, KPIs and the assessment live in ``boards.py``.

Published by scoring: ``points.awarded`` (``award``), ``leaderboard.published``
(``boards.publish_board``).
"""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scoring import domain
from scoring.metrics import POINTS_AWARDED
from scoring.models import (
    Assignment,
    Issue,
    Person,
    PointsEntry,
    Resolution,
    Rule,
    ScoreTotal,
    Village,
)
from scoring.settings import ScoringSettings
from shared.auth import Principal
from shared.clock import utcnow
from shared.db import Upsert, after_commit, among
from shared.errors import Conflict, Invalid, NotFound
from shared.events import Envelope, emit_many

log = logging.getLogger("scoring.services")

BOARD_ROLES = frozenset({"grid_worker", "grid_leader"})


# Hot inserts as cached ON CONFLICT statements (shared.db.Upsert says why).
_ASSIGNMENT = Upsert(
    Assignment.__table__,
    conflict=("event_id",),
    columns=("event_id", "issue_id", "assignee_id", "assigned_at", "responded", "period_month"),
    returning=("event_id",),
)
_RESOLUTION = Upsert(
    Resolution.__table__,
    conflict=("issue_id", "resolution_no"),
    columns=(
        "issue_id",
        "resolution_no",
        "resolver_id",
        "difficulty",
        "due_at",
        "resolved_at",
        "on_time",
        "points",
        "reopened",
        "clawed_back",
    ),
)


# --- people and villages -------------------------------------------------------------------------


def upsert_person(session: Session, data: dict[str, Any]) -> Person | None:
    """Keep name, roles, village and status from ``account.upserted``; an older or equal
    ``revision`` than the one held is ignored (retries reorder events)."""
    person = session.get(Person, data["user_id"], with_for_update=True)
    revision = data.get("revision")
    if person is None:
        person = Person(id=data["user_id"])
        session.add(person)
    elif person.revision is not None and revision is not None and revision <= person.revision:
        return None
    person.name = (data.get("name") or "")[:64]
    person.roles = sorted(set(data.get("roles") or []))
    person.village_id = data.get("village_id")
    person.active = bool(data.get("active", True))
    person.on_board = person.active and bool(BOARD_ROLES & set(person.roles))
    person.tokens_valid_after = data.get("tokens_valid_after")
    person.account_known = True
    if revision is not None:
        person.revision = revision
    return person


def upsert_village(session: Session, data: dict[str, Any]) -> Village | None:
    """Keep a village's name and area leader from ``village.upserted`` (newer revisions only)."""
    village = session.get(Village, data["village_id"], with_for_update=True)
    revision = data.get("revision") or 0
    if village is None:
        village = Village(id=data["village_id"], revision=-1)
        session.add(village)
    elif revision <= village.revision:
        return None
    village.name = (data.get("name") or "")[:64]
    village.area_leader_id = data.get("area_leader_id")
    village.revision = revision
    return village


def _known_person(session: Session, user_id: uuid.UUID, name: str | None = None) -> Person:
    """The person, or a placeholder until their ``account.upserted`` arrives (not on boards)."""
    person = session.get(Person, user_id)
    if person is None:
        person = Person(id=user_id, name=(name or "")[:64], roles=[], on_board=False)
        session.add(person)
        session.flush()
    elif name and not person.name:
        person.name = name[:64]
    return person


def _known_people(session: Session, user_ids: set[uuid.UUID]) -> None:
    """``_known_person`` for many at once: one look-up, one insert of the placeholders."""
    known = set(session.scalars(sa.select(Person.id).where(among(session, Person.id, user_ids))))
    missing = sorted(user_ids - known)
    if missing:
        session.add_all(Person(id=i, name="", roles=[], on_board=False) for i in missing)
        session.flush()


# --- the read model of issues --------------------------------------------------------------------


class ResolutionNotYetKnown(LookupError):
    """An ``issue.reopened`` came before the ``issue.resolved`` it undoes (retried later)."""


def _issue(session: Session, issue_id: uuid.UUID) -> Issue:
    issue = session.get(Issue, issue_id, with_for_update=True)
    if issue is None:
        issue = Issue(id=issue_id, version=0, reopen_count=0)
        session.add(issue)
        session.flush()
    return issue


def _issues(session: Session, issue_ids: list[uuid.UUID]) -> dict[uuid.UUID, Issue]:
    """``_issue`` for many at once: one locking look-up (in id order, so two workers wait for
    each other instead of deadlocking), one insert of those not known yet."""
    wanted = sorted(set(issue_ids))
    issues = {
        issue.id: issue
        for issue in session.scalars(
            sa.select(Issue)
            .where(among(session, Issue.id, wanted))
            .order_by(Issue.id)
            .with_for_update()
        )
    }
    missing = [Issue(id=i, version=0, reopen_count=0) for i in wanted if i not in issues]
    if missing:
        session.add_all(missing)
        session.flush()
        issues.update((issue.id, issue) for issue in missing)
    return issues


def apply_snapshot(issue: Issue, data: dict[str, Any]) -> bool:
    """Take the event's snapshot if its ``issue_version`` is newer than the one held."""
    version = data.get("issue_version")
    snapshot = data.get("snapshot") or {}
    if version is None or version <= (issue.version or 0):
        return False
    issue.version = version
    if snapshot:
        issue.state = snapshot.get("state", issue.state)
        issue.level = snapshot.get("level", issue.level)
        issue.assignee_id = snapshot.get("assignee_id", issue.assignee_id)
        issue.due_at = snapshot.get("due_at", issue.due_at)
        issue.resolution_no = snapshot.get("resolution_no", issue.resolution_no)
        issue.resolved_at = snapshot.get("resolved_at", issue.resolved_at)
        issue.rating = snapshot.get("rating", issue.rating)
        issue.closed_at = snapshot.get("closed_at", issue.closed_at)
    return True


def record_ticket(session: Session, issue_id: uuid.UUID, ticket_no: str | None) -> None:
    """intake's ``issue.reported`` gives the ticket number shown beside each entry."""
    if ticket_no:
        _issue(session, issue_id).ticket_no = ticket_no[:32]


# --- rules ---------------------------------------------------------------------------------------


_RULES = "scoring.rule_versions"


def rule_versions(session: Session) -> list[domain.RuleVersion]:
    """Every stored rule version, read once per session: the consumer applies a batch of events
    in one, and ``change_rule`` forgets it."""
    if _RULES not in session.info:
        rows = session.scalars(sa.select(Rule)).all()
        session.info[_RULES] = [
            domain.RuleVersion(r.code, r.version, r.points, r.effective_from) for r in rows
        ]
    return list(session.info[_RULES])


@dataclass(frozen=True)
class RuleView:
    code: str
    label: str
    meaning: str
    points: int
    version: int
    effective_from: date
    versions: list[Rule]


def list_rules(session: Session, now: datetime) -> list[RuleView]:
    """Every rule with the version in force today (Asia/Shanghai) and all stored versions."""
    versions = rule_versions(session)
    stored = session.scalars(sa.select(Rule).order_by(Rule.code, Rule.version)).all()
    today = domain.local_day(now)
    views = []
    for code, (_, label, meaning) in domain.DEFAULT_RULES.items():
        current = domain.rule_in_force(versions, code, today)
        views.append(
            RuleView(
                code=code,
                label=label,
                meaning=meaning,
                points=current.points,
                version=current.version,
                effective_from=current.effective_from,
                versions=[r for r in stored if r.code == code],
            )
        )
    return views


def change_rule(
    session: Session,
    actor: Principal,
    code: str,
    *,
    points: int,
    effective_from: date | None,
    note: str | None,
    now: datetime,
) -> Rule:
    """A new version of a rule from a future day (default tomorrow, Asia/Shanghai), so that no
    day already scored changes; who and when are recorded."""
    if code not in domain.DEFAULT_RULES:
        raise NotFound("没有这条积分规则。", code="rule_not_found")
    first_day = domain.tomorrow(now)
    day = effective_from or first_day
    if day < first_day:
        raise Invalid(
            "新规则最早从明天起生效，不能改写已经计分的日子。",
            code="effective_from_past",
            details={"effective_from": [f"不早于 {first_day.isoformat()}"]},
        )
    session.execute(sa.select(Rule.id).where(Rule.code == code).with_for_update())
    clash = session.scalar(sa.select(Rule).where(Rule.code == code, Rule.effective_from == day))
    if clash is not None:
        raise Conflict("该规则在这一天已有新版本。", code="rule_version_exists")
    latest = session.scalar(sa.select(sa.func.max(Rule.version)).where(Rule.code == code)) or 0
    rule = Rule(
        code=code,
        version=latest + 1,
        points=points,
        effective_from=day,
        note=note,
        changed_by=actor.id,
        changed_at=now,
    )
    session.add(rule)
    session.flush()
    session.info.pop(_RULES, None)
    return rule


# --- the ledger ----------------------------------------------------------------------------------


def award(
    session: Session,
    event: Envelope,
    *,
    user_id: uuid.UUID,
    result: domain.Award,
    issue: Issue | None,
    occurred_at: datetime,
    resolution_no: int | None = None,
) -> PointsEntry | None:
    """Append one ledger entry for (event, rule), move the user's four totals and announce it,
    all in the caller's transaction. The same event and rule a second time adds nothing."""
    entry_id = _award(
        session,
        event,
        user_id=user_id,
        result=result,
        issue=issue,
        occurred_at=occurred_at,
        resolution_no=resolution_no,
    )
    return None if entry_id is None else session.get(PointsEntry, entry_id)


def _award(
    session: Session,
    event: Envelope,
    *,
    user_id: uuid.UUID,
    result: domain.Award,
    issue: Issue | None,
    occurred_at: datetime,
    resolution_no: int | None = None,
) -> uuid.UUID | None:
    """``award`` without reading the entry back: its id, or None when it was there already."""
    credit = Credit(event, user_id, result, issue, occurred_at, resolution_no)
    return _award_many(session, [credit])[0]


@dataclass(frozen=True)
class Credit:
    """One ledger entry to be made: what ``event`` earns ``user_id`` under one rule."""

    event: Envelope
    user_id: uuid.UUID
    result: domain.Award
    issue: Issue | None
    occurred_at: datetime
    resolution_no: int | None = None


def _award_many(session: Session, credits: list[Credit]) -> list[uuid.UUID | None]:
    """Append the ledger entries, move the users' totals and announce each new entry: one
    statement per table however many entries. Per credit, the entry's id, or None when the
    (event, rule) entry was there already."""
    if not credits:
        return []
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            "user_id": credit.user_id,
            "points": credit.result.points,
            "rule_code": credit.result.code,
            "rule_version": credit.result.rule.version,
            "issue_id": credit.issue.id if credit.issue else None,
            "ticket_no": credit.issue.ticket_no if credit.issue else None,
            "resolution_no": credit.resolution_no,
            "source_event_id": credit.event.id,
            "occurred_at": credit.occurred_at,
            "period_month": domain.month_of(credit.occurred_at),
            "created_at": now,
        }
        for credit in credits
    ]
    inserted = set(POINTS_ENTRY.execute(session, rows).scalars())
    made = [
        (credit, row) for credit, row in zip(credits, rows, strict=True) if row["id"] in inserted
    ]
    totals: dict[tuple[str, uuid.UUID], dict[str, int]] = {}
    for credit, row in made:
        increments = domain.total_increments(credit.result.code, credit.result.points)
        for period in domain.periods_of_month(row["period_month"]):
            total = totals.setdefault((period, credit.user_id), {})
            for column, amount in increments.items():
                total[column] = total.get(column, 0) + amount
    _add_totals(session, totals)
    emit_many(
        session,
        "points.awarded",
        [
            {
                "entry_id": row["id"],
                "user_id": credit.user_id,
                "points": credit.result.points,
                "reason": domain.RULE_LABELS[credit.result.code],
                "rule": credit.result.code,
                "rule_version": credit.result.rule.version,
                "issue_id": row["issue_id"],
                "ticket_no": row["ticket_no"],
                "period": f"month:{row['period_month']}",
                "occurred_at": credit.occurred_at,
            }
            for credit, row in made
        ],
    )
    codes = [credit.result.code for credit, _ in made]
    if codes:
        after_commit(session, lambda: _count_awards(codes))
    return [row["id"] if row["id"] in inserted else None for row in rows]


def _count_awards(codes: list[str]) -> None:
    for code in codes:
        POINTS_AWARDED.labels("scoring", code).inc()


def _add_totals(session: Session, totals: dict[tuple[str, uuid.UUID], dict[str, int]]) -> None:
    """Add to ``score_totals`` rows by (period, user): one upsert, in key order (two workers
    adding to the same rows wait for each other instead of deadlocking)."""
    if not totals:
        return
    zeros = {c: 0 for c in _TOTAL_COLUMNS}
    columns = tuple(sorted({column for total in totals.values() for column in total}))
    _totals_upsert(columns).execute(
        session,
        [
            {"period": period, "user_id": user_id, **zeros, **totals[(period, user_id)]}
            for period, user_id in sorted(totals, key=lambda key: (key[0], str(key[1])))
        ],
    )


def add_to_totals(
    session: Session, user_id: uuid.UUID, month: str, increments: dict[str, int]
) -> None:
    """Add to the user's month, quarter, year and all-time totals (one upsert of four rows;
    concurrent workers add, never overwrite)."""
    _add_totals(
        session, {(period, user_id): increments for period in domain.periods_of_month(month)}
    )


POINTS_ENTRY = Upsert(
    PointsEntry.__table__,
    conflict=("source_event_id", "rule_code"),
    columns=(
        "id",
        "user_id",
        "points",
        "rule_code",
        "rule_version",
        "issue_id",
        "ticket_no",
        "resolution_no",
        "source_event_id",
        "occurred_at",
        "period_month",
        "created_at",
    ),
    returning=("id",),
)
_TOTAL_COLUMNS = (*domain.TOTAL_COUNTS, "points", "entries")


@functools.cache
def _totals_upsert(increments: tuple[str, ...]) -> Upsert:
    # A new row starts at the increments, so EXCLUDED holds exactly what to add to a row.
    return Upsert(
        ScoreTotal.__table__,
        conflict=("period", "user_id"),
        columns=("period", "user_id", *_TOTAL_COLUMNS),
        add=increments,
    )


# --- the events ----------------------------------------------------------------------------------


def receive_assignment(
    session: Session, event: Envelope, data: dict[str, Any]
) -> Assignment | None:
    """Note the assignee, their grid and grid leader, the deadline and difficulty; count the
    assignment for the response rate (in the month it was made)."""
    issue = _issue(session, data["issue_id"])
    assigned_at = event.occurred_at
    newer = apply_snapshot(issue, data)
    if newer or issue.assigned_at is None:
        issue.assignee_id = data.get("assignee_id")
        issue.grid_id = data.get("grid_id") or issue.grid_id
        issue.village_id = data.get("village_id") or issue.village_id
        issue.grid_leader_id = data.get("grid_leader_id") or issue.grid_leader_id
        issue.difficulty = data.get("difficulty") or issue.difficulty
        issue.due_at = data.get("due_at") or issue.due_at
        issue.assigned_at = assigned_at
        issue.started_at = None
    assignee_id = data.get("assignee_id")
    if assignee_id is None:  # handed to a department: nobody to score
        return None
    person = _known_person(session, assignee_id, data.get("assignee_name"))
    if data.get("grid_id"):
        # Scoring's grids: the grid of the work item last assigned to a person (DESIGN: the
        # grid of the assignee). Simple, and right for the usual one-grid worker.
        person.grid_id = data["grid_id"]
        person.grid_leader_id = data.get("grid_leader_id")
    month = domain.month_of(assigned_at)
    inserted = _ASSIGNMENT.execute(
        session,
        [
            {
                "event_id": event.id,
                "issue_id": issue.id,
                "assignee_id": assignee_id,
                "assigned_at": assigned_at,
                "responded": False,
                "period_month": month,
            }
        ],
    ).scalar_one_or_none()
    if inserted is None:
        return None
    add_to_totals(session, assignee_id, month, {"assigned": 1})
    return session.get(Assignment, event.id)


def receive_start(
    session: Session, settings: ScoringSettings, event: Envelope, data: dict[str, Any]
) -> None:
    """The assignee started: the latest open assignment of theirs is answered, and counts as a
    response when within ``RESPONSE_LIMIT_HOURS``."""
    issue = _issue(session, data["issue_id"])
    if apply_snapshot(issue, data) or issue.started_at is None:
        issue.started_at = event.occurred_at
    assignee_id = data.get("assignee_id") or issue.assignee_id
    if assignee_id is None:
        return
    assignment = session.scalars(
        sa.select(Assignment)
        .where(
            Assignment.issue_id == issue.id,
            Assignment.assignee_id == assignee_id,
            Assignment.started_at.is_(None),
            Assignment.assigned_at <= event.occurred_at,
        )
        .order_by(Assignment.assigned_at.desc())
        .limit(1)
        .with_for_update()
    ).one_or_none()
    if assignment is None:
        return
    assignment.started_at = event.occurred_at
    if domain.responded(assignment.assigned_at, event.occurred_at, settings.response_limit_hours):
        assignment.responded = True
        add_to_totals(session, assignee_id, assignment.period_month, {"responded": 1})


def receive_resolution(session: Session, event: Envelope, data: dict[str, Any]) -> None:
    """Credit the resolver (not necessarily the assignee): difficulty points when on time by
    the rule in force on the day it was resolved, the late rule's otherwise. A resolution after
    a reopen is scored the same way against its new deadline."""
    receive_resolutions(session, [(event, data)])


def receive_resolutions(
    session: Session, resolutions: list[tuple[Envelope, dict[str, Any]]]
) -> None:
    """``receive_resolution`` for a run of events, in their order: one statement per table for
    the whole run (the consumer's ``batched`` handler)."""
    issues = _issues(session, [data["issue_id"] for _, data in resolutions])
    versions = rule_versions(session)
    credits, rows = [], []
    for event, data in resolutions:
        issue = issues[data["issue_id"]]
        apply_snapshot(issue, data)
        resolver_id = data.get("resolver_id") or data.get("assignee_id")
        if resolver_id is None:
            log.warning("issue.resolved %s names no resolver; nothing awarded", event.id)
            continue
        resolved_at = data.get("resolved_at") or event.occurred_at
        due_at = data.get("due_at") or issue.due_at
        on_time = (
            data["on_time"]
            if data.get("on_time") is not None
            else domain.on_time(resolved_at, due_at)
        )
        difficulty = data.get("difficulty") or issue.difficulty
        resolution_no = (
            data.get("resolution_no")
            or (data.get("snapshot") or {}).get("resolution_no")
            or (issue.resolution_no or 0) + 1
        )
        result = domain.resolution_award(
            versions, on_time=on_time, difficulty=difficulty, day=domain.local_day(resolved_at)
        )
        credits.append(Credit(event, resolver_id, result, issue, resolved_at, resolution_no))
        rows.append(
            {
                "issue_id": issue.id,
                "resolution_no": resolution_no,
                "resolver_id": resolver_id,
                "difficulty": difficulty,
                "due_at": due_at,
                "resolved_at": resolved_at,
                "on_time": on_time,
                "points": result.points if on_time else 0,
                "reopened": False,
                "clawed_back": 0,
            }
        )
    if not credits:
        return
    _known_people(session, {credit.user_id for credit in credits})
    entries = _award_many(session, credits)
    _RESOLUTION.execute(
        session, [row for row, entry in zip(rows, entries, strict=True) if entry is not None]
    )


def _resolution(
    session: Session, issue: Issue, resolution_no: int | None, *, open_only: bool = False
) -> Resolution | None:
    """The resolution an event is about: the one it names, else the latest."""
    stmt = sa.select(Resolution).where(Resolution.issue_id == issue.id)
    if resolution_no is not None:
        stmt = stmt.where(Resolution.resolution_no == resolution_no)
    if open_only:
        stmt = stmt.where(Resolution.reopened.is_(False))
    stmt = stmt.order_by(Resolution.resolution_no.desc()).limit(1).with_for_update()
    return session.scalars(stmt).one_or_none()


def receive_rating(session: Session, event: Envelope, data: dict[str, Any]) -> None:
    """The resident's rating scores the resolver of the rated resolution."""
    issue = _issue(session, data["issue_id"])
    issue.rating = data["rating"]
    resolution = _resolution(session, issue, data.get("resolution_no"))
    if resolution is None:
        log.warning("rating of %s before any resolution known; nothing awarded", issue.id)
        return
    rated_at = data.get("rated_at") or event.occurred_at
    result = domain.rating_award(
        rule_versions(session), rating=data["rating"], day=domain.local_day(rated_at)
    )
    if result is None:
        log.warning("unknown rating %r on %s ignored", data["rating"], issue.id)
        return
    resolution.rating = data["rating"]
    award(
        session,
        event,
        user_id=resolution.resolver_id,
        result=result,
        issue=issue,
        occurred_at=rated_at,
        resolution_no=resolution.resolution_no,
    )


def receive_reopen(session: Session, event: Envelope, data: dict[str, Any]) -> None:
    """A reopened resolution did not hold: its on-time points are clawed back (a negative entry
    in the month of the reopen; the month it was earned in is not rewritten)."""
    issue = _issue(session, data["issue_id"])
    snapshot_no = (data.get("snapshot") or {}).get("resolution_no")
    if (
        snapshot_no is not None
        and issue.assigned_at is not None
        and _resolution(session, issue, snapshot_no) is None
    ):
        # Retries reorder events: the resolution this reopen undoes has not arrived yet. Fail
        # so the consumer tries again after its retry delay, when it has.
        raise ResolutionNotYetKnown(f"resolution {snapshot_no} of {issue.id} not received yet")
    apply_snapshot(issue, data)
    issue.reopen_count = (issue.reopen_count or 0) + 1
    resolution = _resolution(session, issue, snapshot_no, open_only=True)
    if resolution is None:
        log.warning("reopen of %s with no open resolution known; nothing clawed back", issue.id)
        return
    result = domain.clawback_award(
        rule_versions(session),
        earned=resolution.points,
        day=domain.local_day(event.occurred_at),
    )
    entry = award(
        session,
        event,
        user_id=resolution.resolver_id,
        result=result,
        issue=issue,
        occurred_at=event.occurred_at,
        resolution_no=resolution.resolution_no,
    )
    if entry is not None:
        resolution.reopened = True
        resolution.clawed_back = -result.points


def receive_callback(session: Session, event: Envelope, data: dict[str, Any]) -> None:
    """The supervision group's callback (回头看) scores the resolver: passed or failed."""
    issue = _issue(session, data["issue_id"])
    snapshot_no = (data.get("snapshot") or {}).get("resolution_no")
    apply_snapshot(issue, data)
    issue.callback_passed = bool(data["passed"])
    resolution = _resolution(session, issue, snapshot_no)
    if resolution is None:
        log.warning("callback of %s before any resolution known; nothing awarded", issue.id)
        return
    result = domain.callback_award(
        rule_versions(session),
        passed=bool(data["passed"]),
        day=domain.local_day(event.occurred_at),
    )
    award(
        session,
        event,
        user_id=resolution.resolver_id,
        result=result,
        issue=issue,
        occurred_at=event.occurred_at,
        resolution_no=resolution.resolution_no,
    )


def receive_close(session: Session, event: Envelope, data: dict[str, Any]) -> None:
    """Closed: kept in the read model (points were settled by the resolution and rating)."""
    issue = _issue(session, data["issue_id"])
    if apply_snapshot(issue, data) or issue.closed_at is None:
        issue.closed_at = data.get("closed_at") or event.occurred_at
        issue.rating = data.get("rating") or issue.rating


def receive_overdue(session: Session, event: Envelope, data: dict[str, Any]) -> None:
    """Overdue: kept in the read model; a late resolution earns by the late rule."""
    issue = _issue(session, data["issue_id"])
    apply_snapshot(issue, data)
    issue.overdue_at = issue.overdue_at or event.occurred_at
