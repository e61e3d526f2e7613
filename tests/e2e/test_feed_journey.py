"""Journey 3 of issue 13: the township's news and the party feed, over HTTP, with every worker
and the scheduler running in two copies.

- News: a publicist writes and submits it, the admin approves and publishes it, and anybody
  reads it without logging in.
- A party post with photos, liked (each person once) and commented on; a comment with a watched
  word waits for the admin, who lets it through.
- The monthly 红黑榜: scoring publishes it the way production does (its worker for last month by
  itself, the operator's ``publish-board`` command for a month), and feed posts it once, however
  many workers of scoring and feed run.
"""

from __future__ import annotations

from collections import Counter

import pytest

from shared.testing import wait_for
from tests.e2e.harness import Api, Township
from tests.e2e.journey_steps import (
    COPIES,
    TIMEOUT,
    dispatch_shows,
    inbox,
    report,
    settles,
    this_month,
    upload_photo,
)

pytestmark = pytest.mark.slow

SYSTEM_COPIES = COPIES


def test_news_is_written_approved_published_and_read_by_anyone_without_logging_in(
    township: Township,
):
    writer = township.account("e2e-publicist", "周宣传", "publicist")
    publicist, publicist_id = township.feed(writer), writer.user["id"]
    admin = township.feed(township.admin)
    anonymous = Api(township.harness.url("feed"))

    draft = publicist.post(
        "/api/v1/news",
        {
            "title": "沙口集乡冬季供水保障工作有序开展",
            "summary": "全乡 26 个村完成管道防冻检查。",
            "body": "## 供水保障\n\n网格员逐户检查水表和管道保温，发现问题当天处理。",
            "category": "progress",
        },
        expect=201,
    )
    article_id = draft["id"]
    assert draft["state"] == "draft"
    assert publicist.post(f"/api/v1/news/{article_id}/submit", {})["state"] == "in_review"
    public_ids = [a["id"] for a in anonymous.pages("/api/v1/news")]
    assert article_id not in public_ids, "an article under review is not public"
    anonymous.get(f"/api/v1/news/{article_id}", expect=404)

    published = admin.post(f"/api/v1/news/{article_id}/publish", {"note": "内容属实，同意发布。"})
    assert published["state"] == "published"

    listed = [a for a in anonymous.pages("/api/v1/news") if a["id"] == article_id]
    assert len(listed) == 1 and listed[0]["author_name"] == "周宣传", listed
    first = anonymous.get(f"/api/v1/news/{article_id}")
    assert first["title"] == "沙口集乡冬季供水保障工作有序开展"
    assert "<h2>供水保障</h2>" in first["body_html"]
    again = anonymous.get(f"/api/v1/news/{article_id}", headers={"If-None-Match": "x"})
    assert again["id"] == article_id and again["body_html"] == first["body_html"]
    assert (draft["author_id"], published["published_by"]) == (
        publicist_id,
        township.admin.user["id"],
    )


def test_a_party_post_with_photos_gets_likes_and_a_moderated_comment(township: Township):
    member = township.account("e2e-party", "刘党员", "party_member")
    poster = township.feed(member)
    resident = township.resident("e2e-resident-feed")
    reader = township.feed(resident)
    worker = township.feed(township.worker)
    admin = township.feed(township.admin)

    photos = [
        upload_photo(member, "volunteer-1.jpg", colour=(200, 40, 40)),
        upload_photo(member, "volunteer-2.jpg", colour=(200, 160, 40)),
    ]
    post = poster.post(
        "/api/v1/posts",
        {"text": "党员志愿服务队为独居老人清扫院落积雪。", "photo_ids": photos, "tag": "good_deed"},
        expect=201,
    )
    post_id = post["id"]
    assert post["photo_ids"] == photos and post["tag_label"] == "党员好事"
    assert len(post["photo_urls"]) == 2
    assert post_id in [p["id"] for p in reader.pages("/api/v1/posts")]

    # Two people like it; a second like by the same person changes nothing.
    assert reader.put(f"/api/v1/posts/{post_id}/like")["like_count"] == 1
    assert reader.put(f"/api/v1/posts/{post_id}/like")["like_count"] == 1
    assert worker.put(f"/api/v1/posts/{post_id}/like")["like_count"] == 2
    seen = reader.get(f"/api/v1/posts/{post_id}")
    assert (seen["like_count"], seen["liked_by_me"]) == (2, True)

    # A plain comment shows at once; one with a watched word waits for the admin.
    plain = reader.post(f"/api/v1/posts/{post_id}/comments", {"text": "为党员点赞！"}, expect=201)
    assert plain["state"] == "visible"
    held = reader.post(
        f"/api/v1/posts/{post_id}/comments",
        {"text": "村口有人聚众赌博，请网格员管一管。"},
        expect=201,
    )
    assert held["state"] == "pending"
    others = [c["id"] for c in worker.pages(f"/api/v1/posts/{post_id}/comments")]
    assert others == [plain["id"]], "nobody but its author sees a comment under review"
    assert held["id"] in [c["id"] for c in reader.pages(f"/api/v1/posts/{post_id}/comments")]

    queue = [c for c in admin.pages("/api/v1/moderation/comments") if c["id"] == held["id"]]
    assert len(queue) == 1 and queue[0]["post_id"] == post_id
    passed = admin.post(
        f"/api/v1/comments/{held['id']}/restore", {"reason": "反映的是真实情况，予以显示。"}
    )
    assert passed["state"] == "visible"
    shown = [c["id"] for c in worker.pages(f"/api/v1/posts/{post_id}/comments")]
    assert shown == [plain["id"], held["id"]]
    assert worker.get(f"/api/v1/posts/{post_id}")["comment_count"] == 2
    assert admin.pages("/api/v1/moderation/comments") == []


