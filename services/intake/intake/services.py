"""Intake's use cases for reports: one function per thing a resident or staff member does."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from intake import domain
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
from shared.auth import STAFF_ROLES, Principal
from shared.clock import utcnow
from shared.db import Database, after_commit
from shared.errors import Conflict, Invalid, NotFound
from shared.events import emit
from shared.pagination import keyset_page

ISSUES_REPORTED = Counter(
    "issues_reported_total", "Reports stored (counted once committed)", ["category"]
)


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


def next_ticket_seq(session: Session, day: str) -> int:
    """Take the next number of the day atomically (safe with many web workers)."""
    dialect = session.get_bind().dialect.name
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(TicketCounter)
    stmt = (
        insert.values(day=day, last=1)
        .on_conflict_do_update(
            index_elements=[TicketCounter.day], set_={"last": TicketCounter.last + 1}
        )
        .returning(TicketCounter.last)
    )
    return session.execute(stmt).scalar_one()


def _check_report(session: Session, reporter_id: uuid.UUID, report: NewReport) -> list[Media]:
    errors: dict[str, list[str]] = {}
    if report.category not in domain.CATEGORIES:
        errors["category"] = ["未知的事项类别。"]
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


def report_issue(
    session: Session, settings: IntakeSettings, reporter_id: uuid.UUID, report: NewReport
) -> Issue:
    """Store a report and its ``issue.reported`` event in the caller's transaction."""
    photos = _check_report(session, reporter_id, report)
    now = utcnow()
    issue = Issue(
        id=uuid.uuid4(),
        ticket_no=domain.ticket_number(
            settings.ticket_prefix, now, next_ticket_seq(session, domain.shanghai_day(now))
        ),
        reporter_id=reporter_id,
        source=report.source,
        contact_name=report.contact_name,
        contact_phone=report.contact_phone,
        category=report.category,
        description=report.description.strip(),
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
    session.add(
        IssueStep(
            issue_id=issue.id, kind="issue.reported", title="已受理：诉求已提交", occurred_at=now
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
        },
    )
    after_commit(session, ISSUES_REPORTED.labels(issue.category).inc)
    return issue


def body_fingerprint(body: Any) -> str:
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, ensure_ascii=False, default=str).encode()
    ).hexdigest()


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def report_issue_once(
    db: Database,
    settings: IntakeSettings,
    reporter_id: uuid.UUID,
    report: NewReport,
    *,
    idempotency_key: str | None,
    fingerprint: str,
    render: Any,
) -> Answer:
    """``report_issue`` honouring an Idempotency-Key: a retry gets the first answer again."""
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


def _earlier_answer(db: Database, user_id: uuid.UUID, key: str, fingerprint: str) -> Answer | None:
    with db.transaction() as session:
        record = session.scalar(
            sa.select(IdempotencyRecord).where(
                IdempotencyRecord.user_id == user_id, IdempotencyRecord.key == key
            )
        )
        if record is None:
            return None
        if record.request_hash != fingerprint:
            raise Conflict(
                "该 Idempotency-Key 已用于另一项内容不同的提交，请换一个新的键。",
                code="idempotency_key_reused",
            )
        return Answer(record.status_code, record.response)


def visible_issue(session: Session, principal: Principal, issue_id: uuid.UUID) -> Issue:
    """The issue if the caller may see it: its reporter or staff; 404 for anyone else."""
    issue = session.scalar(
        sa.select(Issue).options(selectinload(Issue.steps)).where(Issue.id == issue_id)
    )
    if issue is None or not (issue.reporter_id == principal.id or principal.is_staff):
        raise NotFound("未找到该事项。")
    village = session.get(Village, issue.village_id)
    issue.village_name = village.name if village else None  # type: ignore[attr-defined]
    issue.can_rate = issue.reporter_id == principal.id and _rateable(session, issue)  # type: ignore[attr-defined]
    return issue


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


def my_issues(
    session: Session,
    principal: Principal,
    *,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[Issue], str | None]:
    """The caller's own reports, newest first (已办结事项 and the rest)."""
    stmt = sa.select(Issue).where(Issue.reporter_id == principal.id)
    if status:
        stmt = stmt.where(Issue.status == status)
    return keyset_page(
        session,
        stmt,
        order=[Issue.reported_at.desc(), Issue.id.desc()],
        key=lambda i: [i.reported_at, i.id],
        cursor=cursor,
        limit=limit,
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
    session: Session, storage: MediaStorage, viewer: Principal, media_id: uuid.UUID, size: str
) -> tuple[bytes, str]:
    """A photo for its uploader, staff, or the reporter of the issue it belongs to; else 404."""
    media = session.get(Media, media_id)
    if media is None or not _may_see(session, viewer, media):
        raise NotFound("未找到该照片。")
    key = media.thumb_key if size == "thumb" else media.storage_key
    return storage.get(key), content_type_for_key(key)


def _may_see(session: Session, viewer: Principal, media: Media) -> bool:
    """Uploader; staff for photos of a report or taken by staff (work notes, results); the
    reporter for the photos of their report. A resident's photo not yet in a report stays theirs.
    """
    if media.uploader_id == viewer.id:
        return True
    if viewer.is_staff:
        if media.issue_id is not None:
            return True
        roles = session.scalar(sa.select(User.roles).where(User.id == media.uploader_id)) or []
        return bool(STAFF_ROLES.intersection(roles))
    if media.issue_id is None:
        return False
    reporter = session.scalar(sa.select(Issue.reporter_id).where(Issue.id == media.issue_id))
    return reporter == viewer.id
