"""Intake's use cases for reports: one function per thing a resident or staff member does."""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from intake import domain, scopes
from intake.media import MediaStorage, clean_image, content_type_for_key
from intake.models import (
    IdempotencyRecord,
    Issue,
    IssueStep,
    Media,
    Rating,
    TicketCounter,
    User,
    Village,
)
from intake.settings import IntakeSettings
from shared.auth import Principal
from shared.clock import local_text, utcnow
from shared.db import Database, Upsert, after_commit
from shared.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    TooManyRequests,
    Unauthorized,
)
from shared.events import emit
from shared.pagination import KeysetQuery, keyset_page

ISSUES_REPORTED = Counter(
    "issues_reported_total", "Reports stored (counted once committed)", ["category"]
)


@dataclass(frozen=True)
class OnBehalf:
    """The resident a staff member reports for (代办/帮办): an account, or a name and phone."""

    resident_id: uuid.UUID | None = None
    name: str | None = None
    phone: str | None = None


# Who may report on a resident's behalf.
PROXY_ROLES = frozenset({"grid_worker", "grid_leader", "admin"})
RESIDENT_ROLES = frozenset({"resident", "party_member"})


@dataclass(frozen=True)
class NewReport:
    """What a resident (or an Open311 client) reports; fields already type-checked."""

    category: str
    description: str
    village_id: uuid.UUID
    address: str | None = None
    lat: float | None = None
    lon: float | None = None
    photo_ids: tuple[uuid.UUID, ...] = ()
    source: str = "miniprogram"
    contact_name: str | None = None
    contact_phone: str | None = None
    on_behalf_of: OnBehalf | None = None


def next_ticket_seq(session: Session, day: str) -> int:
    """Take the next number of the day atomically (safe with many web workers)."""
    return _TICKET_COUNTER.execute(session, [{"day": day, "last": 1}]).scalar_one()


# One cached statement (shared.db.Upsert says why): a new day starts at 1, a known day adds 1.
_TICKET_COUNTER = Upsert(
    TicketCounter.__table__,
    conflict=("day",),
    columns=("day", "last"),
    add=("last",),
    returning=("last",),
)


def _check_report(session: Session, reporter_id: uuid.UUID, report: NewReport) -> list[Media]:
    """``reporter_id`` here is who took the photos: the resident, or the staff member for them."""
    errors: dict[str, list[str]] = {}
    if report.category not in domain.CATEGORIES:
        errors["category"] = ["未知的事项类别。"]
    problem = domain.description_problem(report.description, bool(report.photo_ids))
    if problem:
        errors["description"] = [problem]
    if session.get(Village, report.village_id) is None:
        errors["village_id"] = ["未知的村庄。"]
    photos: list[Media] = []
    if len(set(report.photo_ids)) != len(report.photo_ids):
        errors["photo_ids"] = ["照片不能重复。"]
    elif report.photo_ids:
        photos = list(
            session.scalars(
                sa.select(Media).where(Media.id.in_(report.photo_ids)).with_for_update()
            )
        )
        usable = {m.id for m in photos if m.uploader_id == reporter_id and m.issue_id is None}
        if usable != set(report.photo_ids):
            errors["photo_ids"] = ["只能附上您本人上传、且未用于其他事项的照片。"]
    if errors:
        raise Invalid(details=errors)
    return photos


# Built once: a resident's every report reads their confirmed contact phone.
_REPORTER_CONTACT = sa.select(User.name, User.contact_phone).where(
    User.id == sa.bindparam("user_id")
)


