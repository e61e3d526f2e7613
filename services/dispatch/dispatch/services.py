"""Dispatch's use cases: one function per thing a person (or the scheduler) does to a work item.

Each one loads and locks what it changes (``SELECT ... FOR UPDATE``), checks who is asking, lets
``domain`` apply the rule, stores the step in the history and writes the event to the outbox, all
in the caller's transaction.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, lazyload, object_session
from sqlalchemy.orm.attributes import flag_modified

from dispatch import domain, scopes
from dispatch.metrics import RATINGS_NOT_APPLIED
from dispatch.models import (
    Callback,
    Department,
    DepartmentMember,
    Grid,
    GridMember,
    Issue,
    IssueHistory,
    LedgerCounter,
    LedgerEntry,
    LedgerProgress,
    Staff,
    Village,
)
from dispatch.settings import DispatchSettings
from shared.auth import Principal
from shared.clock import SHANGHAI, utcnow
from shared.db import among, among_bound, names_by_id
from shared.errors import Conflict, Forbidden, Invalid, NotFound
from shared.events import emit
from shared.pagination import KeysetQuery, keyset_page

log = logging.getLogger("dispatch.services")

WORKER_ROLES = frozenset({"grid_worker", "grid_leader"})


# --- loading and recording -------------------------------------------------------------------


def get_issue(session: Session, issue_id: uuid.UUID, *, lock: bool = False) -> Issue:
    """The work item, row-locked when it is about to change (two admins: one waits, then 409)."""
    stmt = sa.select(Issue).where(Issue.id == issue_id)
    if lock:
        stmt = stmt.with_for_update()
    issue = session.scalars(stmt).one_or_none()
    if issue is None:
        raise NotFound("未找到该事项。", code="issue_not_found")
    return issue


def record(
    session: Session,
    issue: Issue,
    step: domain.Step,
    actor: Principal | None,
    now: datetime,
) -> IssueHistory:
    """Store one step of the item's history (who, when, from → to, note)."""
    entry = IssueHistory(
        issue_id=issue.id,
        action=step.action,
        from_state=step.from_state,
        to_state=step.to_state,
        from_level=step.from_level,
        to_level=step.to_level,
        actor_id=actor.id if actor else None,
        actor_name=(actor.name or None) if actor else "系统",
        note=step.note,
        details=_jsonable(step.details),
        occurred_at=now,
    )
    session.add(entry)
    return entry


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _area_leader_of(session: Session, village_id: uuid.UUID) -> uuid.UUID | None:
    village = session.get(Village, village_id)
    return village.area_leader_id if village else None


def _check_expected(issue: Issue, version: int | None) -> None:
    domain.check_version(issue, version)


def _in_holding_department(issue: Issue, actor: Principal) -> bool:
    """The actor is staff (``department_staff``) of the department holding the item (a township
    department it was handed to, or the county department it was referred to)."""
    if issue.department_id is None or not actor.has("department_staff"):
        return False
    session = object_session(issue)
    return (
        session is not None
        and session.get(DepartmentMember, (issue.department_id, actor.id)) is not None
    )


def _may_act(issue: Issue, actor: Principal) -> bool:
    return (
        actor.has("admin")
        or actor.id in (issue.assignee_id, issue.handler_id)
        or _in_holding_department(issue, actor)
    )


def _capacity(issue: Issue, actor: Principal) -> str:
    """``assignee``, ``handler`` (the holder at township/area-leader/county level),
    ``department`` (staff of the holding department) or ``admin``."""
    if actor.id == issue.assignee_id:
        return "assignee"
    if actor.id == issue.handler_id:
        return "handler"
    if _in_holding_department(issue, actor):
        return "department"
    return "admin"


def _require_holder(issue: Issue, actor: Principal) -> None:
    if not _may_act(issue, actor):
        raise Forbidden("只有该事项的办理人或管理员可以操作。", code="not_your_task")


# --- events in, from intake -------------------------------------------------------------------


def receive_report(session: Session, data: dict[str, Any]) -> Issue | None:
    """A new report lands in the admin's queue; a second delivery of the same report is a no-op."""
    added = receive_reports(session, [data])
    return session.get(Issue, added[0]) if added else None


def receive_reports(session: Session, reports: list[dict[str, Any]]) -> list[uuid.UUID]:
    """New reports land in the admin's queue, each with its first history step; reports known
    already (a redelivery, or the same one twice in the list) are skipped. Returns the ids added.

    Set-based, for the consumer's runs of ``issue.reported``: one look-up of the ids known, one
    of the staff who submitted for residents, and one insert per table (statistics included,
    ``dispatch.aggregates``), however many reports."""
    fresh: dict[uuid.UUID, dict[str, Any]] = {}
    for data in reports:
        fresh.setdefault(data["issue_id"], data)
    with session.no_autoflush:
        known = set(session.scalars(sa.select(Issue.id).where(among(session, Issue.id, fresh))))
        for issue_id in known:
            del fresh[issue_id]
        if not fresh:
            return []
        proxies = {d["submitted_by"] for d in fresh.values() if d.get("submitted_by")}
        names = {
            row.id: row.name
            for row in (
                session.execute(
                    sa.select(Staff.id, Staff.name).where(among(session, Staff.id, proxies))
                )
                if proxies
                else ()
            )
        }
    issues, steps = [], []
    for issue_id, data in fresh.items():
        proxy = data.get("submitted_by")
        issues.append(
            {
                "id": issue_id,
                "ticket_no": data.get("ticket_no"),
                "reporter_id": data["reporter_id"],
                "category": data["category"],
                "description": data.get("description") or "",
                "village_id": data["village_id"],
                "address": data.get("address"),
                "lat": data.get("lat"),
                "lon": data.get("lon"),
                "photo_ids": [str(p) for p in data.get("photo_ids") or []],
                "reported_at": data["reported_at"],
                "contact_name": data.get("contact_name"),
                "contact_phone": data.get("contact_phone"),
                "submitted_by": proxy,
                "state": "reported",
                "level": "grid",
            }
        )
        steps.append(
            {
                "issue_id": issue_id,
                "action": "report",
                "from_state": None,
                "to_state": "reported",
                "from_level": None,
                "to_level": "grid",
                "actor_id": proxy or data["reporter_id"],
                # 代办: the staff member who submitted it for the resident.
                "actor_name": f"{names.get(proxy) or '工作人员'}（代办）" if proxy else "群众",
                "note": None,
                "details": {"submitted_by": str(proxy)} if proxy else {},
                "occurred_at": data["reported_at"],
            }
        )
    session.execute(sa.insert(Issue), issues)
    session.execute(sa.insert(IssueHistory), steps)
    return list(fresh)


# --- the resident follows up (intake's issue.urged / details_added / withdrawn) ----------------


def _resident(data: dict[str, Any], issue: Issue) -> Principal:
    return Principal(id=data.get("reporter_id") or issue.reporter_id, name="群众")


