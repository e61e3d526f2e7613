"""Dispatch's tables: organisation (villages, grids, departments), staff known from intake's
events, work items with their history, deadline and digest marks, the hard-problems ledger and
callbacks.

The partial indexes name the scheduler's and the queue's questions exactly, so each of them reads
only the rows that need work, whatever the table's size.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.db import UTCDateTime, plumbing_tables, utcnow

WORKING = "state IN ('assigned', 'in_progress', 'reopened')"
OPEN = "state IN ('reported', 'assigned', 'in_progress', 'reopened')"


def _partial(name: str, *columns: str, where: str) -> sa.Index:
    return sa.Index(name, *columns, postgresql_where=sa.text(where), sqlite_where=sa.text(where))


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict: sa.JSON, list: sa.JSON}


outbox, processed_events = plumbing_tables(Base.metadata)


class Staff(Base):
    """A person as dispatch needs to know them, kept from intake's ``account.upserted``."""

    __tablename__ = "staff"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), default="")
    phone: Mapped[str | None] = mapped_column(sa.String(32))
    roles: Mapped[list] = mapped_column(default=list)
    village_id: Mapped[uuid.UUID | None]
    active: Mapped[bool] = mapped_column(default=True)
    # The account's ``revision`` in intake's last applied ``account.upserted``; None: not known
    # (a row from before revisions, or made here), so any snapshot is taken.
    revision: Mapped[int | None]
    # The account's last password, role or status change: tokens issued before it are refused.
    tokens_valid_after: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Village(Base):
    """An administrative village and its area leader (包片领导)."""

    __tablename__ = "villages"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    code: Mapped[str | None] = mapped_column(sa.String(16), unique=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    area_leader_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    # Grows by one with each ``village.upserted``, so that consumers drop an older snapshot.
    revision: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Grid(Base):
    """A grid inside a village: one grid leader (网格长) and its grid workers (网格员)."""

    __tablename__ = "grids"
    __table_args__ = (sa.UniqueConstraint("village_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    code: Mapped[str | None] = mapped_column(sa.String(16), unique=True)
    village_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("villages.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    leader_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    # Loaded with the grid: the answer is dumped after the request's transaction has closed.
    members: Mapped[list[GridMember]] = relationship(
        cascade="all, delete-orphan", order_by="GridMember.added_at", lazy="selectin"
    )


class GridMember(Base):
    """A grid worker's membership of a grid, by user id."""

    __tablename__ = "grid_members"

    grid_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("grids.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True, index=True)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


DEPARTMENT_KINDS: dict[str, str] = {"township": "乡镇分管部门", "county": "县级部门"}


class Department(Base):
    """A township department the admin hands items to (分管部门: 综治办, 农业办, 民政所), or a
    county department hard problems are referred to (县水利局, 县供电公司, ...)."""

    __tablename__ = "departments"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    code: Mapped[str] = mapped_column(sa.String(32), unique=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    # ``township`` or ``county`` (DEPARTMENT_KINDS).
    kind: Mapped[str] = mapped_column(sa.String(16), default="county", server_default="county")
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    # Loaded with the department: the answer is dumped after the request's transaction closed.
    members: Mapped[list[DepartmentMember]] = relationship(
        cascade="all, delete-orphan", order_by="DepartmentMember.added_at", lazy="selectin"
    )


class DepartmentMember(Base):
    """A department's staff member (role ``department_staff``), by user id: they handle the
    department's items."""

    __tablename__ = "department_members"

    department_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("departments.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True, index=True)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class Issue(Base):
    """A resident's report as a work item: who holds it, by when, at which level, in what state."""

    __tablename__ = "issues"
    __table_args__ = (
        sa.CheckConstraint("difficulty IS NULL OR difficulty BETWEEN 1 AND 5", name="difficulty"),
        _partial("ix_issues_queue", "reported_at", "id", where=OPEN),
        _partial("ix_issues_queue_village", "village_id", "reported_at", "id", where=OPEN),
        _partial("ix_issues_queue_category", "category", "reported_at", "id", where=OPEN),
        _partial("ix_issues_tasks", "assignee_id", "due_at", "id", where=WORKING),
        _partial("ix_issues_followed", "follower_id", "due_at", "id", where=WORKING),
        _partial("ix_issues_handled", "handler_id", "due_at", "id", where=OPEN),
        _partial("ix_issues_department", "department_id", "due_at", "id", where=WORKING),
        _partial("ix_issues_remind", "due_at", where=f"{WORKING} AND reminded_at IS NULL"),
        _partial("ix_issues_overdue", "due_at", where=f"{WORKING} AND overdue_at IS NULL"),
        _partial(
            "ix_issues_escalate",
            "due_at",
            where=f"{WORKING} AND overdue_at IS NOT NULL AND overdue_escalated_at IS NULL",
        ),
        _partial("ix_issues_autoclose", "resolved_at", where="state = 'resolved'"),
        _partial(
            "ix_issues_callback_sample",
            "closed_at",
            where="state = 'closed' AND callback_status IS NULL",
        ),
        _partial(
            "ix_issues_callback_pending",
            "closed_at",
            "id",
            where="state = 'closed' AND callback_status = 'pending'",
        ),
        sa.Index("ix_issues_reported_at", "reported_at"),
        sa.Index("ix_issues_village_reported", "village_id", "reported_at"),
        # The statistics' overdue count: an index-only scan over the open work past due.
        sa.Index(
            "ix_issues_overdue_count",
            "due_at",
            postgresql_include=["village_id", "category"],
            postgresql_where=sa.text(WORKING),
            sqlite_where=sa.text(WORKING),
        ),
        # Migration 0009 also adds ``ix_issues_resolve_seconds`` on PostgreSQL: an expression
        # index on EXTRACT(EPOCH FROM resolved_at - reported_at) over resolved and closed items,
        # from which the statistics read a percentile's exact value (dispatch.aggregates).
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    ticket_no: Mapped[str | None] = mapped_column(sa.String(32))
    reporter_id: Mapped[uuid.UUID]
    category: Mapped[str] = mapped_column(sa.String(32))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    village_id: Mapped[uuid.UUID]
    address: Mapped[str | None] = mapped_column(sa.String(255))
    lat: Mapped[float | None]
    lon: Mapped[float | None]
    photo_ids: Mapped[list] = mapped_column(default=list)
    reported_at: Mapped[datetime]
    # The resident's contact for a phone callback: shown to supervisors on the callback list only.
    contact_name: Mapped[str | None] = mapped_column(sa.String(64))
    contact_phone: Mapped[str | None] = mapped_column(sa.String(32))
    # The staff member who reported on the resident's behalf (代办/帮办).
    submitted_by: Mapped[uuid.UUID | None]
    # 催办: how often the resident urged the item, and when last (the holder sees both).
    urge_count: Mapped[int] = mapped_column(default=0, server_default="0")
    last_urged_at: Mapped[datetime | None]

    state: Mapped[str] = mapped_column(sa.String(16), default="reported")
    level: Mapped[str] = mapped_column(sa.String(16), default="grid")
    assignee_id: Mapped[uuid.UUID | None]
    grid_id: Mapped[uuid.UUID | None]
    grid_leader_id: Mapped[uuid.UUID | None]
    handler_id: Mapped[uuid.UUID | None]
    follower_id: Mapped[uuid.UUID | None]
    department_id: Mapped[uuid.UUID | None]
    difficulty: Mapped[int | None]
    due_at: Mapped[datetime | None]
    assigned_at: Mapped[datetime | None]
    assigned_by: Mapped[uuid.UUID | None]
    started_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    resolved_on_time: Mapped[bool | None]
    resolution_note: Mapped[str | None] = mapped_column(sa.Text)
    resolution_photo_ids: Mapped[list] = mapped_column(default=list)
    resolution_count: Mapped[int] = mapped_column(default=0)
    closed_at: Mapped[datetime | None]
    rating: Mapped[str | None] = mapped_column(sa.String(24))
    reject_reason: Mapped[str | None] = mapped_column(sa.Text)
    # Rejected as a duplicate of this (open or done) report of the same village.
    duplicate_of_id: Mapped[uuid.UUID | None]
    ever_unsatisfied: Mapped[bool] = mapped_column(default=False)
    # NULL: not yet sampled; pending / not_sampled / passed / failed.
    callback_status: Mapped[str | None] = mapped_column(sa.String(16))
    reminded_at: Mapped[datetime | None]
    overdue_at: Mapped[datetime | None]
    overdue_escalated_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(default=1)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __mapper_args__ = {"version_id_col": version}


class IssueHistory(Base):
    """Every step taken on an item: who, when, from and to which state and level, and why."""

    __tablename__ = "issue_history"
    __table_args__ = (sa.Index("ix_issue_history_issue", "issue_id", "occurred_at", "seq"),)

    seq: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    issue_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("issues.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(sa.String(24))
    from_state: Mapped[str | None] = mapped_column(sa.String(16))
    to_state: Mapped[str] = mapped_column(sa.String(16))
    from_level: Mapped[str | None] = mapped_column(sa.String(16))
    to_level: Mapped[str] = mapped_column(sa.String(16))
    actor_id: Mapped[uuid.UUID | None]
    actor_name: Mapped[str | None] = mapped_column(sa.String(64))
    note: Mapped[str | None] = mapped_column(sa.Text)
    details: Mapped[dict] = mapped_column(default=dict)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeadlineMark(Base):
    """That a reminder, an overdue flag or an escalation was sent for one deadline: exactly once,
    however often and in how many copies the scheduler runs (the key is the guarantee)."""

    __tablename__ = "deadline_marks"

    issue_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("issues.id", ondelete="CASCADE"), primary_key=True
    )
    due_at: Mapped[datetime] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    marked_at: Mapped[datetime] = mapped_column(default=utcnow)


class DigestMark(Base):
    """That one day's digest of a kind (``callbacks.pending``) was sent: exactly once per
    Asia/Shanghai day, however often and in how many copies the scheduler runs (the key is the
    guarantee)."""

    __tablename__ = "digest_marks"

    kind: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    day: Mapped[date] = mapped_column(primary_key=True)
    marked_at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerEntry(Base):
    """An item in the hard-problems ledger (疑难问题台账), referred to a county department."""

    __tablename__ = "ledger_entries"
    __table_args__ = (sa.Index("ix_ledger_referred", "referred_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    ledger_no: Mapped[str] = mapped_column(sa.String(32), unique=True)
    issue_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("issues.id"), unique=True)
    department_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("departments.id"), index=True)
    reason: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16), default="referred")
    referred_at: Mapped[datetime] = mapped_column(default=utcnow)
    referred_by: Mapped[uuid.UUID | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    department: Mapped[Department] = relationship(lazy="selectin")
    progress: Mapped[list[LedgerProgress]] = relationship(
        order_by="LedgerProgress.created_at", cascade="all, delete-orphan", lazy="selectin"
    )


class LedgerProgress(Base):
    """A progress note on a ledger item (what the department did, when)."""

    __tablename__ = "ledger_progress"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    entry_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("ledger_entries.id", ondelete="CASCADE"), index=True
    )
    text: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str | None] = mapped_column(sa.String(16))
    author_id: Mapped[uuid.UUID | None]
    author_name: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerCounter(Base):
    """The last ledger number handed out in one year (Asia/Shanghai)."""

    __tablename__ = "ledger_counters"

    year: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last: Mapped[int] = mapped_column(default=0)


class Callback(Base):
    """A supervisor's follow-up (回头看) on a closed item, by phone or visit."""

    __tablename__ = "callbacks"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    issue_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("issues.id", ondelete="CASCADE"), index=True
    )
    supervisor_id: Mapped[uuid.UUID]
    method: Mapped[str] = mapped_column(sa.String(8))
    lawful: Mapped[bool]
    implemented: Mapped[bool]
    accepted: Mapped[bool]
    passed: Mapped[bool]
    notes: Mapped[str | None] = mapped_column(sa.Text)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class IssueStatsCount(Base):
    """Running count of issues per (village, category, state, level), with how many carry a
    rating and how many are satisfied; kept by ``dispatch.aggregates`` with each issue change."""

    __tablename__ = "issue_stats_counts"

    village_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    category: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    level: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    n: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    rated: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    satisfied: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class IssueStatsResolveTime(Base):
    """How many resolved or closed issues took a resolve time (report to resolution) in each
    bucket, per (village, category) and rolled up (``dispatch.aggregates.ANY_*``)."""

    __tablename__ = "issue_stats_resolve_times"

    village_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    category: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    bucket: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(sa.BigInteger, default=0)


# The hook that keeps the two tables above, registered wherever the models are used.
from dispatch import aggregates  # noqa: E402, F401