def report_issue(
    session: Session,
    settings: IntakeSettings,
    reporter_id: uuid.UUID,
    report: NewReport,
    *,
    now: datetime | None = None,
) -> Issue:
    """Store a report and its ``issue.reported`` event in the caller's transaction.

    ``now`` (default: the present) is when it was reported: its ticket number's day and
    ``reported_at``; only the demo history (``python -m intake seed-history``) gives a past one.

    With ``report.on_behalf_of`` the caller (``reporter_id``) is the staff member who submits it
    (代办): the resident becomes the reporter when they have an account, else the staff member
    stays the reporter for them and the resident's name and phone are the contact.
    """
    photos = _check_report(session, reporter_id, report)
    submitted_by: uuid.UUID | None = None
    contact_name, contact_phone = report.contact_name, report.contact_phone
    if report.on_behalf_of is not None:
        submitted_by = reporter_id
        resident_id, contact_name, contact_phone = _resident_of(session, report.on_behalf_of)
        reporter_id = resident_id or submitted_by
    elif report.source == "miniprogram" and contact_phone is None:
        # The resident's confirmed contact phone goes with each report, for a phone callback.
        user = session.execute(_REPORTER_CONTACT, {"user_id": reporter_id}).first()
        if user is not None and user.contact_phone:
            contact_name, contact_phone = contact_name or user.name or None, user.contact_phone
    now = now or utcnow()
    issue = Issue(
        id=uuid.uuid4(),
        ticket_no=domain.ticket_number(
            settings.ticket_prefix, now, next_ticket_seq(session, domain.shanghai_day(now))
        ),
        reporter_id=reporter_id,
        submitted_by=submitted_by,
        source="on_behalf" if submitted_by else report.source,
        contact_name=contact_name,
        contact_phone=contact_phone,
        category=report.category,
        description=(report.description or "").strip(),
        village_id=report.village_id,
        address=report.address,
        lat=report.lat,
        lon=report.lon,
        photo_ids=[str(p) for p in report.photo_ids],
        status="reported",
        level="grid",
        reported_at=now,
        state_changed_at=now,
    )
    session.add(issue)
    session.flush()
    for photo in photos:
        photo.issue_id = issue.id
    proxy = _staff_label(session, submitted_by) if submitted_by else None
    session.add(
        IssueStep(
            issue_id=issue.id,
            kind="issue.reported",
            title=f"已受理：{proxy}代为提交诉求" if proxy else "已受理：诉求已提交",
            occurred_at=now,
        )
    )
    emit(
        session,
        "issue.reported",
        {
            "issue_id": issue.id,
            "ticket_no": issue.ticket_no,
            "reporter_id": reporter_id,
            "category": issue.category,
            "description": issue.description,
            "village_id": issue.village_id,
            "address": issue.address,
            "lat": issue.lat,
            "lon": issue.lon,
            "photo_ids": issue.photo_ids,
            "reported_at": now,
            "source": issue.source,
            "submitted_by": submitted_by,
            "contact_name": contact_name,
            "contact_phone": contact_phone,
        },
    )
    after_commit(session, ISSUES_REPORTED.labels(issue.category).inc)
    return issue


def _resident_of(
    session: Session, on_behalf: OnBehalf
) -> tuple[uuid.UUID | None, str | None, str | None]:
    """(reporter id, contact name, contact phone) of the resident a staff member reports for."""
    phone = domain.mobile_number(on_behalf.phone) if on_behalf.phone else None
    if on_behalf.phone and phone is None:
        raise Invalid(details={"on_behalf_of": {"phone": ["请填写正确的 11 位手机号码。"]}})
    if on_behalf.resident_id is None:
        return None, (on_behalf.name or "").strip() or None, phone
    resident = session.get(User, on_behalf.resident_id)
    if resident is None or not resident.active or not RESIDENT_ROLES.intersection(resident.roles):
        raise Invalid(details={"on_behalf_of": {"resident_id": ["未找到该群众账号。"]}})
    name = (on_behalf.name or "").strip() or resident.name or None
    return resident.id, name, phone or resident.contact_phone


def _staff_label(session: Session, user_id: uuid.UUID) -> str:
    user = session.get(User, user_id)
    roles = set(user.roles) if user else set()
    role = "工作人员"
    if "grid_worker" in roles:
        role = "网格员"
    elif "grid_leader" in roles:
        role = "网格长"
    return f"{role}{user.name if user else ''}"


def body_fingerprint(body: Any) -> str:
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, ensure_ascii=False, default=str).encode()
    ).hexdigest()


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def check_reporter(caller: Principal, report: NewReport) -> None:
    """Residents report for themselves; grid workers, grid leaders and admins for a resident."""
    if report.on_behalf_of is not None:
        if not caller.has(*PROXY_ROLES):
            raise Forbidden("只有网格员、网格长和管理员可以代群众提交诉求。", code="not_a_proxy")
    elif not caller.has(*RESIDENT_ROLES):
        raise Invalid(
            "工作人员代群众提交时，请填写代办群众的信息（on_behalf_of）。",
            code="on_behalf_of_required",
            details={"on_behalf_of": ["请填写代办群众的姓名或选择群众账号。"]},
        )