def board_posts(township: Township, viewer: Api) -> list[dict]:
    return township.feed(viewer).pages("/api/v1/posts", tag="honor_board")


def test_the_monthly_red_and_black_board_appears_once_as_a_township_post(township: Township):
    harness = township.harness
    worker_id = township.worker.user["id"]
    admin = township.dispatch(township.admin)

    # Last month's board was published by scoring's workers by themselves when they started
    # (both copies tried): feed posted it once.
    last = {p["board"]["period"] for p in board_posts(township, township.worker)}
    assert this_month() not in last

    # The worker earns this month's points: a report resolved on time (difficulty 2).
    resident = township.resident("e2e-resident-board")
    created = report(township, resident, "村委会门前的自来水管爆了，水流了一地。")
    issue_id = created["id"]
    dispatch_shows(admin, issue_id, state="reported")
    admin.post(
        f"/api/v1/issues/{issue_id}/assign",
        {"assignee_id": worker_id, "difficulty": 2, "due_in_hours": 24},
    )
    worker = township.dispatch(township.worker)
    worker.post(f"/api/v1/issues/{issue_id}/start", {})
    worker.post(f"/api/v1/issues/{issue_id}/resolve", {"note": "已关闭阀门并更换爆裂管段。"})
    month = this_month()

    def points_now():
        board = township.scoring(township.worker).get(
            "/api/v1/leaderboard", params={"period": month}
        )
        return next((r["points"] for r in board["items"] if r["id"] == worker_id), None)

    settles(points_now, 2, "the worker's points this month")

    # The operator publishes this month's board; a second run without --force does nothing.
    harness.command("scoring", "publish-board", "--period", month)
    again = harness.command("scoring", "publish-board", "--period", month)
    assert "已发布过" in again.stdout

    def posted():
        return next(
            (p for p in board_posts(township, resident) if p["board"]["period"] == month), None
        )

    post = wait_for(posted, timeout=TIMEOUT)
    year, number = month.removeprefix("month:").split("-")
    assert post["text"].startswith(f"{int(year)}年{int(number)}月网格员积分红黑榜")
    assert post["author_name"] == "沙口集乡" and post["tag_label"] == "红黑榜"
    top = post["board"]["top"]
    # The board ranks the grid's worker and leader; the leader resolved nothing this month.
    leader_id = township.grid_leader.user["id"]
    assert [(r["user_id"], r["name"], r["points"], r["rank"]) for r in top] == [
        (worker_id, "王建国", 2, 1),
        (leader_id, "李秀英", 0, 2),
    ]

    # Each month's board is one post, and each grid worker and leader is told once of it.
    periods = Counter(p["board"]["period"] for p in board_posts(township, resident))
    assert periods[month] == 1 and all(n == 1 for n in periods.values()), periods
    assert len(periods) == 2, periods

    def told_of_board(person: Api) -> int:
        link = {"type": "board", "id": month}
        return sum(
            1 for n in inbox(township, person) if n["kind"] == "leaderboard" and n["link"] == link
        )

    for person in (township.worker, township.grid_leader):
        settles(lambda p=person: told_of_board(p), 1, f"{person.who} told of the board")
    assert told_of_board(township.admin) == 0
