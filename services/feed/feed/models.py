"""Feed's tables: people and villages known from events, news articles with their edit history,
party posts with their likes, comments on both, and the moderation actions taken on them.

Photos are intake's media ids; feed keeps the ids only (intake serves the images and makes them
public once ``news.published`` or ``post.published`` names them).
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
    """A person as feed needs them: name, roles, village and status (``account.upserted``)."""

    __tablename__ = "people"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), default="")
    roles: Mapped[list] = mapped_column(default=list)
    village_id: Mapped[uuid.UUID | None]
    active: Mapped[bool] = mapped_column(default=True)
    # False for a placeholder (a demo author) until the account's own event comes.
    account_known: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    revision: Mapped[int | None]
    tokens_valid_after: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Village(Base):
    """A village's name (``village.upserted``)."""

    __tablename__ = "villages"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), default="")
    revision: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Article(Base):
    """A news article (魅力沙口集). ``body_html`` is the Markdown rendered and sanitised when it
    was saved, so a read never renders. ``version`` grows with each change (the ETag's base).
    ``views`` is added to in batches by the web processes (``services.ViewCounter``)."""

    __tablename__ = "articles"
    __table_args__ = (
        # The public list: pinned first, then newest, in one index scan (keyset).
        sa.Index(
            "ix_articles_public",
            sa.text("pinned DESC"),
            sa.text("published_at DESC"),
            sa.text("id DESC"),
            postgresql_where=sa.text("state = 'published'"),
            sqlite_where=sa.text("state = 'published'"),
        ),
        sa.Index(
            "ix_articles_public_category",
            "category",
            sa.text("pinned DESC"),
            sa.text("published_at DESC"),
            sa.text("id DESC"),
            postgresql_where=sa.text("state = 'published'"),
            sqlite_where=sa.text("state = 'published'"),
        ),
        # The editors' desk (every state, newest change first) and the scheduled ones due.
        sa.Index("ix_articles_desk", "updated_at", "id"),
        sa.Index(
            "ix_articles_due",
            "publish_at",
            postgresql_where=sa.text("state = 'scheduled'"),
            sqlite_where=sa.text("state = 'scheduled'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(sa.String(200))
    summary: Mapped[str | None] = mapped_column(sa.String(400))
    body_markdown: Mapped[str] = mapped_column(sa.Text, default="")
    body_html: Mapped[str] = mapped_column(sa.Text, default="")
    # Photos the body shows (intake media ids), kept when the body is saved.
    body_media_ids: Mapped[list] = mapped_column(default=list)
    cover_media_id: Mapped[uuid.UUID | None]
    category: Mapped[str] = mapped_column(sa.String(16))
    state: Mapped[str] = mapped_column(sa.String(16), default="draft", index=True)
    pinned: Mapped[bool] = mapped_column(default=False)
    author_id: Mapped[uuid.UUID] = mapped_column(index=True)
    author_name: Mapped[str] = mapped_column(sa.String(64), default="")
    publish_at: Mapped[datetime | None]
    published_at: Mapped[datetime | None]
    published_by: Mapped[uuid.UUID | None]
    archived_at: Mapped[datetime | None]
    views: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    comment_count: Mapped[int] = mapped_column(default=0, server_default="0")
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ArticleChange(Base):
    """The edit history: one row per change of an article (written, edited, submitted, returned,
    scheduled, published, archived), with who, when, why, and the text as it then stood."""

    __tablename__ = "article_history"
    __table_args__ = (sa.UniqueConstraint("article_id", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    article_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("articles.id", ondelete="CASCADE"))
    version: Mapped[int]
    action: Mapped[str] = mapped_column(sa.String(16))
    state: Mapped[str] = mapped_column(sa.String(16))
    actor_id: Mapped[uuid.UUID | None]
    actor_name: Mapped[str] = mapped_column(sa.String(64), default="")
    note: Mapped[str | None] = mapped_column(sa.String(400))
    title: Mapped[str] = mapped_column(sa.String(200))
    body_markdown: Mapped[str] = mapped_column(sa.Text, default="")
    category: Mapped[str] = mapped_column(sa.String(16))
    cover_media_id: Mapped[uuid.UUID | None]
    pinned: Mapped[bool] = mapped_column(default=False)
    publish_at: Mapped[datetime | None]
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Post(Base):
    """A post of the party-building feed (党建朋友圈), or the township's monthly 红黑榜
    (``board_period`` set, one per month). ``like_count`` and ``comment_count`` move in the same
    statement as the like or comment that changes them."""

    __tablename__ = "posts"
    __table_args__ = (
        sa.Index(
            "ix_posts_feed",
            sa.text("published_at DESC"),
            sa.text("id DESC"),
            postgresql_where=sa.text("state = 'published'"),
            sqlite_where=sa.text("state = 'published'"),
        ),
        sa.Index(
            "ix_posts_village",
            "village_id",
            sa.text("published_at DESC"),
            sa.text("id DESC"),
            postgresql_where=sa.text("state = 'published'"),
            sqlite_where=sa.text("state = 'published'"),
        ),
        sa.Index(
            "ix_posts_tag",
            "tag",
            sa.text("published_at DESC"),
            sa.text("id DESC"),
            postgresql_where=sa.text("state = 'published'"),
            sqlite_where=sa.text("state = 'published'"),
        ),
        sa.Index(
            "ix_posts_village_tag",
            "village_id",
            "tag",
            sa.text("published_at DESC"),
            sa.text("id DESC"),
            postgresql_where=sa.text("state = 'published'"),
            sqlite_where=sa.text("state = 'published'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # None for the township's own posts (the 红黑榜).
    author_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    author_name: Mapped[str] = mapped_column(sa.String(64), default="")
    text: Mapped[str] = mapped_column(sa.Text)
    photo_ids: Mapped[list] = mapped_column(default=list)
    tag: Mapped[str] = mapped_column(sa.String(16))
    village_id: Mapped[uuid.UUID | None]
    # published, hidden (by an admin, with a reason) or deleted (by its author).
    state: Mapped[str] = mapped_column(sa.String(16), default="published")
    board_period: Mapped[str | None] = mapped_column(sa.String(16), unique=True)
    board: Mapped[dict | None]
    like_count: Mapped[int] = mapped_column(default=0, server_default="0")
    comment_count: Mapped[int] = mapped_column(default=0, server_default="0")
    hidden_reason: Mapped[str | None] = mapped_column(sa.String(400))
    published_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PostLike(Base):
    """One like of one person on one post: the primary key makes a second like a no-op."""

    __tablename__ = "post_likes"

    post_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Comment(Base):
    """A comment on a published article or a post: ``visible`` at once, ``pending`` when it
    matched the moderation word list (``held_words``), ``hidden`` by an admin with a reason."""

    __tablename__ = "comments"
    __table_args__ = (
        sa.CheckConstraint(
            "(article_id IS NULL) <> (post_id IS NULL)", name="ck_comments_one_target"
        ),
        sa.Index("ix_comments_article", "article_id", "state", "created_at", "id"),
        sa.Index("ix_comments_post", "post_id", "state", "created_at", "id"),
        sa.Index("ix_comments_queue", "state", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    article_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("articles.id", ondelete="CASCADE")
    )
    post_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("posts.id", ondelete="CASCADE"))
    author_id: Mapped[uuid.UUID] = mapped_column(index=True)
    author_name: Mapped[str] = mapped_column(sa.String(64), default="")
    text: Mapped[str] = mapped_column(sa.Text)
    state: Mapped[str] = mapped_column(sa.String(16), default="visible")
    held_words: Mapped[list] = mapped_column(default=list)
    moderated_by: Mapped[uuid.UUID | None]
    moderated_at: Mapped[datetime | None]
    moderation_reason: Mapped[str | None] = mapped_column(sa.String(400))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModerationAction(Base):
    """Each hide or restore of a comment or post by an admin, with the reason (kept for good)."""

    __tablename__ = "moderation_actions"
    __table_args__ = (sa.Index("ix_moderation_target", "target_kind", "target_id", "at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    target_kind: Mapped[str] = mapped_column(sa.String(16))
    target_id: Mapped[uuid.UUID]
    action: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str] = mapped_column(sa.String(400))
    actor_id: Mapped[uuid.UUID]
    actor_name: Mapped[str] = mapped_column(sa.String(64), default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)