def report_issue_once(
    db: Database,
    settings: IntakeSettings,
    caller: Principal | uuid.UUID,
    report: NewReport,
    *,
    idempotency_key: str | None,
    fingerprint: str,
    render: Any,
) -> Answer:
    """``report_issue`` honouring an Idempotency-Key: a retry gets the first answer again."""
    if isinstance(caller, Principal):
        check_reporter(caller, report)
        reporter_id = caller.id
    else:
        reporter_id = caller
    if idempotency_key:
        earlier = _earlier_answer(db, reporter_id, idempotency_key, fingerprint)
        if earlier is not None:
            return earlier
    try:
        with db.transaction() as session:
            issue = report_issue(session, settings, reporter_id, report)
            answer = Answer(201, render(issue))
            if idempotency_key:
                session.add(
                    IdempotencyRecord(
                        user_id=reporter_id,
                        key=idempotency_key,
                        request_hash=fingerprint,
                        status_code=answer.status,
                        response=answer.body,
                    )
                )
        return answer
    except IntegrityError:
        # Two requests with the same key at once: the other one won; answer as it did.
        if idempotency_key:
            earlier = _earlier_answer(db, reporter_id, idempotency_key, fingerprint)
            if earlier is not None:
                return earlier
        raise


_RECORDS = IdempotencyRecord.__table__
# Built once: it runs before every keyed report.
_EARLIER_ANSWER = sa.select(
    _RECORDS.c.request_hash, _RECORDS.c.status_code, _RECORDS.c.response
).where(_RECORDS.c.user_id == sa.bindparam("user_id"), _RECORDS.c.key == sa.bindparam("key"))


def _earlier_answer(db: Database, user_id: uuid.UUID, key: str, fingerprint: str) -> Answer | None:
    with db.read() as conn:  # one SELECT before every keyed report: no BEGIN/COMMIT
        record = conn.execute(_EARLIER_ANSWER, {"user_id": user_id, "key": key}).first()
        if record is None:
            return None
        if record.request_hash != fingerprint:
            raise Conflict(
                "该 Idempotency-Key 已用于另一项内容不同的提交，请换一个新的键。",
                code="idempotency_key_reused",
            )
        return Answer(record.status_code, record.response)


_STEPS = IssueStep.__table__
# Built once: composing a statement costs more CPU than the look-up (a fifth of a GET's own).
_ISSUE_WITH_VILLAGE = (
    sa.select(Issue, Village.name)
    .outerjoin(Village, Village.id == Issue.village_id)
    .where(Issue.id == sa.bindparam("issue_id"))
)
# The timeline as plain rows: read-only, and far cheaper than loading ORM step objects.
_TIMELINE = (
    sa.select(
        _STEPS.c.kind, _STEPS.c.title, _STEPS.c.note, _STEPS.c.actor_name, _STEPS.c.occurred_at
    )
    .where(_STEPS.c.issue_id == sa.bindparam("issue_id"))
    .order_by(_STEPS.c.occurred_at)
)


def visible_issue(session: Session, principal: Principal, issue_id: uuid.UUID) -> Issue:
    """The issue if the caller may read it (``scopes``); 404 for anyone else. Only photos
    attached to it are shown (a foreign id from a resolution is not)."""
    found = session.execute(_ISSUE_WITH_VILLAGE, {"issue_id": issue_id}).first()
    issue = found[0] if found else None
    if issue is None or not scopes.may_read_issue(session, principal, issue):
        raise NotFound("未找到该事项。")
    issue.village_name = found[1]  # type: ignore[attr-defined]
    issue.timeline_rows = session.execute(  # type: ignore[attr-defined]
        _TIMELINE, {"issue_id": issue.id}
    ).all()
    issue.shown_photo_ids = scopes.attached(  # type: ignore[attr-defined]
        session, issue, issue.photo_ids
    )
    issue.shown_resolution_photo_ids = scopes.attached(  # type: ignore[attr-defined]
        session, issue, issue.resolution_photo_ids
    )
    issue.can_rate = issue.reporter_id == principal.id and _rateable(session, issue)  # type: ignore[attr-defined]
    issue.duplicate_of = original_progress(session, issue)  # type: ignore[attr-defined]
    return issue