def receive_urge(session: Session, data: dict[str, Any], occurred_at: datetime) -> Issue:
    """催办: counted on an open item for its holder to see (notify will tell them); on an item
    no longer open it is only recorded."""
    issue = get_issue(session, data["issue_id"], lock=True)
    urged_at = data.get("urged_at") or occurred_at
    try:
        step = domain.urge(issue, now=urged_at, text=data.get("text"))
    except Conflict:
        step = domain.Step(
            "urge",
            issue.state,
            issue.state,
            issue.level,
            issue.level,
            note=(data.get("text") or "").strip() or None,
            details={"applied": False},
        )
    record(session, issue, step, _resident(data, issue), urged_at)
    return issue


def receive_details(session: Session, data: dict[str, Any], occurred_at: datetime) -> Issue:
    """补充说明: the resident's words and photos join the item's history."""
    issue = get_issue(session, data["issue_id"], lock=True)
    step = domain.Step(
        "details",
        issue.state,
        issue.state,
        issue.level,
        issue.level,
        note=(data.get("text") or "").strip() or None,
        details={"media_ids": [str(p) for p in data.get("photo_ids") or []]},
    )
    record(session, issue, step, _resident(data, issue), data.get("added_at") or occurred_at)
    return issue


def receive_withdrawal(session: Session, data: dict[str, Any], occurred_at: datetime) -> Issue:
    """撤回: a report nobody holds yet leaves the queue. If it was assigned meanwhile (a race
    with the admin), dispatch keeps it, records the request and tells intake so."""
    issue = get_issue(session, data["issue_id"], lock=True)
    actor = _resident(data, issue)
    at = data.get("withdrawn_at") or occurred_at
    try:
        step = domain.withdraw(issue, reason=data.get("text"))
    except Conflict:
        step = domain.Step(
            "withdraw_declined",
            issue.state,
            issue.state,
            issue.level,
            issue.level,
            note=(data.get("text") or "").strip() or None,
        )
        record(session, issue, step, actor, at)
        if issue.state in domain.WORKING_STATES:
            reason = "事项已交办，将继续办理"
        else:
            reason = f"事项当前为「{domain.STATES.get(issue.state, issue.state)}」"
        emit_issue(
            session,
            issue,
            "issue.withdrawal_declined",
            {"issue_id": issue.id, "reporter_id": issue.reporter_id, "reason": reason},
        )
        return issue
    record(session, issue, step, actor, at)
    return issue


def upsert_staff(session: Session, data: dict[str, Any]) -> Staff:
    """Keep the names and roles of an account (from ``account.upserted``).

    A snapshot whose ``revision`` is not newer than the one held is stale (retries reorder
    events): it is ignored, so that an old "active" never undoes a later disabling.
    """
    staff = session.get(Staff, data["user_id"], with_for_update=True)
    revision = data.get("revision")
    if staff is None:
        staff = Staff(id=data["user_id"])
        session.add(staff)
    elif revision is not None and staff.revision is not None and revision <= staff.revision:
        return staff
    if revision is not None:
        staff.revision = revision
    staff.name = data.get("name") or ""
    staff.phone = data.get("phone")
    staff.roles = sorted(set(data.get("roles") or []))
    staff.village_id = data.get("village_id")
    staff.active = data.get("active", True)
    staff.tokens_valid_after = data.get("tokens_valid_after")
    return staff


def apply_rating(
    session: Session,
    settings: DispatchSettings,
    *,
    issue_id: uuid.UUID,
    rating: str,
    comment: str | None,
    reporter_id: uuid.UUID | None,
    resolution_no: int | None = None,
    now: datetime | None = None,
) -> Issue:
    """The resident's rating of one resolution: closes the item, or reopens it with the area
    leader following (also after an auto-close). A rating of another resolution, or one the
    item's state does not take, is recorded in the history and counted, and changes nothing.

    ``resolution_no`` None (an intake from before ratings named their resolution): the rating
    applies to a resolved item as it always did, and a Conflict says when it cannot.
    """
    now = now or utcnow()
    issue = get_issue(session, issue_id, lock=True)
    actor = Principal(id=reporter_id or issue.reporter_id, name="群众")
    if resolution_no is not None and resolution_no != issue.resolution_count:
        reason = (
            "stale_resolution" if resolution_no < issue.resolution_count else "unknown_resolution"
        )
        return _rating_not_applied(session, issue, actor, rating, resolution_no, reason, now)
    reopen_due_at = now + timedelta(hours=settings.reopen_hours(issue.level))
    area_leader_id = _area_leader_of(session, issue.village_id)
    try:
        if resolution_no is not None and domain.was_auto_closed_unrated(issue):
            step = domain.rate_after_auto_close(
                issue,
                rating=rating,
                comment=comment,
                reopen_due_at=reopen_due_at,
                area_leader_id=area_leader_id,
            )
        else:
            step = domain.rate(
                issue,
                rating=rating,
                comment=comment,
                now=now,
                reopen_due_at=reopen_due_at,
                area_leader_id=area_leader_id,
            )
    except Conflict:
        if resolution_no is None:
            raise
        return _rating_not_applied(session, issue, actor, rating, resolution_no, "wrong_state", now)
    step.details["resolution_no"] = issue.resolution_count
    record(session, issue, step, actor, now)
    if step.to_state == "reopened":
        _emit_reopened(session, issue, "unsatisfied")
    elif step.action == "rate":
        _emit_closed(session, issue)
    # rate_late: the rating is kept on the item that is already closed; nothing to announce.
    return issue


RATING_NOT_APPLIED_REASONS: dict[str, str] = {
    "stale_resolution": "评价针对的是此前的办理结果，未采纳",
    "unknown_resolution": "评价针对的办理结果尚不存在，未采纳",
    "wrong_state": "事项当前状态不接受该评价，未采纳",
}


def _rating_not_applied(
    session: Session,
    issue: Issue,
    actor: Principal,
    rating: str,
    resolution_no: int,
    reason: str,
    now: datetime,
) -> Issue:
    """Keep a rating the item cannot take in its history (no state change, no event)."""
    step = domain.Step(
        "rating_not_applied",
        issue.state,
        issue.state,
        issue.level,
        issue.level,
        note=RATING_NOT_APPLIED_REASONS[reason],
        details={
            "reason": reason,
            "rating": rating,
            "resolution_no": resolution_no,
            "current_resolution_no": issue.resolution_count,
        },
    )
    record(session, issue, step, actor, now)
    RATINGS_NOT_APPLIED.labels("dispatch", reason).inc()
    log.warning(
        "rating of resolution %s of %s not applied (%s; current resolution %s, state %s)",
        resolution_no,
        issue.id,
        reason,
        issue.resolution_count,
        issue.state,
    )
    return issue


# --- the admin and the grid leader hand out work -----------------------------------------------


def _grid_of(session: Session, assignee_id: uuid.UUID, village_id: uuid.UUID) -> Grid | None:
    """The assignee's grid (led or joined), preferring one in the item's village (then one
    they lead, then the oldest). One SELECT; the grid's member list is left to load if asked
    for (an assignment reads only the grid's id and leader)."""
    joined = sa.select(GridMember.grid_id).where(GridMember.user_id == assignee_id)
    return session.scalars(
        sa.select(Grid)
        .options(lazyload(Grid.members))
        .where(sa.or_(Grid.leader_id == assignee_id, Grid.id.in_(joined)))
        .order_by(
            (Grid.village_id != village_id).asc(),
            (Grid.leader_id.is_distinct_from(assignee_id)).asc(),
            Grid.created_at,
            Grid.id,
        )
        .limit(1)
    ).first()


