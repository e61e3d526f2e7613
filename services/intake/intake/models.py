"""Intake's tables: accounts, villages (from dispatch), photos, reports and their read model."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.db import UTCDateTime, plumbing_tables, utcnow


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict: sa.JSON, list: sa.JSON}


outbox, processed_events = plumbing_tables(Base.metadata)


class User(Base):
    """A resident (by WeChat openid) or a staff member (by username and password)."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    username: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    openid: Mapped[str | None] = mapped_column(sa.String(128), unique=True)
    unionid: Mapped[str | None] = mapped_column(sa.String(128))
    name: Mapped[str] = mapped_column(sa.String(64), default="")
    phone: Mapped[str | None] = mapped_column(sa.String(32))
    roles: Mapped[list] = mapped_column(default=list)
    village_id: Mapped[uuid.UUID | None]
    active: Mapped[bool] = mapped_column(default=True)
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    # Grows by one with every ``account.upserted``: consumers ignore an older snapshot.
    revision: Mapped[int] = mapped_column(default=0, server_default="0")
    # The last change of password, roles or active: access and refresh tokens issued before it
    # are refused (here and, from ``account.upserted``, by every other service).
    tokens_valid_after: Mapped[datetime | None]
    # A resident's contact phone for callbacks (回访), confirmed by WeChat (``wechat``) or typed
    # in and confirmed (``typed``); never in ``account.upserted``: only the reports carry it.
    contact_phone: Mapped[str | None] = mapped_column(sa.String(32))
    contact_phone_source: Mapped[str | None] = mapped_column(sa.String(16))
    contact_phone_confirmed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class RefreshToken(Base):
    """One refresh token (only its SHA-256 is kept). Each use rotates it: the used one is marked,
    a new one of the same ``family_id`` is handed out; a used one shown again revokes the family.
    """

    __tablename__ = "refresh_tokens"
    # Kept a day past expiry (a used one must stay until then to catch its reuse), then purged.
    __table_args__ = {"info": {"retention": ("expires_at", timedelta(days=1))}}

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(index=True)
    family_id: Mapped[uuid.UUID] = mapped_column(index=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class LoginFailure(Base):
    """Failed staff logins of one username from one client address, and how long that address
    must wait before its next try for that username."""

    __tablename__ = "login_failures"
    # Purged once even the longest wait (LOGIN_DELAY_MAX_SECONDS ≤ 7 days) has run out.
    __table_args__ = {"info": {"retention": ("last_failed_at", timedelta(days=8))}}

    username: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    address: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    last_failed_at: Mapped[datetime | None] = mapped_column(index=True)
    blocked_until: Mapped[datetime | None]


class Village(Base):
    """The township's villages, kept from dispatch's ``village.upserted`` (or demo data)."""

    __tablename__ = "villages"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    area_leader_id: Mapped[uuid.UUID | None]
    # dispatch's ``revision`` of the last applied ``village.upserted`` (None: demo data, or older).
    revision: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Media(Base):
    """A photo taken on the phone: the cleaned image and its thumbnail in storage."""

    __tablename__ = "media"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    uploader_id: Mapped[uuid.UUID] = mapped_column(index=True)
    content_type: Mapped[str] = mapped_column(sa.String(32))
    byte_size: Mapped[int]
    width: Mapped[int]
    height: Mapped[int]
    storage_key: Mapped[str] = mapped_column(sa.String(255))
    thumb_key: Mapped[str] = mapped_column(sa.String(255))
    issue_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    # Shown to anyone, signed in or not: a photo of published news or a party post (feed's
    # ``news.published`` / ``post.published``), never one attached to a report.
    public: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Issue(Base):
    """A resident's report and the resident's view of its handling (read model of dispatch)."""

    __tablename__ = "issues"
    __table_args__ = (
        sa.Index("ix_issues_reporter_reported", "reporter_id", "reported_at", "id"),
        sa.Index("ix_issues_reported", "reported_at", "id"),
        sa.Index("ix_issues_submitted_by", "submitted_by", "reported_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    ticket_no: Mapped[str] = mapped_column(sa.String(32), unique=True)
    reporter_id: Mapped[uuid.UUID]
    source: Mapped[str] = mapped_column(sa.String(16), default="miniprogram")
    # The staff member who reported on the resident's behalf (代办/帮办); None: the reporter.
    submitted_by: Mapped[uuid.UUID | None]
    urge_count: Mapped[int] = mapped_column(default=0, server_default="0")
    last_urged_at: Mapped[datetime | None]
    contact_name: Mapped[str | None] = mapped_column(sa.String(64))
    contact_phone: Mapped[str | None] = mapped_column(sa.String(32))
    category: Mapped[str] = mapped_column(sa.String(32))
    description: Mapped[str] = mapped_column(sa.Text)
    village_id: Mapped[uuid.UUID]
    address: Mapped[str | None] = mapped_column(sa.String(255))
    lat: Mapped[float | None]
    lon: Mapped[float | None]
    photo_ids: Mapped[list] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(sa.String(16), default="reported")
    level: Mapped[str] = mapped_column(sa.String(16), default="grid")
    assignee_id: Mapped[uuid.UUID | None]
    assignee_name: Mapped[str | None] = mapped_column(sa.String(64))
    # The leader of the grid it was assigned to (``issue.assigned``): they may read it here too.
    grid_leader_id: Mapped[uuid.UUID | None]
    # Who holds it now in dispatch (a department's members, the level's handler, the worker):
    # from the snapshot, so that a county department can read the report it was referred.
    holder_ids: Mapped[list] = mapped_column(default=list, server_default="[]")
    due_at: Mapped[datetime | None]
    resolution_note: Mapped[str | None] = mapped_column(sa.Text)
    resolution_photo_ids: Mapped[list] = mapped_column(default=list)
    resolved_at: Mapped[datetime | None]
    resolution_count: Mapped[int] = mapped_column(default=0)
    reject_reason: Mapped[str | None] = mapped_column(sa.Text)
    # Rejected as a duplicate of this report (from ``issue.rejected``): the reporter follows it.
    duplicate_of_id: Mapped[uuid.UUID | None]
    duplicate_of_ticket_no: Mapped[str | None] = mapped_column(sa.String(32))
    rating: Mapped[str | None] = mapped_column(sa.String(24))
    closed_at: Mapped[datetime | None]
    state_changed_at: Mapped[datetime | None]
    # dispatch's ``issue_version`` of the snapshot applied last; an older one is not applied.
    dispatch_version: Mapped[int | None]
    reported_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    steps: Mapped[list[IssueStep]] = relationship(
        back_populates="issue", order_by="IssueStep.occurred_at", cascade="all, delete-orphan"
    )


class IssueStep(Base):
    """One line of the timeline the reporter sees (受理, 交办, 办理中, 升级, 办结, ...)."""

    __tablename__ = "issue_steps"
    __table_args__ = (sa.Index("ix_issue_steps_issue", "issue_id", "occurred_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    issue_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("issues.id", ondelete="CASCADE"))
    event_id: Mapped[uuid.UUID | None]
    kind: Mapped[str] = mapped_column(sa.String(40))
    title: Mapped[str] = mapped_column(sa.String(120))
    note: Mapped[str | None] = mapped_column(sa.Text)
    actor_name: Mapped[str | None] = mapped_column(sa.String(64))
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)

    issue: Mapped[Issue] = relationship(back_populates="steps")


class Rating(Base):
    """The reporter's verdict on one resolution (once per resolution)."""

    __tablename__ = "ratings"
    __table_args__ = (sa.UniqueConstraint("issue_id", "resolution_no"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    issue_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("issues.id", ondelete="CASCADE"))
    resolution_no: Mapped[int]
    rating: Mapped[str] = mapped_column(sa.String(24))
    comment: Mapped[str | None] = mapped_column(sa.Text)
    rated_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyRecord(Base):
    """What a POST with an ``Idempotency-Key`` answered, so a retry gets the same answer."""

    __tablename__ = "idempotency_records"
    __table_args__ = (sa.UniqueConstraint("user_id", "key"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID]
    key: Mapped[str] = mapped_column(sa.String(128))
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    status_code: Mapped[int]
    response: Mapped[dict]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TicketCounter(Base):
    """The last ticket sequence handed out on one day (Asia/Shanghai)."""

    __tablename__ = "ticket_counters"

    day: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
    last: Mapped[int] = mapped_column(default=0)