def original_progress(session: Session, issue: Issue) -> dict[str, Any] | None:
    """For a report rejected as a duplicate: the original's progress that its reporter may
    follow (state, level, handler, times, step titles), and nothing of the original reporter
    (no description, address, photos, contact, rating or notes)."""
    if issue.duplicate_of_id is None:
        return None
    original = session.scalar(
        sa.select(Issue).options(selectinload(Issue.steps)).where(Issue.id == issue.duplicate_of_id)
    )
    if original is None:  # not (yet) known here: the number alone
        return {"ticket_no": issue.duplicate_of_ticket_no, "timeline": []}
    timeline = []
    for step in original.steps:
        title = domain.public_step_title(step.kind, step.title)
        if title is not None:
            timeline.append({"title": title, "occurred_at": step.occurred_at})
    return {
        "ticket_no": original.ticket_no,
        "category": original.category,
        "status": original.status,
        "level": original.level,
        "handler_name": original.assignee_name,
        "reported_at": original.reported_at,
        "due_at": original.due_at,
        "resolved_at": original.resolved_at,
        "closed_at": original.closed_at,
        "timeline": timeline,
    }


def _rateable(session: Session, issue: Issue) -> bool:
    if not domain.can_rate(issue.status, issue.rating, issue.resolution_count):
        return False
    return (
        session.scalar(
            sa.select(Rating.id).where(
                Rating.issue_id == issue.id, Rating.resolution_no == issue.resolution_count
            )
        )
        is None
    )


# What the "mine" list shows of each report (``schemas.IssueSummaryOut``): these columns as rows,
# not whole ORM objects (their JSON columns parsed, their state tracked) that a list only reads.
SUMMARY_COLUMNS = (
    Issue.id,
    Issue.ticket_no,
    Issue.category,
    Issue.description,
    Issue.status,
    Issue.level,
    Issue.assignee_name,
    Issue.due_at,
    Issue.reported_at,
    Issue.rating,
)


@functools.lru_cache(maxsize=64)
def _mine_query(status: str | None) -> KeysetQuery:
    """The "mine" list's statement for one ``status`` filter (None: all), built once: the
    resident's hottest page."""
    mine = sa.bindparam("me")
    stmt = sa.select(*SUMMARY_COLUMNS).where(
        sa.or_(Issue.reporter_id == mine, Issue.submitted_by == mine)
    )
    if status in domain.STATUS_GROUPS:
        stmt = stmt.where(Issue.status.in_(sorted(domain.STATUS_GROUPS[status])))
    elif status:
        stmt = stmt.where(Issue.status == status)
    return KeysetQuery(stmt, order=[Issue.reported_at.desc(), Issue.id.desc()])


def my_issues(
    conn: Session | sa.Connection,
    principal: Principal,
    *,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[sa.Row], str | None]:
    """The caller's own reports (and those they submitted for a resident), newest first, as
    rows of ``SUMMARY_COLUMNS``; ``status`` a state, or ``done`` (resolved and closed: 已办结事项)
    or ``open``. One SELECT: ``Database.read`` is enough."""
    return keyset_page(
        conn,
        _mine_query(status),
        key=lambda row: [row.reported_at, row.id],
        cursor=cursor,
        limit=limit,
        scalars=False,
        params={"me": principal.id},
    )


def rate_issue(
    session: Session,
    principal: Principal,
    issue_id: uuid.UUID,
    rating: str,
    comment: str | None,
) -> Rating:
    """The reporter's verdict on the latest resolution; emits ``issue.rated``."""
    issue = session.scalar(sa.select(Issue).where(Issue.id == issue_id).with_for_update())
    if issue is None or issue.reporter_id != principal.id:
        raise NotFound("未找到该事项。")
    if not domain.can_rate(issue.status, issue.rating, issue.resolution_count):
        raise Conflict(
            f"该事项当前状态为「{domain.STATES.get(issue.status, issue.status)}」，"
            "办结后才能评价。",
            code="not_resolved",
        )
    exists = session.scalar(
        sa.select(Rating.id).where(
            Rating.issue_id == issue.id, Rating.resolution_no == issue.resolution_count
        )
    )
    if exists is not None:
        raise Conflict("您已评价过本次办理结果，不能重复评价。", code="already_rated")
    now = utcnow()
    record = Rating(
        issue_id=issue.id,
        resolution_no=issue.resolution_count,
        rating=rating,
        comment=comment,
        rated_at=now,
    )
    session.add(record)
    issue.rating = rating
    session.add(
        IssueStep(
            issue_id=issue.id,
            kind="issue.rated",
            title=f"群众评价：{domain.RATINGS[rating]}",
            note=comment,
            occurred_at=now,
        )
    )
    emit(
        session,
        "issue.rated",
        {
            "issue_id": issue.id,
            "reporter_id": issue.reporter_id,
            "rating": rating,
            "comment": comment,
            "rated_at": now,
            "resolution_no": issue.resolution_count,
        },
    )
    return record