def _in_grid(grid: Grid | None, user_id: uuid.UUID) -> bool:
    return grid is not None and (
        grid.leader_id == user_id or any(m.user_id == user_id for m in grid.members)
    )


def _leaders_grid_for(
    session: Session, actor: Principal, issue: Issue, assignee_id: uuid.UUID
) -> Grid:
    """The grid a grid leader hands the item to: one they lead, in the item's village, with the
    assignee in it. An item already in a grid (a reassignment) must be in one they lead."""
    led = scopes.led_grids(session, actor)
    outside = issue.grid_id not in led if issue.grid_id is not None else issue.state != "reported"
    if outside:
        # In another grid, or held outside any grid (e.g. by a township department).
        raise Forbidden("网格长只能改派本人所管网格内的事项。", code="not_your_grid")
    candidates = sorted(led.values(), key=lambda g: (g.id != issue.grid_id, str(g.id)))
    for grid in candidates:
        if grid.village_id == issue.village_id and _in_grid(grid, assignee_id):
            return grid
    raise Forbidden("网格长只能把本网格村庄的事项交给本网格的人员。", code="not_your_grid")


def assign(
    session: Session,
    settings: DispatchSettings,
    actor: Principal,
    issue_id: uuid.UUID,
    *,
    assignee_id: uuid.UUID | None = None,
    department_id: uuid.UUID | None = None,
    difficulty: int,
    due_at: datetime | None = None,
    due_in_hours: float | None = None,
    reassign: bool = False,
    version: int | None = None,
    now: datetime | None = None,
) -> Issue:
    """交办: hand the item to an active grid worker or leader, or (admins only) to a township
    department (分管部门, ``department_id``), with a difficulty and a deadline."""
    now = now or utcnow()
    issue = get_issue(session, issue_id, lock=True)
    _check_expected(issue, version)
    if department_id is not None or assignee_id is None:
        return _assign_to_department(
            session,
            settings,
            actor,
            issue,
            department_id=department_id,
            assignee_id=assignee_id,
            difficulty=difficulty,
            due_at=due_at,
            due_in_hours=due_in_hours,
            reassign=reassign,
            now=now,
        )
    assignee = session.get(Staff, assignee_id)
    if assignee is None or not assignee.active or not WORKER_ROLES.intersection(assignee.roles):
        raise Invalid(
            "交办对象必须是在岗的网格员或网格长。",
            code="invalid_assignee",
            details={"assignee_id": ["交办对象必须是在岗的网格员或网格长。"]},
        )
    if actor.has("admin"):
        grid = _grid_of(session, assignee_id, issue.village_id)
    else:
        grid = _leaders_grid_for(session, actor, issue, assignee_id)
    deadline = _assignment_deadline(settings, issue, now, due_at, due_in_hours)
    step = domain.assign(
        issue,
        assignee_id=assignee_id,
        grid_id=grid.id if grid else None,
        grid_leader_id=grid.leader_id if grid else None,
        difficulty=difficulty,
        due_at=deadline,
        now=now,
        reassign=reassign,
    )
    issue.assigned_by = actor.id
    step.details["assignee_name"] = assignee.name
    record(session, issue, step, actor, now)
    _emit_assigned(session, issue, step, actor, assignee_name=assignee.name)
    return issue


def _emit_assigned(
    session: Session,
    issue: Issue,
    step: domain.Step,
    actor: Principal,
    *,
    assignee_name: str | None = None,
    department: Department | None = None,
) -> None:
    emit_issue(
        session,
        issue,
        "issue.assigned",
        {
            "issue_id": issue.id,
            "assignee_id": issue.assignee_id,
            "assignee_name": assignee_name,
            "grid_id": issue.grid_id,
            "village_id": issue.village_id,
            "grid_leader_id": issue.grid_leader_id,
            "difficulty": issue.difficulty,
            "due_at": issue.due_at,
            "assigned_by": actor.id,
            "reassigned": step.action == "reassign",
            "department_id": department.id if department else None,
            "department_name": department.name if department else None,
        },
    )


def _assignment_deadline(
    settings: DispatchSettings,
    issue: Issue,
    now: datetime,
    due_at: datetime | None,
    due_in_hours: float | None,
) -> datetime:
    """The deadline given, or hours given, or the category's default time limit."""
    return domain.due_at_for(
        now=now,
        due_at=due_at,
        due_in_hours=due_in_hours,
        default_hours=settings.due_hours(issue.category),
    )


def _township_department(session: Session, department_id: uuid.UUID | None) -> Department:
    department = session.get(Department, department_id) if department_id else None
    if department is None or not department.active or department.kind != "township":
        raise Invalid(
            "所选乡镇分管部门不存在或已停用。",
            code="unknown_department",
            details={"department_id": ["所选乡镇分管部门不存在或已停用。"]},
        )
    return department


def _assign_to_department(
    session: Session,
    settings: DispatchSettings,
    actor: Principal,
    issue: Issue,
    *,
    department_id: uuid.UUID | None,
    assignee_id: uuid.UUID | None,
    difficulty: int,
    due_at: datetime | None,
    due_in_hours: float | None,
    reassign: bool,
    now: datetime,
) -> Issue:
    """交办给分管部门: the department's staff hold the item at the township level."""
    domain.require_one_holder(assignee_id, department_id)
    if not actor.has("admin"):
        raise Forbidden("只有管理员可以把事项交给乡镇分管部门。", code="admin_only")
    department = _township_department(session, department_id)
    deadline = _assignment_deadline(settings, issue, now, due_at, due_in_hours)
    step = domain.assign(
        issue,
        assignee_id=None,
        department_id=department.id,
        grid_id=issue.grid_id,
        grid_leader_id=issue.grid_leader_id,
        difficulty=difficulty,
        due_at=deadline,
        now=now,
        reassign=reassign,
    )
    issue.assigned_by = actor.id
    step.details["department_name"] = department.name
    record(session, issue, step, actor, now)
    _emit_assigned(session, issue, step, actor, department=department)
    return issue


