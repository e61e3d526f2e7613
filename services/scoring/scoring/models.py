"""Scoring's tables: people and villages known from events, its own read model of issues and
their resolutions, the rules (versioned), the append-only points ledger and the totals per user
and period that the leaderboard, KPIs and assessment read.

The ledger is never updated or deleted; ``score_totals`` is kept in the same transaction as each
ledger entry and can be recomputed from the ledger (``python -m scoring rebuild``).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime, plumbing_tables, utcnow


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict: sa.JSON, list: sa.JSON}


outbox, processed_events = plumbing_tables(Base.metadata)


class Person(Base):
    """A person as scoring needs them: name, roles, village (``account.upserted``) and the grid
    they were last assigned work in (``issue.assigned``: dispatch's grid of the assignee)."""

    __tablename__ = "people"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), default="")
    roles: Mapped[list] = mapped_column(default=list)
    village_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    active: Mapped[bool] = mapped_column(default=True)
    # Shown on the boards: an active grid worker or grid leader (never residents).
    on_board: Mapped[bool] = mapped_column(default=False)
    # False for a placeholder made from an issue event before the account's own event came.
    account_known: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    revision: Mapped[int | None]
    tokens_valid_after: Mapped[datetime | None]
    grid_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    grid_leader_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Village(Base):
    """A village and its area leader (``village.upserted``)."""

    __tablename__ = "villages"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), default="")
    area_leader_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    revision: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Issue(Base):
    """Scoring's read model of a work item. Snapshot fields are applied only from an event whose
    ``issue_version`` is newer than ``version``; points come from each event itself."""

    __tablename__ = "issues"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    ticket_no: Mapped[str | None] = mapped_column(sa.String(32))
    version: Mapped[int] = mapped_column(default=0)
    state: Mapped[str | None] = mapped_column(sa.String(16))
    level: Mapped[str | None] = mapped_column(sa.String(16))
    assignee_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    grid_id: Mapped[uuid.UUID | None]
    village_id: Mapped[uuid.UUID | None]
    grid_leader_id: Mapped[uuid.UUID | None]
    difficulty: Mapped[int | None]
    due_at: Mapped[datetime | None]
    assigned_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    resolution_no: Mapped[int | None]
    rating: Mapped[str | None] = mapped_column(sa.String(24))
    reopen_count: Mapped[int] = mapped_column(default=0)
    callback_passed: Mapped[bool | None]
    overdue_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Assignment(Base):
    """One ``issue.assigned``: the fact behind the response rate (started within the limit)."""

    __tablename__ = "assignments"
    __table_args__ = (sa.Index("ix_assignments_issue_assignee", "issue_id", "assignee_id"),)

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    issue_id: Mapped[uuid.UUID]
    assignee_id: Mapped[uuid.UUID] = mapped_column(index=True)
    assigned_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    responded: Mapped[bool] = mapped_column(default=False)
    period_month: Mapped[str] = mapped_column(sa.String(7), index=True)


class Resolution(Base):
    """One resolution of an issue (``issue.resolved``), whoever resolved it, and its points."""

    __tablename__ = "resolutions"

    issue_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    resolution_no: Mapped[int] = mapped_column(primary_key=True)
    resolver_id: Mapped[uuid.UUID] = mapped_column(index=True)
    difficulty: Mapped[int | None]
    due_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime]
    on_time: Mapped[bool]
    points: Mapped[int] = mapped_column(default=0)
    rating: Mapped[str | None] = mapped_column(sa.String(24))
    reopened: Mapped[bool] = mapped_column(default=False)
    clawed_back: Mapped[int] = mapped_column(default=0)


class Rule(Base):
    """One version of a scoring rule: from ``effective_from`` (Asia/Shanghai date) on, until the
    next version's date. Versions are only added, so past months keep the rule they had."""

    __tablename__ = "rules"
    __table_args__ = (
        sa.UniqueConstraint("code", "version"),
        sa.UniqueConstraint("code", "effective_from"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    code: Mapped[str] = mapped_column(sa.String(40))
    version: Mapped[int]
    points: Mapped[int]
    effective_from: Mapped[date] = mapped_column(sa.Date)
    note: Mapped[str | None] = mapped_column(sa.String(200))
    changed_by: Mapped[uuid.UUID | None]
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class PointsEntry(Base):
    """The points ledger, append-only: one row per (source event, rule); a correction is a new
    row. ``period_month`` is the Asia/Shanghai month of ``occurred_at``."""

    __tablename__ = "points_ledger"
    __table_args__ = (
        sa.UniqueConstraint("source_event_id", "rule_code", name="uq_points_event_rule"),
        sa.Index("ix_points_user_time", "user_id", "occurred_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID]
    points: Mapped[int]
    rule_code: Mapped[str] = mapped_column(sa.String(40))
    rule_version: Mapped[int]
    issue_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    ticket_no: Mapped[str | None] = mapped_column(sa.String(32))
    resolution_no: Mapped[int | None]
    source_event_id: Mapped[uuid.UUID]
    occurred_at: Mapped[datetime]
    period_month: Mapped[str] = mapped_column(sa.String(7), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScoreTotal(Base):
    """Totals of one user in one period (``month:2026-11``, ``quarter:2026-Q4``, ``year:2026``,
    ``all``), kept with each ledger entry: what the boards, KPIs and assessment read."""

    __tablename__ = "score_totals"
    __table_args__ = (
        sa.Index(
            "ix_score_totals_board",
            "period",
            sa.text("points DESC"),
            sa.text("resolved_on_time DESC"),
            "user_id",
        ),
    )

    period: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    points: Mapped[int] = mapped_column(default=0)
    resolved: Mapped[int] = mapped_column(default=0)
    resolved_on_time: Mapped[int] = mapped_column(default=0)
    rated: Mapped[int] = mapped_column(default=0)
    satisfied: Mapped[int] = mapped_column(default=0)
    reopened: Mapped[int] = mapped_column(default=0)
    callbacks: Mapped[int] = mapped_column(default=0)
    callbacks_passed: Mapped[int] = mapped_column(default=0)
    assigned: Mapped[int] = mapped_column(default=0)
    responded: Mapped[int] = mapped_column(default=0)
    entries: Mapped[int] = mapped_column(default=0)


class BoardPublication(Base):
    """A monthly 红黑榜 once published (so the worker publishes each month once)."""

    __tablename__ = "board_publications"

    period: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    published_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_by: Mapped[str | None] = mapped_column(sa.String(64))