def list_villages(session: Session) -> list[Village]:
    return list(session.scalars(sa.select(Village).order_by(Village.name)))


def categories() -> list[dict[str, str]]:
    return [{"code": code, "label": label} for code, label in domain.CATEGORIES.items()]


def upload_photo(
    db: Database,
    settings: IntakeSettings,
    storage: MediaStorage,
    uploader: Principal,
    data: bytes,
) -> Media:
    """Check a photo by its content, clean it (orientation, no EXIF), store it and a thumbnail.

    The slow part (decoding, up to a second for a large photo) runs before any transaction opens.
    """
    cleaned = clean_image(
        data,
        max_bytes=settings.media_max_bytes,
        max_pixels=settings.media_max_pixels,
        thumb_px=settings.thumbnail_px,
    )
    media_id = uuid.uuid4()
    key, thumb_key = cleaned.keys(media_id)
    storage.put(key, cleaned.content, cleaned.content_type)
    storage.put(thumb_key, cleaned.thumbnail, cleaned.thumbnail_content_type)
    media = Media(
        id=media_id,
        uploader_id=uploader.id,
        content_type=cleaned.content_type,
        byte_size=len(cleaned.content),
        width=cleaned.width,
        height=cleaned.height,
        storage_key=key,
        thumb_key=thumb_key,
    )
    try:
        with db.transaction() as session:
            session.add(media)
    except Exception:  # removes the orphan files, then re-raises
        # Nothing half-written: without its row the stored files would be orphans.
        storage.delete(key)
        storage.delete(thumb_key)
        raise
    return media


def read_photo(
    session: Session,
    storage: MediaStorage,
    viewer: Principal | None,
    media_id: uuid.UUID,
    size: str,
) -> tuple[bytes, str, bool]:
    """A photo for its uploader, staff, or the reporter of the issue it belongs to; else 404.
    A public photo (published news, a party post) for anyone, signed in or not; anyone else
    without a token is asked to sign in (401), so it tells nothing about which photos exist.
    Also says whether the photo is public (it may then be cached by anyone)."""
    media = session.get(Media, media_id)
    if media is not None and media.public:
        key = media.thumb_key if size == "thumb" else media.storage_key
        return storage.get(key), content_type_for_key(key), True
    if viewer is None:
        raise Unauthorized()
    if media is None or not scopes.may_see_media(session, viewer, media):
        raise NotFound("未找到该照片。")
    key = media.thumb_key if size == "thumb" else media.storage_key
    return storage.get(key), content_type_for_key(key), False


# --- the reporter follows up: details (补充说明), urging (催办), withdrawal (撤回) --------------


def _followed_issue(session: Session, principal: Principal, issue_id: uuid.UUID) -> Issue:
    """The caller's report (as reporter, or as the staff member who submitted it), locked."""
    issue = session.scalar(sa.select(Issue).where(Issue.id == issue_id).with_for_update())
    if issue is None or principal.id not in (issue.reporter_id, issue.submitted_by):
        raise NotFound("未找到该事项。")
    return issue


def _require_open(issue: Issue, doing: str) -> None:
    if issue.status not in domain.OPEN_STATES:
        raise Conflict(
            f"该事项当前状态为「{domain.STATES.get(issue.status, issue.status)}」，不能{doing}。",
            code="wrong_state",
            details={"status": issue.status},
        )


def add_details(
    session: Session,
    principal: Principal,
    issue_id: uuid.UUID,
    text: str,
    photo_ids: tuple[uuid.UUID, ...] = (),
) -> IssueStep:
    """补充说明 on an open report, with the caller's own photos; emits ``issue.details_added``."""
    issue = _followed_issue(session, principal, issue_id)
    _require_open(issue, "补充说明")
    if len(set(photo_ids)) != len(photo_ids):
        raise Invalid(details={"photo_ids": ["照片不能重复。"]})
    if photo_ids:
        photos = list(
            session.scalars(sa.select(Media).where(Media.id.in_(photo_ids)).with_for_update())
        )
        usable = {m.id for m in photos if m.uploader_id == principal.id and m.issue_id is None}
        if usable != set(photo_ids):
            raise Invalid(details={"photo_ids": ["只能附上您本人上传、且未用于其他事项的照片。"]})
        for photo in photos:
            photo.issue_id = issue.id
    now = utcnow()
    text = text.strip()
    step = IssueStep(
        issue_id=issue.id,
        kind="issue.details_added",
        title="群众补充说明",
        note=text,
        occurred_at=now,
    )
    session.add(step)
    emit(
        session,
        "issue.details_added",
        {
            "issue_id": issue.id,
            "reporter_id": issue.reporter_id,
            "text": text,
            "photo_ids": [str(p) for p in photo_ids],
            "by": principal.id,
            "added_at": now,
        },
    )
    return step


