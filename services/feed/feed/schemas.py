"""Marshmallow schemas for feed's routes: what each accepts and answers (times in Asia/Shanghai).

Length limits of texts and photo counts are checked in ``feed.domain`` (one clear Chinese
message naming the limit); here they are only documented (``maxLength``, ``maxItems``).
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, fields, pre_dump, validate

from feed import domain
from shared.clock import LocalDateTime
from shared.fields import OutSchema, Text

CATEGORY_ERROR = "栏目应为 key_work（重点工作）、progress（工作动态）或 notice（通知公告）。"
TAG_ERROR = "标签应为 activity（组织活动）、good_deed（党员好事）或 study（学习）。"


class _In(Schema):
    class Meta:
        unknown = RAISE


class _Query(Schema):
    class Meta:
        unknown = EXCLUDE


class PageQuery(_Query):
    cursor = fields.String(load_default=None, validate=validate.Length(max=1400))
    limit = fields.Integer(
        load_default=None,
        validate=validate.Range(min=1, max=100),
        metadata={"description": "每页条数（1–100）；不填为该列表的默认页长。"},
    )


class _View(OutSchema):
    """Dumps a view ``{"<root>": model, "extra": ...}`` as one flat object."""

    ROOT = ""

    @pre_dump
    def _flatten(self, view: dict[str, Any], **_kwargs: Any) -> dict[str, Any]:
        obj = view[self.ROOT]
        data = {name: getattr(obj, name) for name in self.fields if hasattr(obj, name)}
        data.update({key: value for key, value in view.items() if key != self.ROOT})
        return data


# --- news ----------------------------------------------------------------------------------------


class NewsQuery(PageQuery):
    category = fields.String(
        load_default=None,
        validate=validate.OneOf(list(domain.CATEGORIES), error=CATEGORY_ERROR),
        metadata={"description": "栏目：key_work 重点工作、progress 工作动态、notice 通知公告"},
    )


class ArticleSummaryOut(_View):
    ROOT = "article"
    id = fields.UUID()
    title = Text()
    summary = Text(allow_none=True)
    category = fields.String()
    category_label = fields.String()
    cover_media_id = fields.UUID(allow_none=True)
    cover_url = fields.String(allow_none=True, metadata={"description": "封面照片地址（intake）"})
    pinned = fields.Boolean(metadata={"description": "置顶"})
    author_name = Text()
    published_at = LocalDateTime(allow_none=True)
    views = fields.Integer(metadata={"description": "阅读数（分批写入，略有延迟）"})
    comment_count = fields.Integer(metadata={"description": "显示中的评论数"})


class ArticleOut(ArticleSummaryOut):
    body_html = fields.String(
        metadata={"description": "正文 HTML：由 Markdown 生成并净化，只含本系统的照片"}
    )


class NewsPageOut(OutSchema):
    items = fields.List(fields.Nested(ArticleSummaryOut))
    next_cursor = fields.String(allow_none=True)


class ArticleIn(_In):
    title = Text(required=True, metadata={"maxLength": domain.TITLE_MAX})
    summary = Text(load_default=None, allow_none=True, metadata={"maxLength": domain.SUMMARY_MAX})
    body = Text(
        load_default="",
        metadata={
            "maxLength": domain.BODY_MAX,
            "description": "正文（Markdown）。图片只能引用本系统的照片 /api/v1/media/<id>，"
            "其他图片、脚本和 HTML 事件属性会被去掉。",
        },
    )
    category = fields.String(
        required=True, validate=validate.OneOf(list(domain.CATEGORIES), error=CATEGORY_ERROR)
    )
    cover_media_id = fields.UUID(load_default=None, allow_none=True)
    pinned = fields.Boolean(load_default=False, metadata={"description": "置顶（发布后生效）"})


class ArticlePatch(_In):
    title = Text(metadata={"maxLength": domain.TITLE_MAX})
    summary = Text(allow_none=True, metadata={"maxLength": domain.SUMMARY_MAX})
    body = Text(metadata={"maxLength": domain.BODY_MAX})
    category = fields.String(validate=validate.OneOf(list(domain.CATEGORIES), error=CATEGORY_ERROR))
    cover_media_id = fields.UUID(allow_none=True)
    pinned = fields.Boolean()
    note = Text(
        load_default=None,
        allow_none=True,
        validate=validate.Length(max=domain.REASON_MAX),
        metadata={"description": "修改说明（记入修改记录）"},
    )


class NoteIn(_In):
    note = Text(load_default=None, allow_none=True, validate=validate.Length(max=domain.REASON_MAX))


class ReasonIn(_In):
    reason = Text(
        required=True,
        metadata={"maxLength": domain.REASON_MAX, "description": "原因（记录在案）"},
    )


class PublishIn(NoteIn):
    publish_at = LocalDateTime(
        load_default=None,
        allow_none=True,
        metadata={"description": "定时发布时间（北京时间）；不填或已过则立即发布"},
    )


class DeskQuery(NewsQuery):
    state = fields.String(
        load_default=None,
        validate=validate.OneOf(list(domain.STATES), error="状态无效。"),
        metadata={"description": "draft、in_review、scheduled、published、archived"},
    )


class HistoryOut(OutSchema):
    version = fields.Integer()
    action = fields.String(
        metadata={
            "description": "written 撰写、edited 修改、submitted 送审、returned 退回、"
            "scheduled 定时、published 发布、archived 归档"
        }
    )
    state = fields.String()
    actor_id = fields.UUID(allow_none=True)
    actor_name = Text()
    note = Text(allow_none=True)
    title = Text()
    body_markdown = Text()
    category = fields.String()
    cover_media_id = fields.UUID(allow_none=True)
    pinned = fields.Boolean()
    publish_at = LocalDateTime(allow_none=True)
    at = LocalDateTime()


class EditorArticleOut(ArticleOut):
    author_id = fields.UUID()
    state = fields.String()
    state_label = fields.String()
    body_markdown = Text()
    body_media_ids = fields.List(fields.String())
    publish_at = LocalDateTime(allow_none=True)
    published_by = fields.UUID(allow_none=True)
    archived_at = LocalDateTime(allow_none=True)
    version = fields.Integer()
    created_at = LocalDateTime()
    updated_at = LocalDateTime()


class EditorDetailOut(EditorArticleOut):
    history = fields.List(fields.Nested(HistoryOut), metadata={"description": "修改记录"})


class DeskPageOut(OutSchema):
    items = fields.List(fields.Nested(EditorArticleOut))
    next_cursor = fields.String(allow_none=True)


# --- comments ------------------------------------------------------------------------------------


class CommentIn(_In):
    text = Text(required=True, metadata={"maxLength": domain.COMMENT_MAX})


class CommentOut(_View):
    ROOT = "comment"
    id = fields.UUID()
    text = Text()
    author_name = Text(metadata={"description": "新闻评论只显示姓氏（张**）"})
    state = fields.String(
        metadata={"description": "visible 已显示；pending 待审核（只有本人看得到）"}
    )
    mine = fields.Boolean(metadata={"description": "是否本人的评论"})
    created_at = LocalDateTime()


class CommentPageOut(OutSchema):
    items = fields.List(fields.Nested(CommentOut))
    next_cursor = fields.String(allow_none=True)


class ModerationQuery(PageQuery):
    state = fields.String(
        load_default="pending",
        validate=validate.OneOf(["pending", "hidden"], error="状态应为 pending 或 hidden。"),
        metadata={"description": "pending 待审核（默认）；hidden 已屏蔽"},
    )


class ModerationCommentOut(CommentOut):
    author_id = fields.UUID()
    article_id = fields.UUID(allow_none=True)
    post_id = fields.UUID(allow_none=True)
    held_words = fields.List(fields.String(), metadata={"description": "命中的审核词"})
    moderation_reason = Text(allow_none=True)
    moderated_by = fields.UUID(allow_none=True)
    moderated_at = LocalDateTime(allow_none=True)


class ModerationPageOut(OutSchema):
    items = fields.List(fields.Nested(ModerationCommentOut))
    next_cursor = fields.String(allow_none=True)


# --- the party feed ------------------------------------------------------------------------------


class PostIn(_In):
    text = Text(required=True, metadata={"maxLength": domain.POST_TEXT_MAX})
    photo_ids = fields.List(
        fields.UUID(),
        load_default=list,
        metadata={"maxItems": domain.POST_PHOTOS_MAX, "description": "照片（intake 的 media id）"},
    )
    tag = fields.String(required=True, validate=validate.OneOf(list(domain.TAGS), error=TAG_ERROR))
    village_id = fields.UUID(
        load_default=None, allow_none=True, metadata={"description": "所属村；不填为本人所在村"}
    )


class FeedQuery(PageQuery):
    village_id = fields.UUID(load_default=None)
    tag = fields.String(
        load_default=None,
        validate=validate.OneOf(list(domain.TAG_LABELS), error=TAG_ERROR),
        metadata={"description": "activity、good_deed、study；honor_board 为红黑榜"},
    )


class BoardRowOut(OutSchema):
    user_id = fields.UUID()
    name = Text()
    points = fields.Integer()
    rank = fields.Integer()


class BoardOut(OutSchema):
    period = fields.String()
    top = fields.List(fields.Nested(BoardRowOut))
    bottom = fields.List(fields.Nested(BoardRowOut))


class PostOut(_View):
    ROOT = "post"
    id = fields.UUID()
    author_id = fields.UUID(allow_none=True, metadata={"description": "乡里发布的为 null"})
    author_name = Text()
    text = Text()
    photo_ids = fields.List(fields.String())
    photo_urls = fields.List(fields.String())
    tag = fields.String()
    tag_label = fields.String()
    village_id = fields.UUID(allow_none=True)
    village_name = Text(allow_none=True)
    state = fields.String(metadata={"description": "published；hidden（管理员和作者可见）"})
    hidden_reason = Text(allow_none=True)
    like_count = fields.Integer()
    comment_count = fields.Integer()
    liked_by_me = fields.Boolean()
    board = fields.Nested(BoardOut, allow_none=True, metadata={"description": "红黑榜（仅乡里帖）"})
    published_at = LocalDateTime()


class PostPageOut(OutSchema):
    items = fields.List(fields.Nested(PostOut))
    next_cursor = fields.String(allow_none=True)


class LikeOut(OutSchema):
    post_id = fields.UUID()
    liked = fields.Boolean()
    like_count = fields.Integer()
