"""Notify's tables: people and villages known from events, its read model of issues (who holds
each, for urges), every user's inbox, the deliveries on other channels, preferences, and the
WeChat access token shared by every process.

An inbox row is unique per (event, user): a redelivered event writes nothing twice. A delivery
is unique per (event, user, channel) and moves pending → sent | failed exactly once.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime, plumbing_tables, utcnow


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict: sa.JSON, list: sa.JSON}


outbox, processed_events = plumbing_tables(Base.metadata)


class Person(Base):
    """A person as notify needs them (``account.upserted``): who to tell, and how to reach them."""

    __tablename__ = "people"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), default="")
    roles: Mapped[list] = mapped_column(default=list)
    village_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    phone: Mapped[str | None] = mapped_column(sa.String(32))
    openid: Mapped[str | None] = mapped_column(sa.String(64))
    active: Mapped[bool] = mapped_column(default=True)
    revision: Mapped[int | None]
    tokens_valid_after: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PersonRole(Base):
    """One role of one active person, so "every admin" or "the grid workers of a village" is an
    index lookup however many residents there are (kept with ``people`` by ``upsert_person``)."""

    __tablename__ = "person_roles"

    role: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("people.id", ondelete="CASCADE"), primary_key=True
    )


class Village(Base):
    """A village and its area leader (``village.upserted``)."""

    __tablename__ = "villages"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), default="")
    area_leader_id: Mapped[uuid.UUID | None]
    revision: Mapped[int] = mapped_column(default=0)


class Issue(Base):
    """What a message about an item needs: its ticket, category, village, reporter (from
    ``issue.reported``) and who holds it now (the newest dispatch snapshot, by ``version``)."""

    __tablename__ = "issues"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    ticket_no: Mapped[str | None] = mapped_column(sa.String(32))
    category: Mapped[str | None] = mapped_column(sa.String(32))
    village_id: Mapped[uuid.UUID | None]
    reporter_id: Mapped[uuid.UUID | None]
    version: Mapped[int] = mapped_column(default=0)
    state: Mapped[str | None] = mapped_column(sa.String(16))
    level: Mapped[str | None] = mapped_column(sa.String(16))
    assignee_id: Mapped[uuid.UUID | None]
    grid_leader_id: Mapped[uuid.UUID | None]
    holder_ids: Mapped[list] = mapped_column(default=list)
    due_at: Mapped[datetime | None]


class Notification(Base):
    """One message in one user's inbox, linking to the issue, news or post it is about."""

    __tablename__ = "notifications"
    __table_args__ = (
        sa.UniqueConstraint("event_id", "user_id", name="uq_notifications_event_user"),
        sa.Index("ix_notifications_user_newest", "user_id", "created_at", "id"),
        # The stream's watcher asks "what arrived since" for every user at once.
        sa.Index("ix_notifications_created", "created_at"),
        sa.Index(
            "ix_notifications_user_unread",
            "user_id",
            postgresql_where=sa.text("read_at IS NULL"),
            sqlite_where=sa.text("read_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID]
    event_id: Mapped[uuid.UUID]
    event_type: Mapped[str] = mapped_column(sa.String(48))
    kind: Mapped[str] = mapped_column(sa.String(24))
    title: Mapped[str] = mapped_column(sa.String(64))
    body: Mapped[str] = mapped_column(sa.Text)
    # What the message is about: ``issue`` / ``news`` / ``post`` / ``board`` / ``callbacks``.
    link_type: Mapped[str | None] = mapped_column(sa.String(16))
    link_id: Mapped[str | None] = mapped_column(sa.String(64))
    # The template's variables, kept for the other channels (WeChat fields, SMS parameters).
    variables: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    read_at: Mapped[datetime | None]


class Delivery(Base):
    """One message on one channel beyond the inbox (wechat, sms, webhook) to one user."""

    __tablename__ = "deliveries"
    __table_args__ = (
        sa.UniqueConstraint("event_id", "user_id", "channel", name="uq_deliveries_once"),
        sa.Index(
            "ix_deliveries_due",
            "next_attempt_at",
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        ),
        sa.Index("ix_deliveries_listing", "created_at", "id"),
        sa.Index("ix_deliveries_user", "user_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    notification_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("notifications.id", ondelete="CASCADE"), index=True
    )
    event_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID]
    channel: Mapped[str] = mapped_column(sa.String(16))
    kind: Mapped[str] = mapped_column(sa.String(24))
    # Where it goes: the openid, the phone number or the webhook URL at the time it was made.
    address: Mapped[str] = mapped_column(sa.String(256))
    # ``pending`` → ``sent`` | ``failed``.
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    # Overdue alerts go out in quiet hours; everything else waits for the morning.
    urgent: Mapped[bool] = mapped_column(default=False)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Preference(Base):
    """A user's choices: channels on or off per kind, quiet hours, following the news."""

    __tablename__ = "preferences"

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    # {"assigned": {"wechat": false, "sms": true}, ...}: only what the user changed.
    channels: Mapped[dict] = mapped_column(default=dict)
    quiet_start: Mapped[str | None] = mapped_column(sa.String(5))
    quiet_end: Mapped[str | None] = mapped_column(sa.String(5))
    follow_news: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AccessToken(Base):
    """A provider's credential (WeChat's access_token), fetched once and shared by every process
    through this row: a second process reads it instead of fetching (and invalidating) its own."""

    __tablename__ = "access_tokens"

    name: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    token: Mapped[str] = mapped_column(sa.String(512))
    expires_at: Mapped[datetime]
    fetched_at: Mapped[datetime] = mapped_column(default=utcnow)