def urge(
    session: Session,
    settings: IntakeSettings,
    principal: Principal,
    issue_id: uuid.UUID,
    text: str | None = None,
) -> Issue:
    """催办 an open report, at most once per ``URGE_INTERVAL_HOURS``; emits ``issue.urged``."""
    issue = _followed_issue(session, principal, issue_id)
    _require_open(issue, "催办")
    now = utcnow()
    interval = timedelta(hours=settings.urge_interval_hours)
    again_at = domain.next_urge_at(issue.last_urged_at, interval)
    if again_at is not None and now < again_at:
        raise TooManyRequests(
            f"您已催办过该事项，工作人员正在处理；请于 {local_text(again_at)} 之后再催办。",
            code="urged_recently",
            retry_after=max(1, int((again_at - now).total_seconds()) + 1),
        )
    issue.urge_count = (issue.urge_count or 0) + 1
    issue.last_urged_at = now
    text = (text or "").strip() or None
    session.add(
        IssueStep(
            issue_id=issue.id,
            kind="issue.urged",
            title=f"群众催办（第 {issue.urge_count} 次）",
            note=text,
            occurred_at=now,
        )
    )
    emit(
        session,
        "issue.urged",
        {
            "issue_id": issue.id,
            "reporter_id": issue.reporter_id,
            "text": text,
            "urge_count": issue.urge_count,
            "urged_at": now,
            "by": principal.id,
        },
    )
    return issue


def withdraw(session: Session, principal: Principal, issue_id: uuid.UUID, reason: str) -> Issue:
    """撤回 a report nobody has been given yet; emits ``issue.withdrawn``.

    If dispatch assigned it meanwhile, dispatch keeps it (and says so): its events then bring
    this view back to the state it holds.
    """
    issue = _followed_issue(session, principal, issue_id)
    if issue.status != "reported":
        raise Conflict(
            "该事项已交办或已有处理结果，不能撤回；如有新情况，请补充说明。",
            code="not_withdrawable",
            details={"status": issue.status},
        )
    now = utcnow()
    reason = reason.strip()
    issue.status = "withdrawn"
    session.add(
        IssueStep(
            issue_id=issue.id,
            kind="issue.withdrawn",
            title="群众已撤回诉求",
            note=reason,
            occurred_at=now,
        )
    )
    emit(
        session,
        "issue.withdrawn",
        {
            "issue_id": issue.id,
            "reporter_id": issue.reporter_id,
            "text": reason,
            "withdrawn_at": now,
            "by": principal.id,
        },
    )
    return issue


# --- the resident's contact phone (for callbacks) -----------------------------------------------


def my_phone(session: Session, principal: Principal) -> User:
    user = session.get(User, principal.id)
    if user is None:
        raise NotFound("未找到该账号。")
    return user


def confirm_contact_phone(
    db: Database,
    wechat_phone: Any,
    principal: Principal,
    *,
    code: str | None = None,
    phone: str | None = None,
) -> User:
    """The caller's contact phone from WeChat's ``getPhoneNumber`` code (asked before any
    transaction opens), or as typed in and confirmed."""
    source = "typed"
    if code:
        phone, source = wechat_phone.phone_number(code), "wechat"
    with db.transaction() as session:
        return set_contact_phone(session, principal, phone or "", source=source)


def set_contact_phone(session: Session, principal: Principal, phone: str, *, source: str) -> User:
    """Keep the caller's contact phone (typed in and confirmed, or confirmed by WeChat); later
    reports carry it to dispatch, where only supervisors see it, for a phone callback."""
    number = domain.mobile_number(phone)
    if number is None:
        raise Invalid(details={"phone": ["请填写正确的 11 位手机号码。"]})
    user = session.get(User, principal.id, with_for_update=True)
    if user is None:
        raise NotFound("未找到该账号。")
    user.contact_phone = number
    user.contact_phone_source = source
    user.contact_phone_confirmed_at = utcnow()
    return user