def reject(
    session: Session,
    actor: Principal,
    issue_id: uuid.UUID,
    *,
    reason: str,
    duplicate_of: uuid.UUID | None = None,
    version: int | None = None,
    now: datetime | None = None,
) -> Issue:
    """不予受理: an invalid or duplicate report; the reason goes back to the resident. A duplicate
    names the original (``duplicate_of``: open or done, same village), whose progress its
    reporter then follows."""
    now = now or utcnow()
    issue = get_issue(session, issue_id, lock=True)
    _check_expected(issue, version)
    original: Issue | None = None
    if duplicate_of is not None:
        original = session.get(Issue, duplicate_of)
        if original is None:
            raise Invalid(
                "未找到重复的原事项。",
                code="duplicate_of_not_found",
                details={"duplicate_of": ["未找到重复的原事项。"]},
            )
        domain.check_duplicate_of(issue, original)
    step = domain.reject(issue, reason=reason)
    if original is not None:
        issue.duplicate_of_id = original.id
        step.details.update(duplicate_of=original.id, duplicate_of_ticket_no=original.ticket_no)
    record(session, issue, step, actor, now)
    emit_issue(
        session,
        issue,
        "issue.rejected",
        {
            "issue_id": issue.id,
            "reason": issue.reject_reason,
            "by": actor.id,
            "reporter_id": issue.reporter_id,
            "duplicate_of": original.id if original else None,
            "duplicate_of_ticket_no": original.ticket_no if original else None,
        },
    )
    return issue


def reopen_by_admin(
    session: Session,
    settings: DispatchSettings,
    actor: Principal,
    issue_id: uuid.UUID,
    *,
    reason: str,
    due_in_hours: float | None = None,
    now: datetime | None = None,
) -> Issue:
    """An admin sends a resolved or closed item back to its assignee, with a reason."""
    now = now or utcnow()
    issue = get_issue(session, issue_id, lock=True)
    if not (reason or "").strip():
        raise Invalid("请填写重新办理的理由。", code="reason_required")
    step = domain.reopen(
        issue,
        reason="admin",
        due_at=now + timedelta(hours=due_in_hours or settings.reopen_hours(issue.level)),
        area_leader_id=_area_leader_of(session, issue.village_id),
        note=reason.strip(),
    )
    record(session, issue, step, actor, now)
    _emit_reopened(session, issue, "admin")
    return issue


# --- the worker does the work ------------------------------------------------------------------


def start(
    session: Session,
    actor: Principal,
    issue_id: uuid.UUID,
    *,
    version: int | None = None,
    now: datetime | None = None,
) -> Issue:
    """开始办理, by the assignee (or an admin)."""
    now = now or utcnow()
    issue = get_issue(session, issue_id, lock=True)
    _require_holder(issue, actor)
    _check_expected(issue, version)
    step = domain.start(issue, now=now)
    record(session, issue, step, actor, now)
    emit_issue(
        session, issue, "issue.started", {"issue_id": issue.id, "assignee_id": issue.assignee_id}
    )
    return issue


def add_note(
    session: Session,
    actor: Principal,
    issue_id: uuid.UUID,
    *,
    text: str,
    media_ids: Sequence[uuid.UUID] = (),
    meeting_called: bool = False,
    now: datetime | None = None,
) -> IssueHistory:
    """A progress note (e.g. that a leadership meeting was called); the state stays."""
    now = now or utcnow()
    issue = get_issue(session, issue_id, lock=True)
    if not (_may_act(issue, actor) or actor.id == issue.follower_id):
        raise Forbidden("只有该事项的办理人、跟进领导或管理员可以记录进展。", code="not_your_task")
    step = domain.note(issue, text=text, media_ids=media_ids)
    step.details["meeting_called"] = meeting_called
    issue.updated_at = now  # a note is a change: bumps the version too
    return record(session, issue, step, actor, now)


def resolve(
    session: Session,
    actor: Principal,
    issue_id: uuid.UUID,
    *,
    note: str,
    media_ids: Sequence[uuid.UUID] = (),
    version: int | None = None,
    now: datetime | None = None,
) -> Issue:
    """办结, by the assignee (or an admin); ``on_time`` decides the points."""
    now = now or utcnow()
    issue = get_issue(session, issue_id, lock=True)
    _require_holder(issue, actor)
    _check_expected(issue, version)
    step = domain.resolve(issue, note=note, media_ids=media_ids, now=now)
    record(session, issue, step, actor, now)
    entry = session.scalars(
        sa.select(LedgerEntry).where(LedgerEntry.issue_id == issue.id).with_for_update()
    ).one_or_none()
    if entry is not None and entry.status != "solved":
        entry.status = "solved"
        entry.updated_at = now
    emit_issue(
        session,
        issue,
        "issue.resolved",
        {
            "issue_id": issue.id,
            "assignee_id": issue.assignee_id,
            # Points go to whoever resolved it (DESIGN.md), in the capacity they acted in.
            "resolver_id": actor.id,
            "resolver_role": _capacity(issue, actor),
            "level": issue.level,
            "reporter_id": issue.reporter_id,
            "difficulty": issue.difficulty,
            "due_at": issue.due_at,
            "resolved_at": issue.resolved_at,
            "on_time": issue.resolved_on_time,
            "note": issue.resolution_note,
            "photo_ids": issue.resolution_photo_ids,
            "resolution_no": issue.resolution_count,
        },
    )
    return issue


# --- escalation and the ledger ------------------------------------------------------------------


def _may_escalate(session: Session, issue: Issue, actor: Principal) -> bool:
    if _may_act(issue, actor):
        return True
    # The leader of the item's grid now (not whoever led it when it was assigned).
    if issue.grid_id is not None and issue.grid_id in scopes.led_grids(session, actor):
        return True
    return actor.has("area_leader") and actor.id == _area_leader_of(session, issue.village_id)


def escalate(
    session: Session,
    actor: Principal | None,
    issue_id: uuid.UUID,
    *,
    to_level: str,
    reason: str,
    department_id: uuid.UUID | None = None,
    admin_override: bool = False,
    version: int | None = None,
    ledger_prefix: str = "YN",
    settings: DispatchSettings | None = None,
    now: datetime | None = None,
) -> Issue:
    """升级: hand the item to the new level's holder with that level's time limit: township (the
    escalating admin, the township admins' pool, or a township department an admin names), area
    leader (the village's), county (the department; the item enters the ledger). The grid worker
    stays on it as the person who knows the case.

    ``actor`` None is the scheduler climbing one level after the grace period.
    """
    now = now or utcnow()
    settings = settings or DispatchSettings.model_construct()
    issue = get_issue(session, issue_id, lock=True)
    if actor is not None and not _may_escalate(session, issue, actor):
        raise Forbidden("您不能升级该事项。", code="not_your_task")
    _check_expected(issue, version)
    domain.level_index(to_level)
    domain.check_department_level(to_level, department_id)
    is_admin = actor is None or actor.has("admin")
    handler_id: uuid.UUID | None = None
    department: Department | None = None
    if to_level == "township":
        if department_id is not None:
            if not is_admin:
                raise Forbidden("只有管理员可以把事项交给乡镇分管部门。", code="admin_only")
            department = _township_department(session, department_id)
        elif actor is not None and actor.has("admin"):
            handler_id = actor.id
    elif to_level == "area_leader":
        handler_id = _area_leader_of(session, issue.village_id)
        if handler_id is None:
            raise Invalid("该村尚未设置包片领导，请先在组织管理中设置。", code="no_area_leader")
    elif to_level == "county" and is_admin:
        department = _county_department(session, department_id)
    step = domain.escalate(
        issue,
        to_level=to_level,
        reason=reason,
        is_admin=is_admin,
        admin_override=admin_override,
        handler_id=handler_id,
        department_id=department.id if department else None,
        due_at=now + timedelta(hours=settings.level_hours(to_level, issue.category)),
    )
    ledger = None
    if department is not None and to_level == "county":
        ledger = _enter_ledger(
            session, issue, department, step.note or "", actor, now, ledger_prefix
        )
        step.details["ledger_no"] = ledger.ledger_no
    record(session, issue, step, actor, now)
    emit_issue(
        session,
        issue,
        "issue.escalated",
        {
            "issue_id": issue.id,
            "from_level": step.from_level,
            "to_level": step.to_level,
            "reason": step.note,
            "handler_id": handler_id,
            "county_department": department.name if ledger and department else None,
            "county_department_id": department.id if ledger and department else None,
            "department_id": department.id if department else None,
            "department_name": department.name if department else None,
            "due_at": issue.due_at,
            "ledger_no": ledger.ledger_no if ledger else None,
            "assignee_id": issue.assignee_id,
            "by": actor.id if actor else None,
        },
    )
    return issue


