"""The feed's rules, free of Flask and the database: news categories and states and who moves
them, the party feed's tags and limits, the moderation word list, Markdown bodies rendered to
safe HTML, and the monthly 红黑榜 as a township post."""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import markdown
import nh3

# --- news (魅力沙口集) ---------------------------------------------------------------------------

CATEGORIES = {"key_work": "重点工作", "progress": "工作动态", "notice": "通知公告"}

# draft → in_review → (scheduled →) published → archived; an admin may return a draft for
# changes from review or schedule. ``scheduled`` is an approved article waiting for its time.
STATES = {
    "draft": "草稿",
    "in_review": "待审核",
    "scheduled": "定时发布",
    "published": "已发布",
    "archived": "已归档",
}
WRITERS = frozenset({"publicist", "admin"})
TITLE_MAX = 100
BODY_MAX = 20000
SUMMARY_MAX = 200


class NotAllowed(Exception):
    """The actor may not do this (HTTP 403)."""


class WrongState(Exception):
    """The article is not in a state that allows this (HTTP 409)."""


@dataclass(frozen=True)
class Actor:
    """Who acts, as the rules need them."""

    id: uuid.UUID
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def is_writer(self) -> bool:
        return bool(self.roles & WRITERS)


def _state_text(state: str) -> str:
    return STATES.get(state, state)


def check_may_edit(actor: Actor, *, author_id: uuid.UUID, state: str) -> None:
    """A draft by its author or an admin; later states only by an admin (a correction is
    recorded in the history); an archived article not at all."""
    if not actor.is_writer:
        raise NotAllowed("只有宣传员和管理员可以编辑新闻。")
    if state == "archived":
        raise WrongState("已归档的新闻不能修改。")
    if state == "draft":
        if actor.is_admin or actor.id == author_id:
            return
        raise NotAllowed("只能修改自己撰写的草稿。")
    if not actor.is_admin:
        raise WrongState(
            f"该新闻当前状态为「{_state_text(state)}」，只有管理员可以修改；"
            "如需修改，请由管理员退回。"
        )


def check_may_submit(actor: Actor, *, author_id: uuid.UUID, state: str) -> None:
    """Its author (or an admin) sends a draft to review."""
    if not (actor.is_admin or (actor.is_writer and actor.id == author_id)):
        raise NotAllowed("只能提交自己撰写的稿件。")
    if state != "draft":
        raise WrongState(f"该新闻当前状态为「{_state_text(state)}」，只有草稿可以提交审核。")


def check_may_publish(actor: Actor, *, state: str) -> None:
    """Only an admin approves and publishes: a publicist's article never goes out unreviewed."""
    if not actor.is_admin:
        raise NotAllowed("只有管理员可以审核发布新闻。")
    if state not in ("draft", "in_review", "scheduled"):
        raise WrongState(f"该新闻当前状态为「{_state_text(state)}」，不能发布。")


def check_may_return(actor: Actor, *, state: str) -> None:
    if not actor.is_admin:
        raise NotAllowed("只有管理员可以退回稿件。")
    if state not in ("in_review", "scheduled"):
        raise WrongState(f"该新闻当前状态为「{_state_text(state)}」，不能退回。")


def check_may_archive(actor: Actor, *, state: str) -> None:
    if not actor.is_writer:
        raise NotAllowed("只有宣传员和管理员可以归档新闻。")
    if state != "published":
        raise WrongState(f"该新闻当前状态为「{_state_text(state)}」，只有已发布的新闻可以归档。")


# --- Markdown bodies: our own photos only --------------------------------------------------------

# The only images a body may show: photos kept by intake, ``/api/v1/media/<uuid>[?size=thumb]``.
MEDIA_URL = re.compile(
    r"^/api/v1/media/([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{12})(\?size=thumb)?$"
)
ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "b", "i", "u", "s",
    "del", "blockquote", "ul", "ol", "li", "a", "img", "code", "pre", "table", "thead", "tbody",
    "tr", "th", "td",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}}
_IMG_WITHOUT_SRC = re.compile(r"<img(?![^>]*\ssrc=)[^>]*>")


def _keep_attribute(tag: str, name: str, value: str) -> str | None:
    if tag == "img" and name == "src":
        return value if MEDIA_URL.match(value) else None
    return value


@dataclass(frozen=True)
class RenderedBody:
    html: str
    media_ids: list[uuid.UUID]


