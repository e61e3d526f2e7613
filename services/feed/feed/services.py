"""Feed's use cases: one function per thing a person does (write, submit, publish, archive an
article; post, like, comment; hide and restore), the events it takes in (accounts, villages,
the monthly 红黑榜), and the reads the routes answer with.

Published by feed, each in the transaction of its change: ``news.published`` (``_publish``),
``post.published`` (``publish_post``, ``publish_board``).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from feed import domain
from feed.metrics import (
    COMMENTS,
    COMMENTS_HELD,
    LIKES,
    MODERATION,
    NEWS_PUBLISHED,
    NEWS_VIEWS,
    POSTS_PUBLISHED,
)
from feed.models import (
    Article,
    ArticleChange,
    Comment,
    ModerationAction,
    Person,
    Post,
    PostLike,
    Village,
)
from feed.settings import FeedSettings
from shared.auth import Principal
from shared.clock import utcnow
from shared.db import Database, after_commit, names_by_id
from shared.errors import Conflict, Forbidden, Invalid, NotFound
from shared.events import emit
from shared.pagination import KeysetQuery, keyset_page

log = logging.getLogger("feed.services")

SERVICE = "feed"


def _insert(session: Session, table: Any):
    """INSERT with ON CONFLICT for the session's dialect (PostgreSQL, or SQLite embedded)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


@contextmanager
def _rules() -> Iterator[None]:
    """The domain's refusals as HTTP answers: not allowed → 403, wrong state → 409."""
    try:
        yield
    except domain.NotAllowed as exc:
        raise Forbidden(str(exc), code="not_allowed") from None
    except domain.WrongState as exc:
        raise Conflict(str(exc), code="wrong_state") from None


def _actor(principal: Principal) -> domain.Actor:
    return domain.Actor(principal.id, frozenset(principal.roles))


def _invalid(problems: dict[str, str]) -> None:
    if problems:
        raise Invalid(next(iter(problems.values())), code="invalid", details=problems)


def _display_name(session: Session, principal: Principal) -> str:
    """The name feed knows from ``account.upserted``, else the one in the token."""
    person = session.get(Person, principal.id)
    return ((person.name if person and person.name else principal.name) or "")[:64]


# --- people and villages -------------------------------------------------------------------------


def upsert_person(session: Session, data: dict[str, Any]) -> Person | None:
    """Keep name, roles, village and status from ``account.upserted``; an older or equal
    ``revision`` than the one held is ignored (retries reorder events)."""
    person = session.get(Person, data["user_id"], with_for_update=True)
    revision = data.get("revision")
    if person is None:
        person = Person(id=data["user_id"])
        session.add(person)
    elif (
        person.account_known
        and person.revision is not None
        and revision is not None
        and revision <= person.revision
    ):
        return None
    person.name = (data.get("name") or "")[:64]
    person.roles = sorted(set(data.get("roles") or []))
    person.village_id = data.get("village_id")
    person.active = bool(data.get("active", True))
    person.tokens_valid_after = data.get("tokens_valid_after")
    person.account_known = True
    person.revision = revision
    return person


def upsert_village(session: Session, data: dict[str, Any]) -> Village | None:
    """Keep a village's name from ``village.upserted`` (newer revisions only)."""
    village = session.get(Village, data["village_id"], with_for_update=True)
    revision = data.get("revision") or 0
    if village is None:
        village = Village(id=data["village_id"], revision=-1)
        session.add(village)
    elif revision <= village.revision:
        return None
    village.name = (data.get("name") or "")[:64]
    village.revision = revision
    return village


# Built once: every page of posts says which of them the viewer liked.
_LIKED = sa.select(PostLike.post_id).where(
    PostLike.user_id == sa.bindparam("viewer"),
    PostLike.post_id.in_(sa.bindparam("posts", expanding=True)),
)