def _county_department(session: Session, department_id: uuid.UUID | None) -> Department:
    if department_id is None:
        raise Invalid("转县级部门时须指定责任部门。", code="department_required")
    department = session.get(Department, department_id)
    if department is None or not department.active or department.kind != "county":
        raise Invalid("所选县级部门不存在或已停用。", code="unknown_department")
    return department


def next_ledger_no(session: Session, prefix: str, now: datetime) -> str:
    """``YN-2026-0007``: the year (Asia/Shanghai) and that year's sequence, taken atomically."""
    year = now.astimezone(SHANGHAI).year
    dialect = session.get_bind().dialect.name
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(LedgerCounter)
    seq = session.execute(
        insert.values(year=year, last=1)
        .on_conflict_do_update(
            index_elements=[LedgerCounter.year], set_={"last": LedgerCounter.last + 1}
        )
        .returning(LedgerCounter.last)
    ).scalar_one()
    return f"{prefix}-{year}-{seq:04d}"


def _enter_ledger(
    session: Session,
    issue: Issue,
    department: Department,
    reason: str,
    actor: Principal | None,
    now: datetime,
    prefix: str,
) -> LedgerEntry:
    """Put the item in the hard-problems ledger (or refer it again, keeping its number)."""
    entry = session.scalars(
        sa.select(LedgerEntry).where(LedgerEntry.issue_id == issue.id).with_for_update()
    ).one_or_none()
    if entry is None:
        entry = LedgerEntry(
            ledger_no=next_ledger_no(session, prefix, now),
            issue_id=issue.id,
            department_id=department.id,
            reason=reason,
            status="referred",
            referred_at=now,
            referred_by=actor.id if actor else None,
        )
        session.add(entry)
    else:
        entry.department_id = department.id
        entry.reason = reason
        entry.status = "referred"
        entry.referred_at = now
        entry.referred_by = actor.id if actor else None
    entry.department = department
    session.flush()
    return entry


LEDGER_STATUSES: dict[str, str] = {
    "referred": "已转办",
    "in_progress": "办理中",
    "solved": "已解决",
    "returned": "已退回乡镇",
}


def _may_update_ledger(session: Session, entry: LedgerEntry, actor: Principal) -> bool:
    """Admins, the staff of the item's department, and the area leader of the item's village
    (not any area leader)."""
    if actor.has("admin"):
        return True
    if actor.has("department_staff") and (
        session.get(DepartmentMember, (entry.department_id, actor.id)) is not None
    ):
        return True
    if not actor.has("area_leader"):
        return False
    issue = session.get(Issue, entry.issue_id)
    return issue is not None and actor.id == _area_leader_of(session, issue.village_id)


def add_ledger_progress(
    session: Session,
    actor: Principal,
    entry_id: uuid.UUID,
    *,
    text: str,
    status: str | None = None,
    now: datetime | None = None,
) -> LedgerEntry:
    """A progress note on a ledger item, optionally moving its status."""
    now = now or utcnow()
    entry = session.scalars(
        sa.select(LedgerEntry).where(LedgerEntry.id == entry_id).with_for_update()
    ).one_or_none()
    if entry is None:
        raise NotFound("未找到该台账事项。", code="ledger_not_found")
    if not _may_update_ledger(session, entry, actor):
        raise Forbidden(
            "只有管理员、责任部门人员或该村的包片领导可以登记台账进展。",
            code="not_your_ledger_item",
        )
    if not (text or "").strip():
        raise Invalid("请填写办理进展。", code="text_required")
    if status is not None:
        if status not in LEDGER_STATUSES:
            raise Invalid("未知的台账状态。", code="invalid_status")
        entry.status = status
    session.add(
        LedgerProgress(
            entry_id=entry.id,
            text=text.strip(),
            status=status,
            author_id=actor.id,
            author_name=actor.name or None,
            created_at=now,
        )
    )
    entry.updated_at = now
    session.flush()
    session.refresh(entry, ["progress"])
    return entry


def ledger_page(
    session: Session,
    *,
    status: str | None = None,
    department_id: uuid.UUID | None = None,
    cursor: str | None = None,
    limit: int = 50,
    actor: Principal | None = None,
) -> tuple[list[LedgerEntry], str | None]:
    """The ledger, newest referral first (``actor`` given: only items they may read)."""
    stmt = sa.select(LedgerEntry)
    if actor is not None:
        stmt = stmt.join(Issue, Issue.id == LedgerEntry.issue_id).where(
            scopes.visible_issues(session, actor)
        )
    if status:
        stmt = stmt.where(LedgerEntry.status == status)
    if department_id:
        stmt = stmt.where(LedgerEntry.department_id == department_id)
    return keyset_page(
        session,
        stmt,
        order=[LedgerEntry.referred_at.desc(), LedgerEntry.id.desc()],
        key=lambda e: [e.referred_at, e.id],
        cursor=cursor,
        limit=limit,
    )


def ledger_rows(session: Session, *, status: str | None = None) -> Iterable[LedgerEntry]:
    """Every ledger item for export, oldest first, in chunks."""
    stmt = sa.select(LedgerEntry).order_by(LedgerEntry.referred_at, LedgerEntry.id)
    if status:
        stmt = stmt.where(LedgerEntry.status == status)
    yield from session.scalars(stmt.execution_options(yield_per=500))


# --- callbacks (回头看) ------------------------------------------------------------------------