def render_body(text: str) -> RenderedBody:
    """Markdown → HTML, then sanitised by nh3: no script, style, event handler or
    ``javascript:`` URL survives, and an image from anywhere but our media is dropped."""
    raw = markdown.markdown(text, extensions=["extra", "sane_lists"], output_format="html")
    clean = nh3.clean(
        raw,
        tags=ALLOWED_TAGS,
        clean_content_tags={"script", "style"},
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=_keep_attribute,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    clean = _IMG_WITHOUT_SRC.sub("", clean)
    ids: list[uuid.UUID] = []
    for match in re.finditer(r'<img[^>]*\ssrc="([^"]+)"', clean):
        found = MEDIA_URL.match(match.group(1).replace("&amp;", "&"))
        if found:
            media_id = uuid.UUID(found.group(1))
            if media_id not in ids:
                ids.append(media_id)
    return RenderedBody(clean, ids)


def media_url(media_id: uuid.UUID | None) -> str | None:
    return f"/api/v1/media/{media_id}" if media_id else None


# --- the party feed (党建朋友圈) ----------------------------------------------------------------

TAGS = {"activity": "组织活动", "good_deed": "党员好事", "study": "学习"}
# The township's own post of the monthly 红黑榜 (from scoring); nobody posts it by hand.
BOARD_TAG = "honor_board"
TAG_LABELS = {**TAGS, BOARD_TAG: "红黑榜"}
POSTERS = frozenset({"party_member", "grid_leader", "admin"})
POST_TEXT_MAX = 1000
POST_PHOTOS_MAX = 9
COMMENT_MAX = 500
EXCERPT_LENGTH = 60
REASON_MAX = 200


def text_problem(label: str, text: str, maximum: int) -> str | None:
    """The Chinese message when a text is empty or longer than ``maximum`` characters."""
    if not text.strip():
        return f"请填写{label}。"
    if len(text) > maximum:
        return f"{label}最多 {maximum} 个字，现在有 {len(text)} 个字。"
    return None


def comment_problem(text: str) -> str | None:
    return text_problem("评论", text, COMMENT_MAX)


def post_problems(text: str, photo_ids: Sequence[uuid.UUID]) -> dict[str, str]:
    """What is wrong with a new post, by field (empty: nothing)."""
    problems = {}
    message = text_problem("动态内容", text, POST_TEXT_MAX)
    if message:
        problems["text"] = message
    if len(photo_ids) > POST_PHOTOS_MAX:
        problems["photo_ids"] = (
            f"每条动态最多 {POST_PHOTOS_MAX} 张照片，现在有 {len(photo_ids)} 张。"
        )
    return problems


def article_problems(fields: dict) -> dict[str, str]:
    """What is wrong with an article's title, summary or body, by field (empty: nothing)."""
    problems = {}
    if "title" in fields:
        message = text_problem("标题", fields["title"], TITLE_MAX)
        if message:
            problems["title"] = message
    if fields.get("summary") and len(fields["summary"]) > SUMMARY_MAX:
        problems["summary"] = f"摘要最多 {SUMMARY_MAX} 个字，现在有 {len(fields['summary'])} 个字。"
    if "body" in fields and len(fields["body"]) > BODY_MAX:
        problems["body"] = f"正文最多 {BODY_MAX} 个字，现在有 {len(fields['body'])} 个字。"
    if "category" in fields and fields["category"] not in CATEGORIES:
        problems["category"] = (
            "栏目应为重点工作（key_work）、工作动态（progress）或通知公告（notice）。"
        )
    return problems


def excerpt(text: str, length: int = EXCERPT_LENGTH) -> str:
    """The first characters of a post, one line, for lists and other services' messages."""
    flat = " ".join(text.split())
    return flat if len(flat) <= length else flat[: length - 1] + "…"


def distinct(ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    seen: list[uuid.UUID] = []
    for value in ids:
        if value not in seen:
            seen.append(value)
    return seen


# --- moderation ----------------------------------------------------------------------------------

_IGNORED = re.compile(r"[\s\u200b-\u200f\u2060\ufeff·.\-_*|/\\]+")


def normalise(text: str) -> str:
    """Full-width to half-width, case folded, spaces and filler marks removed: ``赌 博``,
    ``赌*博`` and ``ＤＵ`` match like ``赌博`` and ``du``."""
    return _IGNORED.sub("", unicodedata.normalize("NFKC", text).casefold())


def reason_problem(reason: str) -> str | None:
    return text_problem("原因", reason, REASON_MAX)


def held_words(text: str, words: Sequence[str]) -> list[str]:
    """The words of the list found in ``text`` (empty: the comment shows at once)."""
    plain = normalise(text)
    return [w for w in words if normalise(w) and normalise(w) in plain]


def masked_name(name: str | None) -> str:
    """A commenter's name as the public sees it: the family name only (张**)."""
    name = (name or "").strip()
    if not name:
        return "群众"
    return name[0] + "*" * min(max(len(name) - 1, 1), 2)


# --- the monthly 红黑榜 ---------------------------------------------------------------------------

PERIOD = re.compile(r"^month:(\d{4})-(0[1-9]|1[0-2])$")


def board_title(period: str) -> str:
    match = PERIOD.match(period)
    if not match:
        raise ValueError(f"not a month: {period!r}")
    return f"{int(match.group(1))}年{int(match.group(2))}月网格员积分红黑榜"


def board_text(period: str, top: Sequence[dict], bottom: Sequence[dict]) -> str:
    """The township post of a month's board, as people read it."""
    lines = [board_title(period)]
    if top:
        lines.append("红榜：")
        lines += [f"第{r['rank']}名 {r['name'] or '网格员'} {r['points']}分" for r in top]
    if bottom:
        lines.append("黑榜：")
        lines += [f"第{r['rank']}名 {r['name'] or '网格员'} {r['points']}分" for r in bottom]
    if not top and not bottom:
        lines.append("本月暂无积分记录。")
    return excerpt_safe("\n".join(lines))


def excerpt_safe(text: str) -> str:
    """A generated post stays within the length any post may have."""
    return text if len(text) <= POST_TEXT_MAX else text[: POST_TEXT_MAX - 1] + "…"