def _names(session: Session, ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    return {k: name for k, name in names_by_id(session, Person, ids).items() if name}


def _village_names(session: Session, ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    return {k: name for k, name in names_by_id(session, Village, ids).items() if name}


# --- news: writing and the editors' desk -------------------------------------------------------


def _record(
    session: Session,
    article: Article,
    action: str,
    actor: Principal | None,
    *,
    note: str | None = None,
    actor_name: str = "",
) -> None:
    """One history row with the article as it now stands; the article's version grows."""
    if action != "written":
        article.version += 1
    article.updated_at = utcnow()
    session.add(
        ArticleChange(
            article_id=article.id,
            version=article.version,
            action=action,
            state=article.state,
            actor_id=actor.id if actor else None,
            actor_name=actor_name or (_display_name(session, actor) if actor else "系统"),
            note=note,
            title=article.title,
            body_markdown=article.body_markdown,
            category=article.category,
            cover_media_id=article.cover_media_id,
            pinned=article.pinned,
            publish_at=article.publish_at,
            at=article.updated_at,
        )
    )


def _apply_fields(article: Article, fields: dict[str, Any]) -> None:
    if "title" in fields:
        article.title = fields["title"].strip()
    if "summary" in fields:
        article.summary = (fields["summary"] or "").strip() or None
    if "body" in fields:
        rendered = domain.render_body(fields["body"])
        article.body_markdown = fields["body"]
        article.body_html = rendered.html
        article.body_media_ids = [str(i) for i in rendered.media_ids]
    if "category" in fields:
        article.category = fields["category"]
    if "cover_media_id" in fields:
        article.cover_media_id = fields["cover_media_id"]
    if "pinned" in fields:
        article.pinned = bool(fields["pinned"])


def write_article(session: Session, writer: Principal, fields: dict[str, Any]) -> Article:
    """A publicist (or an admin) writes a draft; nothing is public yet."""
    with _rules():
        if not _actor(writer).is_writer:
            raise domain.NotAllowed("只有宣传员和管理员可以撰写新闻。")
    _invalid(domain.article_problems(fields))
    name = _display_name(session, writer)
    article = Article(
        id=uuid.uuid4(),
        author_id=writer.id,
        author_name=name,
        state="draft",
        version=1,
        title="",
        body_markdown="",
        body_html="",
        body_media_ids=[],
        pinned=False,
        views=0,
        comment_count=0,
        created_at=utcnow(),
    )
    _apply_fields(article, {"body": "", **fields})
    session.add(article)
    session.flush()
    _record(session, article, "written", writer, actor_name=name)
    return article


def _article(session: Session, article_id: uuid.UUID, *, lock: bool = False) -> Article:
    article = session.get(Article, article_id, with_for_update=lock or None)
    if article is None:
        raise NotFound("未找到该新闻。", code="article_not_found")
    return article


def find_article(session: Session, article_id: uuid.UUID) -> Article:
    """An article in any state (the editors' desk)."""
    return _article(session, article_id)


def edit_article(
    session: Session, editor: Principal, article_id: uuid.UUID, fields: dict[str, Any]
) -> Article:
    """Change an article's text or settings; each change is a row of its history."""
    article = _article(session, article_id, lock=True)
    with _rules():
        domain.check_may_edit(_actor(editor), author_id=article.author_id, state=article.state)
    _invalid(domain.article_problems(fields))
    note = fields.pop("note", None)
    _apply_fields(article, fields)
    _record(session, article, "edited", editor, note=note)
    return article


def submit_article(
    session: Session, writer: Principal, article_id: uuid.UUID, note: str | None
) -> Article:
    """The author sends a draft to an admin for review (送审)."""
    article = _article(session, article_id, lock=True)
    with _rules():
        domain.check_may_submit(_actor(writer), author_id=article.author_id, state=article.state)
    article.state = "in_review"
    _record(session, article, "submitted", writer, note=note)
    return article


def return_article(
    session: Session, admin: Principal, article_id: uuid.UUID, reason: str
) -> Article:
    """An admin sends an article in review (or scheduled) back to draft with a reason (退回)."""
    article = _article(session, article_id, lock=True)
    with _rules():
        domain.check_may_return(_actor(admin), state=article.state)
    _invalid({"reason": m} if (m := domain.reason_problem(reason)) else {})
    article.state = "draft"
    article.publish_at = None
    _record(session, article, "returned", admin, note=reason.strip())
    return article


def publish_article(
    session: Session,
    admin: Principal,
    article_id: uuid.UUID,
    *,
    publish_at: datetime | None,
    note: str | None,
    now: datetime,
) -> Article:
    """An admin approves: published now, or scheduled for ``publish_at`` (the worker publishes
    it then). Emits ``news.published`` when it goes out."""
    article = _article(session, article_id, lock=True)
    with _rules():
        domain.check_may_publish(_actor(admin), state=article.state)
    if publish_at is not None and publish_at > now:
        article.state = "scheduled"
        article.publish_at = publish_at
        article.published_by = admin.id
        _record(session, article, "scheduled", admin, note=note)
        return article
    _publish(session, article, admin.id, now, actor=admin, note=note)
    return article


def _publish(
    session: Session,
    article: Article,
    by: uuid.UUID | None,
    now: datetime,
    *,
    actor: Principal | None,
    note: str | None = None,
) -> None:
    article.state = "published"
    article.published_at = now
    article.published_by = by
    article.archived_at = None
    _record(session, article, "published", actor, note=note, actor_name="" if actor else "定时发布")
    editors = set(
        session.scalars(
            sa.select(ArticleChange.actor_id).where(
                ArticleChange.article_id == article.id, ArticleChange.actor_id.is_not(None)
            )
        )
    )
    media = [article.cover_media_id] if article.cover_media_id else []
    media += [uuid.UUID(i) for i in article.body_media_ids or []]
    emit(
        session,
        "news.published",
        {
            "id": article.id,
            "title": article.title,
            "category": article.category,
            "author_id": article.author_id,
            "published_by": by,
            "published_at": now,
            "cover_media_id": article.cover_media_id,
            "summary": article.summary,
            # Every photo the article shows, and who put it there: intake makes public only a
            # photo one of them uploaded (never one of a resident's reports).
            "media_ids": domain.distinct(media),
            "editor_ids": sorted({article.author_id, *editors, *([by] if by else [])}, key=str),
        },
    )
    category = article.category
    after_commit(session, lambda: NEWS_PUBLISHED.labels(SERVICE, category).inc())


def publish_due(session: Session, now: datetime, limit: int = 100) -> list[uuid.UUID]:
    """The worker's timer: publish scheduled articles whose time has come. Rows are taken with
    SKIP LOCKED, so several workers publish each one once."""
    stmt = (
        sa.select(Article)
        .where(Article.state == "scheduled", Article.publish_at <= now)
        .order_by(Article.publish_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    published = []
    for article in session.scalars(stmt):
        _publish(session, article, article.published_by, now, actor=None)
        published.append(article.id)
    return published


def archive_article(
    session: Session, writer: Principal, article_id: uuid.UUID, note: str | None
) -> Article:
    """Take a published article off the public list (归档); its history stays."""
    article = _article(session, article_id, lock=True)
    with _rules():
        domain.check_may_archive(_actor(writer), state=article.state)
    article.state = "archived"
    article.archived_at = utcnow()
    article.pinned = False
    _record(session, article, "archived", writer, note=note)
    return article


def desk_page(
    session: Session,
    *,
    state: str | None,
    category: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[Article], str | None]:
    """Every article in any state, last changed first (publicists and admins)."""
    stmt = sa.select(Article)
    if state:
        stmt = stmt.where(Article.state == state)
    if category:
        stmt = stmt.where(Article.category == category)
    return keyset_page(
        session,
        stmt,
        order=[Article.updated_at.desc(), Article.id.desc()],
        key=lambda a: [a.updated_at, a.id],
        cursor=cursor,
        limit=limit,
    )


def article_history(session: Session, article_id: uuid.UUID) -> list[ArticleChange]:
    _article(session, article_id)
    return list(
        session.scalars(
            sa.select(ArticleChange)
            .where(ArticleChange.article_id == article_id)
            .order_by(ArticleChange.version)
        )
    )


# --- news: public reads --------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _news_query(category: str | None) -> KeysetQuery:
    """Published news of one ``category`` (None: all), built once: the busiest public page."""
    stmt = sa.select(Article).where(Article.state == "published")
    if category:
        stmt = stmt.where(Article.category == category)
    return KeysetQuery(
        stmt, order=[Article.pinned.desc(), Article.published_at.desc(), Article.id.desc()]
    )


def public_news_page(
    session: Session, *, category: str | None, cursor: str | None, limit: int
) -> tuple[list[Article], str | None]:
    """Published news, pinned first, then newest (one index scan per page)."""
    return keyset_page(
        session,
        _news_query(category),
        key=lambda a: [a.pinned, a.published_at, a.id],
        cursor=cursor,
        limit=limit,
    )


def public_article(session: Session, article_id: uuid.UUID) -> Article:
    article = session.get(Article, article_id)
    if article is None or article.state != "published":
        raise NotFound("未找到该新闻。", code="article_not_found")
    return article


class ViewCounter:
    """News views counted in this process and written in batches: one UPDATE per article with
    the number of views since the last write (``views = views + n``), every ``every_seconds``
    (a timer thread, so the last views of a quiet article do not wait for its next reader)
    or once ``every_views`` views wait, and at exit. Why: a popular notice read thousands of
    times an hour must not cost a write, and a row lock, per read. A crash loses at most the
    views of one interval."""

    def __init__(self, db: Database, every_seconds: float, every_views: int) -> None:
        self.db = db
        self.every_seconds = every_seconds
        self.every_views = every_views
        self._lock = threading.Lock()
        self._pending: dict[uuid.UUID, int] = {}
        self._waiting = 0
        self._pid = os.getpid()
        self._last = time.monotonic()
        self._timer_pid: int | None = None
        self._closed = threading.Event()
        atexit.register(self._flush_at_exit)

    def add(self, article_id: uuid.UUID) -> None:
        with self._lock:
            if self._pid != os.getpid():  # a forked copy starts empty
                self._pending, self._waiting, self._pid = {}, 0, os.getpid()
            if self._timer_pid != self._pid:  # threads do not survive a fork: one per process
                self._timer_pid = self._pid
                threading.Thread(
                    target=self._flush_every_interval, name="news-views", daemon=True
                ).start()
            self._pending[article_id] = self._pending.get(article_id, 0) + 1
            self._waiting += 1
            due = (
                self._waiting >= self.every_views
                or time.monotonic() - self._last >= self.every_seconds
            )
        if due:
            self.flush()

    def pending(self) -> int:
        with self._lock:
            return self._waiting

    def flush(self) -> int:
        """Write what waits; on a database error the views wait for the next try."""
        with self._lock:
            batch, self._pending, self._waiting = self._pending, {}, 0
            self._last = time.monotonic()
        if not batch:
            return 0
        table = Article.__table__
        stmt = (
            sa.update(table)
            .where(table.c.id == sa.bindparam("article_id"))
            .values(views=table.c.views + sa.bindparam("n"))
        )
        # In id order, so two processes writing at once never wait on each other in a cycle.
        rows = [
            {"article_id": k, "n": n} for k, n in sorted(batch.items(), key=lambda i: str(i[0]))
        ]
        try:
            with self.db.transaction() as session:
                session.execute(stmt, rows)
        except SQLAlchemyError as exc:
            log.warning("news views not written yet (%s); kept for the next try", exc)
            with self._lock:
                for key, n in batch.items():
                    self._pending[key] = self._pending.get(key, 0) + n
                    self._waiting += n
            return 0
        total = sum(batch.values())
        NEWS_VIEWS.labels(SERVICE).inc(total)
        return total

    def close(self) -> None:
        """Write what waits and stop watching for the process's exit (an app torn down)."""
        self._closed.set()
        atexit.unregister(self._flush_at_exit)
        if self._pid == os.getpid():
            self.flush()

    def _flush_every_interval(self) -> None:
        pid = os.getpid()
        while not self._closed.wait(self.every_seconds) and self._pid == pid:
            if self.pending():
                try:
                    self.flush()
                except Exception:  # the timer must outlive one bad write; the views are kept
                    log.exception("news views not written by the timer")

    def _flush_at_exit(self) -> None:
        if self._pid == os.getpid() and self.pending():
            try:
                self.flush()
            except Exception:  # the process is ending: say so and go
                log.exception("news views lost at exit")


# --- comments and moderation ---------------------------------------------------------------------


def _comment(
    session: Session,
    settings: FeedSettings,
    author: Principal,
    text: str,
    *,
    article: Article | None = None,
    post: Post | None = None,
) -> Comment:
    _invalid({"text": m} if (m := domain.comment_problem(text)) else {})
    held = domain.held_words(text, settings.moderation_words)
    comment = Comment(
        id=uuid.uuid4(),
        article_id=article.id if article else None,
        post_id=post.id if post else None,
        author_id=author.id,
        author_name=_display_name(session, author),
        text=text.strip(),
        state="pending" if held else "visible",
        held_words=held,
        created_at=utcnow(),
    )
    session.add(comment)
    session.flush()
    target = "news" if article else "post"
    if not held:
        _count_comment(session, comment, +1)
    state = comment.state

    def count() -> None:
        COMMENTS.labels(SERVICE, target, state).inc()
        if held:
            COMMENTS_HELD.labels(SERVICE, target).inc()

    after_commit(session, count)
    return comment


def _count_comment(session: Session, comment: Comment, step: int) -> None:
    """A visible comment counts on its article or post (moved in the same statement)."""
    model = Article if comment.article_id else Post
    target = comment.article_id or comment.post_id
    session.execute(
        sa.update(model)
        .where(model.id == target)
        .values(comment_count=model.comment_count + step)
        .execution_options(synchronize_session=False)
    )


def comment_on_article(
    session: Session, settings: FeedSettings, author: Principal, article_id: uuid.UUID, text: str
) -> Comment:
    """A resident (anyone signed in) comments on published news: public supervision."""
    article = public_article(session, article_id)
    return _comment(session, settings, author, text, article=article)


def comment_on_post(
    session: Session, settings: FeedSettings, author: Principal, post_id: uuid.UUID, text: str
) -> Comment:
    post = _readable_post(session, author, post_id)
    if post.state != "published":
        raise Conflict("该动态已不可评论。", code="wrong_state")
    return _comment(session, settings, author, text, post=post)


def comments_page(
    session: Session,
    *,
    article_id: uuid.UUID | None = None,
    post_id: uuid.UUID | None = None,
    viewer_id: uuid.UUID | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[Comment], str | None]:
    """Visible comments, oldest first; the viewer also sees their own waiting for moderation."""
    shown = Comment.state == "visible"
    if viewer_id is not None:
        shown = sa.or_(shown, sa.and_(Comment.state == "pending", Comment.author_id == viewer_id))
    target = Comment.article_id == article_id if article_id else Comment.post_id == post_id
    return keyset_page(
        session,
        sa.select(Comment).where(target, shown),
        order=[Comment.created_at.asc(), Comment.id.asc()],
        key=lambda c: [c.created_at, c.id],
        cursor=cursor,
        limit=limit,
    )


def moderation_queue(
    session: Session, *, state: str, cursor: str | None, limit: int
) -> tuple[list[Comment], str | None]:
    """Comments waiting for an admin (``pending``), or those hidden (``hidden``), oldest first."""
    return keyset_page(
        session,
        sa.select(Comment).where(Comment.state == state),
        order=[Comment.created_at.asc(), Comment.id.asc()],
        key=lambda c: [c.created_at, c.id],
        cursor=cursor,
        limit=limit,
    )


def _moderate(
    session: Session, admin: Principal, kind: str, target_id: uuid.UUID, action: str, reason: str
) -> None:
    _invalid({"reason": m} if (m := domain.reason_problem(reason)) else {})
    session.add(
        ModerationAction(
            target_kind=kind,
            target_id=target_id,
            action=action,
            reason=reason.strip(),
            actor_id=admin.id,
            actor_name=_display_name(session, admin),
            at=utcnow(),
        )
    )
    after_commit(session, lambda: MODERATION.labels(SERVICE, kind, action).inc())


def hide_comment(session: Session, admin: Principal, comment_id: uuid.UUID, reason: str) -> Comment:
    """An admin hides a comment (shown or waiting) with a reason that is kept."""
    comment = session.get(Comment, comment_id, with_for_update=True)
    if comment is None:
        raise NotFound("未找到该评论。", code="comment_not_found")
    if comment.state == "hidden":
        raise Conflict("该评论已被屏蔽。", code="wrong_state")
    _moderate(session, admin, "comment", comment.id, "hide", reason)
    if comment.state == "visible":
        _count_comment(session, comment, -1)
    comment.state = "hidden"
    comment.moderated_by, comment.moderated_at = admin.id, utcnow()
    comment.moderation_reason = reason.strip()
    return comment


def restore_comment(
    session: Session, admin: Principal, comment_id: uuid.UUID, reason: str
) -> Comment:
    """An admin shows a comment that waited for moderation or was hidden, with a reason."""
    comment = session.get(Comment, comment_id, with_for_update=True)
    if comment is None:
        raise NotFound("未找到该评论。", code="comment_not_found")
    if comment.state == "visible":
        raise Conflict("该评论已在显示。", code="wrong_state")
    _moderate(session, admin, "comment", comment.id, "restore", reason)
    _count_comment(session, comment, +1)
    comment.state = "visible"
    comment.moderated_by, comment.moderated_at = admin.id, utcnow()
    comment.moderation_reason = reason.strip()
    return comment


def moderation_history(session: Session, kind: str, target_id: uuid.UUID) -> list[ModerationAction]:
    return list(
        session.scalars(
            sa.select(ModerationAction)
            .where(ModerationAction.target_kind == kind, ModerationAction.target_id == target_id)
            .order_by(ModerationAction.at)
        )
    )


# --- the party feed ------------------------------------------------------------------------------


def _emit_post(session: Session, post: Post) -> None:
    emit(
        session,
        "post.published",
        {
            "id": post.id,
            "excerpt": domain.excerpt(post.text),
            "tag": post.tag,
            "village_id": post.village_id,
            "author_id": post.author_id,
            "photo_ids": list(post.photo_ids or []),
            "published_at": post.published_at,
        },
    )
    tag = post.tag
    after_commit(session, lambda: POSTS_PUBLISHED.labels(SERVICE, tag).inc())


def publish_post(
    session: Session, author: Principal, fields: dict[str, Any], *, now: datetime | None = None
) -> Post:
    """A party member, grid leader or admin posts to the feed (text, up to 9 photos, a tag,
    the village: their own unless they name another the township knows)."""
    if not author.has(*domain.POSTERS):
        raise Forbidden("只有党员、网格长和管理员可以发布党建动态。", code="not_allowed")
    photos = domain.distinct(fields.get("photo_ids") or [])
    _invalid(domain.post_problems(fields["text"], photos))
    village_id = fields.get("village_id") or author.village_id
    if (
        fields.get("village_id")
        and village_id != author.village_id
        and session.get(Village, village_id) is None
    ):
        raise Invalid(
            "没有这个村。", code="unknown_village", details={"village_id": "没有这个村。"}
        )
    now = now or utcnow()
    post = Post(
        id=uuid.uuid4(),
        author_id=author.id,
        author_name=_display_name(session, author),
        text=fields["text"].strip(),
        photo_ids=[str(p) for p in photos],
        tag=fields["tag"],
        village_id=village_id,
        state="published",
        like_count=0,
        comment_count=0,
        published_at=now,
        updated_at=now,
    )
    session.add(post)
    session.flush()
    _emit_post(session, post)
    return post


def publish_board(
    session: Session, period: str, top: list[dict], bottom: list[dict], at: datetime
) -> Post | None:
    """The monthly 红黑榜 from scoring as a township post, once per month: a second
    ``leaderboard.published`` for the same month (a forced re-publish, a redelivery) is kept out
    by the unique ``board_period``."""
    post_id = uuid.uuid4()
    values = {
        "id": post_id,
        "author_id": None,
        "author_name": "沙口集乡",
        "text": domain.board_text(period, top, bottom),
        "photo_ids": [],
        "tag": domain.BOARD_TAG,
        "village_id": None,
        "state": "published",
        "board_period": period,
        "board": {"period": period, "top": top, "bottom": bottom},
        "like_count": 0,
        "comment_count": 0,
        "published_at": at,
        "updated_at": at,
    }
    stmt = (
        _insert(session, Post.__table__)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["board_period"])
        .returning(Post.__table__.c.id)
    )
    if session.execute(stmt).first() is None:
        log.info("红黑榜 of %s is already posted; this copy changes nothing", period)
        return None
    post = session.get(Post, post_id)
    assert post is not None
    _emit_post(session, post)
    return post


@functools.lru_cache(maxsize=8)
def _posts_query(by_village: bool, by_tag: bool) -> KeysetQuery:
    """Published posts, of one ``village`` and/or ``tag`` when asked, built once."""
    stmt = sa.select(Post).where(Post.state == "published")
    if by_village:
        stmt = stmt.where(Post.village_id == sa.bindparam("village"))
    if by_tag:
        stmt = stmt.where(Post.tag == sa.bindparam("tag"))
    return KeysetQuery(stmt, order=[Post.published_at.desc(), Post.id.desc()])


def feed_page(
    session: Session,
    *,
    village_id: uuid.UUID | None,
    tag: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[Post], str | None]:
    """Published posts, newest first; a filter by village and/or tag uses its own index."""
    return keyset_page(
        session,
        _posts_query(bool(village_id), bool(tag)),
        key=lambda p: [p.published_at, p.id],
        cursor=cursor,
        limit=limit,
        params={"village": village_id, "tag": tag},
    )


def _readable_post(session: Session, viewer: Principal, post_id: uuid.UUID) -> Post:
    """A published post; a hidden one only for admins and its author; a deleted one for none."""
    post = session.get(Post, post_id)
    if post is None or post.state == "deleted":
        raise NotFound("未找到该动态。", code="post_not_found")
    if post.state == "hidden" and not (viewer.has("admin") or viewer.id == post.author_id):
        raise NotFound("未找到该动态。", code="post_not_found")
    return post


def get_post(session: Session, viewer: Principal, post_id: uuid.UUID) -> Post:
    return _readable_post(session, viewer, post_id)


def delete_post(session: Session, author: Principal, post_id: uuid.UUID) -> None:
    """Its author takes a post down (an admin hides others' posts, with a reason)."""
    post = _readable_post(session, author, post_id)
    if post.author_id != author.id:
        raise Forbidden("只能删除自己发布的动态。", code="not_author")
    post.state = "deleted"
    post.updated_at = utcnow()


def hide_post(session: Session, admin: Principal, post_id: uuid.UUID, reason: str) -> Post:
    post = _readable_post(session, admin, post_id)
    if post.state != "published":
        raise Conflict("该动态已被屏蔽。", code="wrong_state")
    _moderate(session, admin, "post", post.id, "hide", reason)
    post.state, post.hidden_reason, post.updated_at = "hidden", reason.strip(), utcnow()
    return post


def restore_post(session: Session, admin: Principal, post_id: uuid.UUID, reason: str) -> Post:
    post = _readable_post(session, admin, post_id)
    if post.state != "hidden":
        raise Conflict("该动态没有被屏蔽。", code="wrong_state")
    _moderate(session, admin, "post", post.id, "restore", reason)
    post.state, post.hidden_reason, post.updated_at = "published", None, utcnow()
    return post


@dataclass(frozen=True)
class LikeState:
    post_id: uuid.UUID
    liked: bool
    like_count: int


def like(session: Session, viewer: Principal, post_id: uuid.UUID) -> LikeState:
    """Like a post once: a second like (or two at the same moment) inserts nothing, and only
    the insert that happened moves the count, in the same transaction."""
    post = _readable_post(session, viewer, post_id)
    if post.state != "published":
        raise Conflict("该动态已不可点赞。", code="wrong_state")
    table = PostLike.__table__
    inserted = session.execute(
        _insert(session, table)
        .values(post_id=post_id, user_id=viewer.id, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["post_id", "user_id"])
        .returning(table.c.post_id)
    ).first()
    if inserted is not None:
        after_commit(session, lambda: LIKES.labels(SERVICE, "like").inc())
    return LikeState(post_id, True, _move_likes(session, post_id, 1 if inserted else 0))


def unlike(session: Session, viewer: Principal, post_id: uuid.UUID) -> LikeState:
    """Take a like back; without one, nothing changes."""
    _readable_post(session, viewer, post_id)
    table = PostLike.__table__
    deleted = session.execute(
        sa.delete(table)
        .where(table.c.post_id == post_id, table.c.user_id == viewer.id)
        .returning(table.c.post_id)
    ).first()
    if deleted is not None:
        after_commit(session, lambda: LIKES.labels(SERVICE, "unlike").inc())
    return LikeState(post_id, False, _move_likes(session, post_id, -1 if deleted else 0))


def _move_likes(session: Session, post_id: uuid.UUID, step: int) -> int:
    posts = Post.__table__
    if step:
        return session.execute(
            sa.update(posts)
            .where(posts.c.id == post_id)
            .values(like_count=posts.c.like_count + step)
            .returning(posts.c.like_count)
        ).scalar_one()
    return session.execute(sa.select(posts.c.like_count).where(posts.c.id == post_id)).scalar_one()


# --- views for the routes ------------------------------------------------------------------------


def article_views(session: Session, articles: list[Article]) -> list[dict[str, Any]]:
    """Articles with their author's current name (as feed knows it)."""
    names = _names(session, {a.author_id for a in articles})
    return [
        {
            "article": a,
            "author_name": names.get(a.author_id) or a.author_name,
            "category_label": domain.CATEGORIES.get(a.category, a.category),
            "state_label": domain.STATES.get(a.state, a.state),
            "cover_url": domain.media_url(a.cover_media_id),
        }
        for a in articles
    ]


def post_views(
    session: Session, posts: list[Post], viewer_id: uuid.UUID | None
) -> list[dict[str, Any]]:
    """Posts with author and village names and whether the viewer liked each (two queries per
    page, whatever its length)."""
    names = _names(session, {p.author_id for p in posts if p.author_id})
    villages = _village_names(session, {p.village_id for p in posts if p.village_id})
    liked: set[uuid.UUID] = set()
    if viewer_id and posts:
        liked = set(session.scalars(_LIKED, {"viewer": viewer_id, "posts": [p.id for p in posts]}))
    return [
        {
            "post": p,
            "author_name": (names.get(p.author_id) if p.author_id else None) or p.author_name,
            "village_name": villages.get(p.village_id) if p.village_id else None,
            "tag_label": domain.TAG_LABELS.get(p.tag, p.tag),
            "photo_urls": [domain.media_url(uuid.UUID(i)) for i in p.photo_ids or []],
            "liked_by_me": p.id in liked,
        }
        for p in posts
    ]


def comment_views(
    session: Session, comments: list[Comment], *, public: bool, viewer_id: uuid.UUID | None
) -> list[dict[str, Any]]:
    """Comments with their author's name: on public news only the family name (张**)."""
    names = _names(session, {c.author_id for c in comments})
    views = []
    for c in comments:
        name = names.get(c.author_id) or c.author_name
        views.append(
            {
                "comment": c,
                "author_name": domain.masked_name(name) if public else name,
                "mine": viewer_id is not None and c.author_id == viewer_id,
            }
        )
    return views