def record_callback(
    session: Session,
    settings: DispatchSettings,
    actor: Principal,
    issue_id: uuid.UUID,
    *,
    method: str,
    lawful: bool,
    implemented: bool,
    accepted: bool,
    notes: str | None,
    now: datetime | None = None,
) -> Callback:
    """A supervisor's callback; a failed one sends the item back (reason ``callback_failed``)."""
    now = now or utcnow()
    issue = get_issue(session, issue_id, lock=True)
    passed = domain.callback_passed(lawful=lawful, implemented=implemented, accepted=accepted)
    step = domain.record_callback(
        issue,
        passed=passed,
        notes=notes,
        reopen_due_at=now + timedelta(hours=settings.reopen_hours(issue.level)),
        area_leader_id=_area_leader_of(session, issue.village_id),
    )
    step.details.update(
        {"method": method, "lawful": lawful, "implemented": implemented, "accepted": accepted}
    )
    callback = Callback(
        issue_id=issue.id,
        supervisor_id=actor.id,
        method=method,
        lawful=lawful,
        implemented=implemented,
        accepted=accepted,
        passed=passed,
        notes=notes,
        recorded_at=now,
    )
    session.add(callback)
    record(session, issue, step, actor, now)
    emit_issue(
        session,
        issue,
        "issue.callback_recorded",
        {
            "issue_id": issue.id,
            "supervisor_id": actor.id,
            "method": method,
            "lawful": lawful,
            "implemented": implemented,
            "accepted": accepted,
            "passed": passed,
            "notes": notes,
            "assignee_id": issue.assignee_id,
        },
    )
    if not passed:
        _emit_reopened(session, issue, "callback_failed")
    return callback


def _in_area(
    stmt: sa.Select, village_id: uuid.UUID | None, area_leader_id: uuid.UUID | None
) -> sa.Select:
    """Narrow a select over ``Issue`` to one village and/or one area leader's villages."""
    if village_id is not None:
        stmt = stmt.where(Issue.village_id == village_id)
    if area_leader_id is not None:
        led = sa.select(Village.id).where(Village.area_leader_id == area_leader_id)
        stmt = stmt.where(Issue.village_id.in_(led))
    return stmt


def show_contacts(viewer: Principal, issues: Sequence[Issue]) -> Sequence[Issue]:
    """The resident's contact on the callback list: whole for supervisors, who call them back;
    the phone masked for anyone else (an admin looking at the list)."""
    whole = viewer.has("supervisor")
    for issue in issues:
        phone = issue.contact_phone
        if phone and not whole:
            phone = phone[:3] + "****" + phone[-4:] if len(phone) >= 8 else "****"
        issue.shown_contact_name = issue.contact_name  # type: ignore[attr-defined]
        issue.shown_contact_phone = phone  # type: ignore[attr-defined]
    return issues


def pending_callbacks(
    session: Session,
    *,
    cursor: str | None = None,
    limit: int = 50,
    village_id: uuid.UUID | None = None,
    area_leader_id: uuid.UUID | None = None,
) -> tuple[list[Issue], str | None]:
    """Closed items waiting for a callback: every one ever rated unsatisfied, plus the sample;
    optionally of one village or of one area leader's villages (包片)."""
    stmt = sa.select(Issue).where(Issue.state == "closed", Issue.callback_status == "pending")
    stmt = _in_area(stmt, village_id, area_leader_id)
    return keyset_page(
        session,
        stmt,
        order=[Issue.closed_at.asc(), Issue.id.asc()],
        key=lambda i: [i.closed_at, i.id],
        cursor=cursor,
        limit=limit,
    )


def callback_results(
    session: Session,
    *,
    cursor: str | None = None,
    limit: int = 50,
    village_id: uuid.UUID | None = None,
    area_leader_id: uuid.UUID | None = None,
    passed: bool | None = None,
) -> tuple[list[Callback], str | None]:
    """The callbacks recorded (回头看 results), newest first, with their item's ticket, category
    and village put on each for the answer."""
    stmt = sa.select(Callback).join(Issue, Issue.id == Callback.issue_id)
    stmt = _in_area(stmt, village_id, area_leader_id)
    if passed is not None:
        stmt = stmt.where(Callback.passed.is_(passed))
    callbacks, next_cursor = keyset_page(
        session,
        stmt,
        order=[Callback.recorded_at.desc(), Callback.id.desc()],
        key=lambda c: [c.recorded_at, c.id],
        cursor=cursor,
        limit=limit,
    )
    loaded = [session.get(Issue, c.issue_id) for c in callbacks]
    issues = {i.id: i for i in annotate(session, loaded)}
    names = staff_names(session, (c.supervisor_id for c in callbacks))
    for callback in callbacks:
        issue = issues[callback.issue_id]
        callback.ticket_no = issue.ticket_no  # type: ignore[attr-defined]
        callback.category = issue.category  # type: ignore[attr-defined]
        callback.village_id = issue.village_id  # type: ignore[attr-defined]
        callback.village_name = issue.village_name  # type: ignore[attr-defined]
        callback.supervisor_name = names.get(callback.supervisor_id)  # type: ignore[attr-defined]
    return callbacks, next_cursor


# --- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueFilter:
    village_id: uuid.UUID | None = None
    category: str | None = None
    level: str | None = None
    state: str | None = None
    overdue: bool | None = None


def queue(
    session: Session,
    actor: Principal,
    filters: QueueFilter,
    *,
    cursor: str | None = None,
    limit: int = 50,
    now: datetime | None = None,
) -> tuple[list[Issue], str | None]:
    """The to-do list: open items, oldest first, that the caller may read (``scopes``): all for
    admins and supervisors, their grids for grid staff (with the not yet assigned reports of
    their grids' villages: ``state=reported``), their villages for area leaders."""
    now = now or utcnow()
    if filters.state and filters.state not in domain.OPEN_STATES:
        raise Invalid("待办列表只包含未办结的事项。", code="invalid_state")
    shape = (
        (filters.state,) if filters.state else tuple(sorted(domain.OPEN_STATES)),
        bool(filters.village_id),
        bool(filters.category),
        bool(filters.level),
        filters.overdue,
    )
    params = {
        "village": filters.village_id,
        "category": filters.category,
        "level": filters.level,
        "now": now,
    }
    reach = scopes.reach_of(session, actor)
    query = (
        _whole_queue(*shape)
        if reach.everything
        else KeysetQuery(_queue_select(*shape, reach.condition()), order=_QUEUE_ORDER)
    )
    return keyset_page(
        session,
        query,
        key=lambda i: [i.reported_at, i.id],
        cursor=cursor,
        limit=limit,
        params=params,
    )


_QUEUE_ORDER = (Issue.reported_at.asc(), Issue.id.asc())


def _queue_select(
    states: tuple[str, ...],
    by_village: bool,
    by_category: bool,
    by_level: bool,
    overdue: bool | None,
    reach: sa.ColumnElement[bool],
) -> sa.Select:
    """The queue's items in ``states`` within ``reach``, filtered by the parameters ``village``,
    ``category``, ``level`` and (overdue or not, at the parameter ``now``) as asked."""
    stmt = sa.select(Issue).where(Issue.state.in_(states), reach)
    if by_village:
        stmt = stmt.where(Issue.village_id == sa.bindparam("village"))
    if by_category:
        stmt = stmt.where(Issue.category == sa.bindparam("category"))
    if by_level:
        stmt = stmt.where(Issue.level == sa.bindparam("level"))
    now = sa.bindparam("now", type_=Issue.due_at.type)
    if overdue is True:
        stmt = stmt.where(
            Issue.state.in_(domain.WORKING_STATES),
            sa.or_(Issue.due_at < now, Issue.overdue_at.is_not(None)),
        )
    elif overdue is False:
        stmt = stmt.where(
            sa.or_(
                Issue.state.not_in(domain.WORKING_STATES),
                sa.and_(Issue.due_at >= now, Issue.overdue_at.is_(None)),
            )
        )
    return stmt


