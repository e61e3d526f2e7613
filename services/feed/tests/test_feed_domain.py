"""The feed's rules alone: who moves an article, Markdown made safe, the word list, the board."""

from __future__ import annotations

import uuid

import pytest

from feed import domain

AUTHOR = uuid.uuid4()


def actor(*roles: str, me: uuid.UUID | None = None) -> domain.Actor:
    return domain.Actor(me or uuid.uuid4(), frozenset(roles))


def test_only_an_admin_publishes_and_from_draft_review_or_schedule_only() -> None:
    with pytest.raises(domain.NotAllowed):
        domain.check_may_publish(actor("publicist"), state="in_review")
    for state in ("draft", "in_review", "scheduled"):
        domain.check_may_publish(actor("admin"), state=state)
    for state in ("published", "archived"):
        with pytest.raises(domain.WrongState):
            domain.check_may_publish(actor("admin"), state=state)


def test_a_publicist_edits_and_submits_only_their_own_draft() -> None:
    domain.check_may_edit(actor("publicist", me=AUTHOR), author_id=AUTHOR, state="draft")
    domain.check_may_submit(actor("publicist", me=AUTHOR), author_id=AUTHOR, state="draft")
    with pytest.raises(domain.NotAllowed):
        domain.check_may_edit(actor("publicist"), author_id=AUTHOR, state="draft")
    with pytest.raises(domain.WrongState):
        domain.check_may_edit(actor("publicist", me=AUTHOR), author_id=AUTHOR, state="published")
    domain.check_may_edit(actor("admin"), author_id=AUTHOR, state="published")
    with pytest.raises(domain.WrongState):
        domain.check_may_edit(actor("admin"), author_id=AUTHOR, state="archived")
    with pytest.raises(domain.NotAllowed):
        domain.check_may_edit(actor("party_member", me=AUTHOR), author_id=AUTHOR, state="draft")


def test_both_writers_archive_only_what_is_published() -> None:
    domain.check_may_archive(actor("publicist"), state="published")
    domain.check_may_archive(actor("admin"), state="published")
    with pytest.raises(domain.WrongState):
        domain.check_may_archive(actor("admin"), state="draft")
    with pytest.raises(domain.NotAllowed):
        domain.check_may_archive(actor("resident"), state="published")


def test_markdown_keeps_formatting_and_our_photos_and_drops_everything_dangerous() -> None:
    ours = uuid.uuid4()
    rendered = domain.render_body(
        f"## 小标题\n\n**加粗** [链接](https://example.cn) ![图](/api/v1/media/{ours}?size=thumb)"
        "\n\n<script>alert(1)</script><img src=x onerror=alert(1)>"
        "[坏链接](javascript:alert(1)) ![外图](http://evil/x.png)"
    )
    assert "<h2>小标题</h2>" in rendered.html and "<strong>加粗</strong>" in rendered.html
    assert 'href="https://example.cn"' in rendered.html
    assert rendered.media_ids == [ours]
    for bad in ("script", "onerror", "javascript", "evil", 'src="x"'):
        assert bad not in rendered.html


def test_the_word_list_sees_through_spaces_width_and_filler_marks() -> None:
    words = ["赌博", "Spam"]
    assert domain.held_words("村口有人赌 博", words) == ["赌博"]
    assert domain.held_words("赌*博", words) == ["赌博"]
    assert domain.held_words("ＳＰＡＭ来了", words) == ["Spam"]
    assert domain.held_words("路灯坏了", words) == []
    assert domain.held_words("任何话", []) == []


def test_names_on_public_comments_show_the_family_name_only() -> None:
    assert domain.masked_name("王建国") == "王**"
    assert domain.masked_name("李四") == "李*"
    assert domain.masked_name("") == "群众"


def test_the_board_post_names_the_month_and_both_lists() -> None:
    text = domain.board_text(
        "month:2026-03",
        [{"rank": 1, "name": "王强", "points": 30}],
        [{"rank": 9, "name": "", "points": -2}],
    )
    assert text.splitlines() == [
        "2026年3月网格员积分红黑榜",
        "红榜：",
        "第1名 王强 30分",
        "黑榜：",
        "第9名 网格员 -2分",
    ]
    assert domain.board_text("month:2026-04", [], []).endswith("本月暂无积分记录。")
    with pytest.raises(ValueError):
        domain.board_title("year:2026")


def test_limits_say_what_is_wrong_in_chinese() -> None:
    assert domain.post_problems("好", [uuid.uuid4()] * 3) == {}
    problems = domain.post_problems("字" * 1001, [uuid.uuid4() for _ in range(10)])
    assert problems == {
        "text": "动态内容最多 1000 个字，现在有 1001 个字。",
        "photo_ids": "每条动态最多 9 张照片，现在有 10 张。",
    }
    assert domain.comment_problem("评" * 501) == "评论最多 500 个字，现在有 501 个字。"
