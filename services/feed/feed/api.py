"""Feed's routes: HTTP only. Each loads its input, calls one use case, dumps the answer.

News reads are public (no login) and carry a weak ``ETag`` and ``Cache-Control: public``;
everything else needs a signed-in caller, gated here by role and checked again by the rules.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import asdict
from typing import Any

from flask import Response, current_app, request
from flask_smorest import Blueprint
from sqlalchemy.orm import Session

from feed import domain, services
from feed.schemas import (
    ArticleIn,
    ArticleOut,
    ArticlePatch,
    CommentIn,
    CommentOut,
    CommentPageOut,
    DeskPageOut,
    DeskQuery,
    EditorDetailOut,
    FeedQuery,
    LikeOut,
    ModerationCommentOut,
    ModerationPageOut,
    ModerationQuery,
    NewsPageOut,
    NewsQuery,
    NoteIn,
    PageQuery,
    PostIn,
    PostOut,
    PostPageOut,
    PublishIn,
    ReasonIn,
)
from feed.settings import FeedSettings
from shared.auth import Principal, current_principal, require_roles
from shared.clock import utcnow
from shared.web import request_transaction

news = Blueprint("news", __name__, url_prefix="/api/v1", description="魅力沙口集 News")
party = Blueprint("posts", __name__, url_prefix="/api/v1", description="党建朋友圈 Party feed")
BEARER = [{"bearerAuth": []}]
PUBLIC_OR_BEARER = [{}, {"bearerAuth": []}]

WRITERS = tuple(sorted(domain.WRITERS))
POSTERS = tuple(sorted(domain.POSTERS))
# Built once: a schema deep-copies its fields when built; dumping keeps no state.
NEWS_PAGE = NewsPageOut()
ARTICLE = ArticleOut()


def _settings() -> FeedSettings:
    return current_app.extensions["settings"]


_transaction = request_transaction


def _me() -> Principal:
    principal = current_principal()
    assert principal is not None
    return principal


def _public(body: dict[str, Any], tag_of: dict[str, Any] | None = None) -> Response:
    """A public answer with a weak ETag (of ``tag_of``, else the body) and Cache-Control;
    ``If-None-Match`` with the same tag answers 304 without a body."""
    text = current_app.json.dumps(body)
    basis = text if tag_of is None else current_app.json.dumps(tag_of)
    response = Response(text, mimetype="application/json")
    response.set_etag(hashlib.sha256(basis.encode()).hexdigest()[:32], weak=True)
    response.headers["Cache-Control"] = f"public, max-age={_settings().news_cache_seconds}"
    return response.make_conditional(request)


# --- news: public --------------------------------------------------------------------------------


@news.get("/news")
@news.alt_response(200, schema=NewsPageOut, description="已发布的新闻")
@news.alt_response(304, description="未改变（If-None-Match）")
@news.arguments(NewsQuery, location="query")
@news.doc(security=[])
def list_news(args: dict[str, Any]):
    """魅力沙口集（无需登录）：已发布的新闻，置顶在前，再按发布时间从新到旧；可按栏目筛选。"""
    with _transaction() as session:
        items, cursor = services.public_news_page(
            session,
            category=args["category"],
            cursor=args["cursor"],
            limit=args["limit"] or _settings().news_page_size,
        )
        body = NEWS_PAGE.dump(
            {"items": services.article_views(session, items), "next_cursor": cursor}
        )
    return _public(body)


@news.get("/news/<uuid:article_id>")
@news.alt_response(200, schema=ArticleOut, description="新闻正文")
@news.alt_response(304, description="未改变（If-None-Match）")
@news.doc(security=[])
def read_news(article_id: uuid.UUID):
    """一篇已发布的新闻（无需登录）；阅读数分批累计。"""
    with _transaction() as session:
        article = services.public_article(session, article_id)
        body = ARTICLE.dump(services.article_views(session, [article])[0])
    current_app.extensions["view_counter"].add(article_id)
    # The tag leaves out the view count: a 304 for the same text is right even as views grow.
    return _public(body, {k: v for k, v in body.items() if k != "views"})


@news.get("/news/<uuid:article_id>/comments")
@news.arguments(PageQuery, location="query")
@news.response(200, CommentPageOut)
@news.doc(security=PUBLIC_OR_BEARER)
def list_news_comments(args: dict[str, Any], article_id: uuid.UUID):
    """新闻的评论（无需登录；从早到晚）：评论人只显示姓氏。登录后也能看到自己待审核的评论。"""
    viewer = current_principal(optional=True)
    with _transaction() as session:
        services.public_article(session, article_id)
        items, cursor = services.comments_page(
            session,
            article_id=article_id,
            viewer_id=viewer.id if viewer else None,
            cursor=args["cursor"],
            limit=args["limit"] or _settings().comments_page_size,
        )
        views = services.comment_views(
            session, items, public=True, viewer_id=viewer.id if viewer else None
        )
    return {"items": views, "next_cursor": cursor}


@news.post("/news/<uuid:article_id>/comments")
@require_roles()
@news.arguments(CommentIn)
@news.response(201, CommentOut)
@news.doc(security=BEARER)
def comment_news(body: dict[str, Any], article_id: uuid.UUID):
    """评论已发布的新闻（群众监督；任何登录用户）。含审核词的评论先进入审核，通过后显示。"""
    me = _me()
    with _transaction() as session:
        comment = services.comment_on_article(session, _settings(), me, article_id, body["text"])
        return services.comment_views(session, [comment], public=True, viewer_id=me.id)[0]


# --- news: the editors' desk ---------------------------------------------------------------------


def _editor_view(session: Session, article) -> dict[str, Any]:
    view = services.article_views(session, [article])[0]
    view["history"] = services.article_history(session, article.id)
    return view


@news.post("/news")
@require_roles(*WRITERS)
@news.arguments(ArticleIn)
@news.response(201, EditorDetailOut)
@news.doc(security=BEARER)
def write_news(body: dict[str, Any]):
    """撰写新闻（宣传员、管理员）：存为草稿，正文为 Markdown。"""
    with _transaction() as session:
        article = services.write_article(session, _me(), body)
        return _editor_view(session, article)


@news.get("/news/desk")
@require_roles(*WRITERS)
@news.arguments(DeskQuery, location="query")
@news.response(200, DeskPageOut)
@news.doc(security=BEARER)
def news_desk(args: dict[str, Any]):
    """编辑台（宣传员、管理员）：各状态的新闻，最近修改的在前。"""
    with _transaction() as session:
        items, cursor = services.desk_page(
            session,
            state=args["state"],
            category=args["category"],
            cursor=args["cursor"],
            limit=args["limit"] or _settings().news_page_size,
        )
        return {"items": services.article_views(session, items), "next_cursor": cursor}


@news.get("/news/<uuid:article_id>/edit")
@require_roles(*WRITERS)
@news.response(200, EditorDetailOut)
@news.doc(security=BEARER)
def news_for_editor(article_id: uuid.UUID):
    """一篇新闻的全部内容（任何状态）和修改记录（宣传员、管理员）。"""
    with _transaction() as session:
        return _editor_view(session, services.find_article(session, article_id))


@news.patch("/news/<uuid:article_id>")
@require_roles(*WRITERS)
@news.arguments(ArticlePatch)
@news.response(200, EditorDetailOut)
@news.doc(security=BEARER)
def edit_news(body: dict[str, Any], article_id: uuid.UUID):
    """修改新闻：草稿由作者或管理员修改；审核中、定时和已发布的只有管理员可改（记入修改记录）。"""
    with _transaction() as session:
        article = services.edit_article(session, _me(), article_id, dict(body))
        return _editor_view(session, article)


@news.post("/news/<uuid:article_id>/submit")
@require_roles(*WRITERS)
@news.arguments(NoteIn)
@news.response(200, EditorDetailOut)
@news.doc(security=BEARER)
def submit_news(body: dict[str, Any], article_id: uuid.UUID):
    """送审：作者把草稿交给管理员审核。"""
    with _transaction() as session:
        article = services.submit_article(session, _me(), article_id, body["note"])
        return _editor_view(session, article)


@news.post("/news/<uuid:article_id>/return")
@require_roles("admin")
@news.arguments(ReasonIn)
@news.response(200, EditorDetailOut)
@news.doc(security=BEARER)
def return_news(body: dict[str, Any], article_id: uuid.UUID):
    """退回修改（管理员，须写明原因）：审核中或定时发布的稿件回到草稿。"""
    with _transaction() as session:
        article = services.return_article(session, _me(), article_id, body["reason"])
        return _editor_view(session, article)


@news.post("/news/<uuid:article_id>/publish")
@require_roles("admin")
@news.arguments(PublishIn)
@news.response(200, EditorDetailOut)
@news.doc(security=BEARER)
def publish_news(body: dict[str, Any], article_id: uuid.UUID):
    """审核通过并发布（管理员）：立即发布，或按 ``publish_at`` 定时发布。"""
    with _transaction() as session:
        article = services.publish_article(
            session,
            _me(),
            article_id,
            publish_at=body["publish_at"],
            note=body["note"],
            now=utcnow(),
        )
        return _editor_view(session, article)


@news.post("/news/<uuid:article_id>/archive")
@require_roles(*WRITERS)
@news.arguments(NoteIn)
@news.response(200, EditorDetailOut)
@news.doc(security=BEARER)
def archive_news(body: dict[str, Any], article_id: uuid.UUID):
    """归档（宣传员、管理员）：已发布的新闻不再公开显示。"""
    with _transaction() as session:
        article = services.archive_article(session, _me(), article_id, body["note"])
        return _editor_view(session, article)


# --- moderation of comments ----------------------------------------------------------------------


@news.get("/moderation/comments")
@require_roles("admin")
@news.arguments(ModerationQuery, location="query")
@news.response(200, ModerationPageOut)
@news.doc(security=BEARER)
def moderation_queue(args: dict[str, Any]):
    """评论审核（管理员）：待审核的评论（含命中的审核词），或已屏蔽的评论，从早到晚。"""
    me = _me()
    with _transaction() as session:
        items, cursor = services.moderation_queue(
            session,
            state=args["state"],
            cursor=args["cursor"],
            limit=args["limit"] or _settings().comments_page_size,
        )
        views = services.comment_views(session, items, public=False, viewer_id=me.id)
    return {"items": views, "next_cursor": cursor}


@news.post("/comments/<uuid:comment_id>/hide")
@require_roles("admin")
@news.arguments(ReasonIn)
@news.response(200, ModerationCommentOut)
@news.doc(security=BEARER)
def hide_comment(body: dict[str, Any], comment_id: uuid.UUID):
    """屏蔽评论（管理员，须写明原因，原因记录在案）。"""
    me = _me()
    with _transaction() as session:
        comment = services.hide_comment(session, me, comment_id, body["reason"])
        return services.comment_views(session, [comment], public=False, viewer_id=me.id)[0]


@news.post("/comments/<uuid:comment_id>/restore")
@require_roles("admin")
@news.arguments(ReasonIn)
@news.response(200, ModerationCommentOut)
@news.doc(security=BEARER)
def restore_comment(body: dict[str, Any], comment_id: uuid.UUID):
    """显示评论（管理员，须写明原因）：审核通过待审核的评论，或恢复已屏蔽的评论。"""
    me = _me()
    with _transaction() as session:
        comment = services.restore_comment(session, me, comment_id, body["reason"])
        return services.comment_views(session, [comment], public=False, viewer_id=me.id)[0]


# --- the party feed ------------------------------------------------------------------------------


@party.get("/posts")
@require_roles()
@party.arguments(FeedQuery, location="query")
@party.response(200, PostPageOut)
@party.doc(security=BEARER)
def list_posts(args: dict[str, Any]):
    """党建朋友圈（登录用户）：最新在前，可按村、标签筛选；含每月红黑榜。"""
    me = _me()
    with _transaction() as session:
        items, cursor = services.feed_page(
            session,
            village_id=args["village_id"],
            tag=args["tag"],
            cursor=args["cursor"],
            limit=args["limit"] or _settings().posts_page_size,
        )
        return {"items": services.post_views(session, items, me.id), "next_cursor": cursor}


@party.post("/posts")
@require_roles(*POSTERS)
@party.arguments(PostIn)
@party.response(201, PostOut)
@party.doc(security=BEARER)
def publish_post(body: dict[str, Any]):
    """发布党建动态（党员、网格长、管理员）：文字不超过 1000 字，照片最多 9 张，
    标签为组织活动、党员好事或学习。"""
    me = _me()
    with _transaction() as session:
        post = services.publish_post(session, me, body)
        return services.post_views(session, [post], me.id)[0]


@party.get("/posts/<uuid:post_id>")
@require_roles()
@party.response(200, PostOut)
@party.doc(security=BEARER)
def read_post(post_id: uuid.UUID):
    """一条动态（登录用户）；被屏蔽的只有管理员和作者可见。"""
    me = _me()
    with _transaction() as session:
        return services.post_views(session, [services.get_post(session, me, post_id)], me.id)[0]


@party.delete("/posts/<uuid:post_id>")
@require_roles()
@party.response(204)
@party.doc(security=BEARER)
def delete_post(post_id: uuid.UUID):
    """删除自己发布的动态（作者本人）。"""
    with _transaction() as session:
        services.delete_post(session, _me(), post_id)


@party.post("/posts/<uuid:post_id>/hide")
@require_roles("admin")
@party.arguments(ReasonIn)
@party.response(200, PostOut)
@party.doc(security=BEARER)
def hide_post(body: dict[str, Any], post_id: uuid.UUID):
    """屏蔽动态（管理员，须写明原因，原因记录在案）。"""
    me = _me()
    with _transaction() as session:
        post = services.hide_post(session, me, post_id, body["reason"])
        return services.post_views(session, [post], me.id)[0]


@party.post("/posts/<uuid:post_id>/restore")
@require_roles("admin")
@party.arguments(ReasonIn)
@party.response(200, PostOut)
@party.doc(security=BEARER)
def restore_post(body: dict[str, Any], post_id: uuid.UUID):
    """恢复被屏蔽的动态（管理员，须写明原因）。"""
    me = _me()
    with _transaction() as session:
        post = services.restore_post(session, me, post_id, body["reason"])
        return services.post_views(session, [post], me.id)[0]


@party.put("/posts/<uuid:post_id>/like")
@require_roles()
@party.response(200, LikeOut)
@party.doc(security=BEARER)
def like_post(post_id: uuid.UUID):
    """点赞（每人一次；重复点赞不改变结果）。"""
    with _transaction() as session:
        return asdict(services.like(session, _me(), post_id))


@party.delete("/posts/<uuid:post_id>/like")
@require_roles()
@party.response(200, LikeOut)
@party.doc(security=BEARER)
def unlike_post(post_id: uuid.UUID):
    """取消点赞（没有点过赞也无妨）。"""
    with _transaction() as session:
        return asdict(services.unlike(session, _me(), post_id))


@party.get("/posts/<uuid:post_id>/comments")
@require_roles()
@party.arguments(PageQuery, location="query")
@party.response(200, CommentPageOut)
@party.doc(security=BEARER)
def list_post_comments(args: dict[str, Any], post_id: uuid.UUID):
    """动态的评论（从早到晚）；本人待审核的评论也会显示。"""
    me = _me()
    with _transaction() as session:
        services.get_post(session, me, post_id)
        items, cursor = services.comments_page(
            session,
            post_id=post_id,
            viewer_id=me.id,
            cursor=args["cursor"],
            limit=args["limit"] or _settings().comments_page_size,
        )
        views = services.comment_views(session, items, public=False, viewer_id=me.id)
    return {"items": views, "next_cursor": cursor}


@party.post("/posts/<uuid:post_id>/comments")
@require_roles()
@party.arguments(CommentIn)
@party.response(201, CommentOut)
@party.doc(security=BEARER)
def comment_post(body: dict[str, Any], post_id: uuid.UUID):
    """评论动态（登录用户；不超过 500 字，含审核词的先审核）。"""
    me = _me()
    with _transaction() as session:
        comment = services.comment_on_post(session, _settings(), me, post_id, body["text"])
        return services.comment_views(session, [comment], public=False, viewer_id=me.id)[0]