@functools.lru_cache(maxsize=128)
def _whole_queue(
    states: tuple[str, ...],
    by_village: bool,
    by_category: bool,
    by_level: bool,
    overdue: bool | None,
) -> KeysetQuery:
    """The queue of those who see every item (admins, supervisors), built once per shape: the
    busiest staff page."""
    stmt = _queue_select(states, by_village, by_category, by_level, overdue, sa.true())
    return KeysetQuery(stmt, order=_QUEUE_ORDER)


@functools.lru_cache(maxsize=8)
def _tasks_query(which: str) -> KeysetQuery:
    """A worker's tasks (``mine``), an area leader's followed items (``following``) or a
    department member's (``department``), due soonest first, built once for ``me``."""
    me = sa.bindparam("me")
    stmt = sa.select(Issue).where(Issue.state.in_(domain.WORKING_STATES))
    if which == "following":
        stmt = stmt.where(sa.or_(Issue.follower_id == me, Issue.handler_id == me))
    elif which == "department":
        # Department staff: also the items their department holds (township or county).
        theirs = sa.select(DepartmentMember.department_id).where(DepartmentMember.user_id == me)
        stmt = stmt.where(sa.or_(Issue.assignee_id == me, Issue.department_id.in_(theirs)))
    else:
        stmt = stmt.where(Issue.assignee_id == me)
    return KeysetQuery(stmt, order=[Issue.due_at.asc(), Issue.id.asc()])


def my_tasks(
    session: Session,
    actor: Principal,
    *,
    following: bool = False,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Issue], str | None]:
    """Open tasks of the caller, due soonest first (or those an area leader follows)."""
    if following:
        which = "following"
    elif actor.has("department_staff"):
        which = "department"
    else:
        which = "mine"
    return keyset_page(
        session,
        _tasks_query(which),
        key=lambda i: [i.due_at, i.id],
        cursor=cursor,
        limit=limit,
        params={"me": actor.id},
    )


def read_issue(session: Session, actor: Principal, issue_id: uuid.UUID) -> Issue:
    """One item for a caller who may read it (``scopes``); 404 for anyone else."""
    return scopes.require_read(session, get_issue(session, issue_id), actor)


# --- likely duplicates -------------------------------------------------------------------------

MAX_DUPLICATES = 20


def duplicate_rule(settings: DispatchSettings) -> domain.DuplicateRule:
    return domain.DuplicateRule(
        radius_m=settings.duplicate_radius_meters,
        window=timedelta(hours=settings.duplicate_window_hours),
    )


def _duplicate_candidates(dialect: str, reach: sa.ColumnElement[bool]) -> sa.Select:
    """Open items within ``reach`` in the parameters ``villages`` and ``categories``, reported
    between ``earliest`` and ``latest``: the columns the duplicate rule and its answer read."""
    return sa.select(
        Issue.id,
        Issue.ticket_no,
        Issue.reported_at,
        Issue.state,
        Issue.level,
        Issue.village_id,
        Issue.category,
        Issue.lat,
        Issue.lon,
    ).where(
        Issue.state.in_(domain.OPEN_STATES),
        among_bound(dialect, Issue.village_id, "villages"),
        among_bound(dialect, Issue.category, "categories"),
        Issue.reported_at.between(
            sa.bindparam("earliest", type_=Issue.reported_at.type),
            sa.bindparam("latest", type_=Issue.reported_at.type),
        ),
        reach,
    )


@functools.lru_cache(maxsize=4)
def _all_duplicate_candidates(dialect: str) -> sa.Select:
    """``_duplicate_candidates`` for those who see every item, built once."""
    return _duplicate_candidates(dialect, sa.true())


def likely_duplicates(
    session: Session, settings: DispatchSettings, actor: Principal, issues: Sequence[Issue]
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """For each item, the open reports the caller may read that are likely the same problem
    (``domain.DuplicateRule``), nearest first; one query for the whole page."""
    found: dict[uuid.UUID, list[dict[str, Any]]] = {i.id: [] for i in issues}
    if not issues:
        return found
    rule = duplicate_rule(settings)
    pairs = {(i.village_id, i.category) for i in issues}
    earliest = min(i.reported_at for i in issues) - rule.window
    latest = max(i.reported_at for i in issues) + rule.window
    # Rows of the columns the rule and the answer read, not whole items: a page's candidates
    # are a few hundred, and loading each as an ``Issue`` cost more than the rest of the page.
    # The page's villages and categories as two arrays, not its (village, category) pairs:
    # a list of 20 pairs took PostgreSQL 3 ms to plan (0.2 ms to run) on every page; a pair
    # outside the page's falls out below.
    dialect = session.get_bind().dialect.name
    reach = scopes.reach_of(session, actor)
    stmt = (
        _all_duplicate_candidates(dialect)
        if reach.everything
        else _duplicate_candidates(dialect, reach.condition())
    )
    binds = {
        "villages": sorted({village for village, _ in pairs}, key=str),
        "categories": sorted({category for _, category in pairs}),
        "earliest": earliest,
        "latest": latest,
    }
    candidates = session.execute(stmt, binds).all()
    alike: dict[tuple[uuid.UUID, str], list[Any]] = defaultdict(list)
    for other in candidates:
        alike[(other.village_id, other.category)].append(other)
    for issue in issues:
        matches = []
        for other in alike[(issue.village_id, issue.category)]:
            if rule.matches(issue, other):
                distance = rule.distance(issue, other)
                matches.append(
                    {
                        "id": other.id,
                        "ticket_no": other.ticket_no,
                        "reported_at": other.reported_at,
                        "distance_m": None if distance is None else round(distance),
                        "state": other.state,
                        "level": other.level,
                    }
                )
        matches.sort(
            key=lambda m: (m["distance_m"] is None, m["distance_m"] or 0, m["reported_at"])
        )
        found[issue.id] = matches[:MAX_DUPLICATES]
    return found


def issue_duplicates(
    session: Session, settings: DispatchSettings, actor: Principal, issue_id: uuid.UUID
) -> list[dict[str, Any]]:
    """The likely duplicates of one item the caller may read (for the reject-as-duplicate step)."""
    issue = read_issue(session, actor, issue_id)
    return likely_duplicates(session, settings, actor, [issue])[issue.id]


def mark_duplicates(
    session: Session, settings: DispatchSettings, actor: Principal, issues: Sequence[Issue]
) -> Sequence[Issue]:
    """Put ``possible_duplicates`` on the queue's items for the answer (not stored)."""
    found = likely_duplicates(session, settings, actor, issues)
    for issue in issues:
        issue.possible_duplicates = found[issue.id]  # type: ignore[attr-defined]
    return issues


def history(
    session: Session, issue_id: uuid.UUID, actor: Principal | None = None
) -> list[IssueHistory]:
    """The item's steps, oldest first; ``actor`` given: only if they may read the item."""
    issue = get_issue(session, issue_id)
    if actor is not None:
        scopes.require_read(session, issue, actor)
    return list(
        session.scalars(
            sa.select(IssueHistory)
            .where(IssueHistory.issue_id == issue_id)
            .order_by(IssueHistory.occurred_at, IssueHistory.seq)
        )
    )


# Built once: every page of items names their villages.
_VILLAGE_NAMES = sa.select(Village.id, Village.name)


def staff_names(session: Session, ids: Iterable[uuid.UUID | None]) -> dict[uuid.UUID, str]:
    return names_by_id(session, Staff, ids)


def village_names(session: Session) -> dict[uuid.UUID, str]:
    return {row.id: row.name for row in session.execute(_VILLAGE_NAMES)}


# --- events out --------------------------------------------------------------------------------


def snapshot(session: Session, issue: Issue) -> dict[str, Any]:
    """The resident-facing state of the item after a step, carried by every ``issue.*`` event so
    that a consumer can take the newest one whole (retries reorder events; DESIGN.md)."""
    handler_name: str | None = None
    department: Department | None = None
    if issue.department_id is not None:  # a township department, or the county's
        department = session.get(Department, issue.department_id)
        handler_name = department.name if department else None
    elif issue.level != "grid" and issue.handler_id is not None:
        handler_name = _staff_name(session, issue.handler_id)
    return {
        "state": issue.state,
        "level": issue.level,
        "assignee_id": issue.assignee_id,
        "assignee_name": _staff_name(session, issue.assignee_id),
        "handler_id": issue.handler_id,
        "handler_name": handler_name,
        "follower_id": issue.follower_id,
        "follower_name": _staff_name(session, issue.follower_id),
        "due_at": issue.due_at,
        "resolution_no": issue.resolution_count,
        "resolution_note": issue.resolution_note,
        "resolution_photo_ids": list(issue.resolution_photo_ids or []),
        "resolved_at": issue.resolved_at,
        "rating": issue.rating,
        "closed_at": issue.closed_at,
        "reject_reason": issue.reject_reason,
        "holder_ids": holder_ids(issue, department),
    }


def holder_ids(issue: Issue, department: Department | None) -> list[uuid.UUID]:
    """Who holds the item now and must act on it (notify's recipients): the holding
    department's members, else the level's handler above the grid, else the grid worker while
    the item is being worked on; empty: the township admins' queue (a new report) or nobody (done
    at the grid level)."""
    if issue.department_id is not None:
        # ``members`` is loaded with the department (selectin), in the order they were added.
        return [member.user_id for member in department.members] if department else []
    if issue.level != "grid" and issue.handler_id is not None:
        return [issue.handler_id]
    if issue.assignee_id is not None and issue.state in domain.WORKING_STATES:
        return [issue.assignee_id]
    return []


def _staff_name(session: Session, user_id: uuid.UUID | None) -> str | None:
    if user_id is None:
        return None
    staff = session.get(Staff, user_id)
    return (staff.name or None) if staff else None


def emit_issue(session: Session, issue: Issue, event_type: str, data: dict[str, Any]) -> None:
    """Write an ``issue.*`` event with the item's new ``issue_version`` and its ``snapshot``.

    ``version`` (SQLAlchemy's ``version_id_col``) counts one up at each flush that changes the
    row. A step that changed the row since the last announcement was flushed by then (maybe
    already by an autoflush mid-step: counted once); a step that changed nothing of it (a
    second event of one step, a callback that passed twice) is counted here, so that no two
    events carry the same version.
    """
    session.flush()
    if issue.version == getattr(issue, "_announced_version", None):
        issue.updated_at = utcnow()
        flag_modified(issue, "updated_at")
        session.flush()
    issue._announced_version = issue.version  # type: ignore[attr-defined]
    emit(
        session,
        event_type,
        {**data, "issue_version": issue.version, "snapshot": snapshot(session, issue)},
    )


@sa.event.listens_for(Issue, "load")
@sa.event.listens_for(Issue, "refresh")
def _remember_loaded_version(issue: Issue, *_args: Any) -> None:
    """The version as read from the database: the last one announced before this step."""
    issue._announced_version = issue.version  # type: ignore[attr-defined]


def _emit_closed(session: Session, issue: Issue, *, auto: bool = False) -> None:
    emit_issue(
        session,
        issue,
        "issue.closed",
        {
            "issue_id": issue.id,
            "reporter_id": issue.reporter_id,
            "rating": None if auto else issue.rating,
            "closed_at": issue.closed_at,
            "auto": auto,
            "assignee_id": issue.assignee_id,
        },
    )


def _reopen_ledger_entry(session: Session, issue: Issue, reason: str) -> None:
    """A county item reopened (any reason): its ledger entry is in progress again, with a note."""
    if issue.level != "county":
        return
    entry = session.scalars(
        sa.select(LedgerEntry).where(LedgerEntry.issue_id == issue.id).with_for_update()
    ).one_or_none()
    if entry is None or entry.status == "in_progress":
        return
    now = utcnow()
    entry.status = "in_progress"
    entry.updated_at = now
    label = domain.REOPEN_REASONS.get(reason, reason)
    session.add(
        LedgerProgress(
            entry_id=entry.id,
            text=f"事项重新办理（{label}），台账恢复为办理中。",
            status="in_progress",
            author_id=None,
            author_name="系统",
            created_at=now,
        )
    )


def _emit_reopened(session: Session, issue: Issue, reason: str) -> None:
    """Announce a reopen (every reopen comes through here: the ledger entry follows it)."""
    _reopen_ledger_entry(session, issue, reason)
    emit_issue(
        session,
        issue,
        "issue.reopened",
        {
            "issue_id": issue.id,
            "reason": reason,
            "assignee_id": issue.assignee_id,
            "area_leader_id": issue.follower_id,
            "due_at": issue.due_at,
            "reporter_id": issue.reporter_id,
        },
    )


def auto_close(session: Session, issue: Issue, now: datetime) -> None:
    """Close a resolved item nobody rated in time (called by the scheduler, row locked)."""
    step = domain.auto_close(issue, now=now)
    record(session, issue, step, None, now)
    _emit_closed(session, issue, auto=True)


def conflict_from_stale() -> Conflict:
    return Conflict("该事项已被他人同时修改，请刷新后重试。", code="version_conflict")


def annotate(session: Session, issues: Sequence[Issue]) -> Sequence[Issue]:
    """Put the assignee's, village's and holding department's names on the items for the
    answer (not stored)."""
    names = staff_names(session, (i.assignee_id for i in issues))
    villages = village_names(session) if issues else {}
    wanted = {i.department_id for i in issues if i.department_id is not None}
    departments = (
        dict(
            session.execute(
                sa.select(Department.id, Department.name).where(Department.id.in_(wanted))
            ).all()
        )
        if wanted
        else {}
    )
    for issue in issues:
        issue.assignee_name = names.get(issue.assignee_id)  # type: ignore[attr-defined]
        issue.village_name = villages.get(issue.village_id)  # type: ignore[attr-defined]
        issue.department_name = departments.get(issue.department_id)  # type: ignore[attr-defined]
    return issues
