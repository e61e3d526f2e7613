"""News (魅力沙口集): who writes, submits, publishes and archives; public reads with ETags;
pinned first; scheduled publishing; the edit history; views counted in batches."""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa
from feed_helpers import outbox

from feed import services
from feed.models import Article
from shared.clock import utcnow
from shared.testing import wait_for


def _write(client, who, **fields) -> dict:
    body = {"title": "东沙口集村完成主街道路面硬化", "category": "progress", "body": "路修好了。"}
    body.update(fields)
    answer = client.post("/api/v1/news", json=body, headers=who.headers)
    assert answer.status_code == 201, answer.json
    return answer.json


def test_a_resident_and_a_party_member_cannot_write_news(client, person) -> None:
    for role in ("resident", "party_member", "grid_worker"):
        someone = person(role)
        answer = client.post(
            "/api/v1/news",
            json={"title": "标题", "category": "notice", "body": "正文"},
            headers=someone.headers,
        )
        assert answer.status_code == 403, role
        assert answer.json["error"]["message"] == "您没有权限进行此操作。"


def test_a_publicist_cannot_publish_without_an_admins_approval(client, newsroom) -> None:
    publicist, admin = newsroom["publicist"], newsroom["admin"]
    article = _write(client, publicist)
    assert article["state"] == "draft"
    article_id = article["id"]

    refused = client.post(f"/api/v1/news/{article_id}/publish", json={}, headers=publicist.headers)
    assert refused.status_code == 403
    assert client.get(f"/api/v1/news/{article_id}").status_code == 404

    submitted = client.post(f"/api/v1/news/{article_id}/submit", json={}, headers=publicist.headers)
    assert submitted.json["state"] == "in_review"
    # Still not public, and the publicist still may not publish it.
    assert client.get(f"/api/v1/news/{article_id}").status_code == 404
    again = client.post(f"/api/v1/news/{article_id}/publish", json={}, headers=publicist.headers)
    assert again.status_code == 403
    # While it waits for review only an admin may change it.
    edit = client.patch(
        f"/api/v1/news/{article_id}", json={"title": "改过的标题"}, headers=publicist.headers
    )
    assert edit.status_code == 409
    assert "只有管理员可以修改" in edit.json["error"]["message"]

    published = client.post(f"/api/v1/news/{article_id}/publish", json={}, headers=admin.headers)
    assert published.status_code == 200
    assert published.json["state"] == "published"
    assert client.get(f"/api/v1/news/{article_id}").status_code == 200
    assert [h["action"] for h in published.json["history"]] == [
        "written",
        "submitted",
        "published",
    ]


def test_a_party_member_can_not_publish_news_either(client, person, newsroom) -> None:
    article = _write(client, newsroom["publicist"])
    member = person("party_member")
    answer = client.post(f"/api/v1/news/{article['id']}/publish", json={}, headers=member.headers)
    assert answer.status_code == 403


def test_an_admin_returns_an_article_with_a_reason_and_the_author_edits_it_again(
    client, newsroom
) -> None:
    publicist, admin = newsroom["publicist"], newsroom["admin"]
    article_id = _write(client, publicist)["id"]
    client.post(f"/api/v1/news/{article_id}/submit", json={}, headers=publicist.headers)

    no_reason = client.post(
        f"/api/v1/news/{article_id}/return", json={"reason": "  "}, headers=admin.headers
    )
    assert no_reason.status_code == 422
    assert no_reason.json["error"]["message"] == "请填写原因。"
    returned = client.post(
        f"/api/v1/news/{article_id}/return",
        json={"reason": "数据需要核实"},
        headers=admin.headers,
    )
    assert returned.json["state"] == "draft"
    edited = client.patch(
        f"/api/v1/news/{article_id}",
        json={"body": "核实后的正文。", "note": "按要求修改"},
        headers=publicist.headers,
    )
    assert edited.status_code == 200
    history = edited.json["history"]
    assert [h["action"] for h in history] == ["written", "submitted", "returned", "edited"]
    assert history[2]["note"] == "数据需要核实" and history[2]["actor_name"] == "管理员"
    assert history[3]["body_markdown"] == "核实后的正文。"
    assert history[0]["body_markdown"] == "路修好了。"


def test_another_publicist_may_not_change_someone_elses_draft(client, newsroom, person) -> None:
    article_id = _write(client, newsroom["publicist"])["id"]
    colleague = person("publicist", name="另一位宣传员")
    answer = client.patch(
        f"/api/v1/news/{article_id}", json={"title": "抢改"}, headers=colleague.headers
    )
    assert answer.status_code == 403
    submit = client.post(f"/api/v1/news/{article_id}/submit", json={}, headers=colleague.headers)
    assert submit.status_code == 403


def test_both_publicist_and_admin_archive_and_archived_news_is_gone_from_public(
    client, newsroom, published_article
) -> None:
    first = published_article(title="第一篇")
    second = published_article(title="第二篇")
    for article, who in ((first, newsroom["publicist"]), (second, newsroom["admin"])):
        answer = client.post(f"/api/v1/news/{article['id']}/archive", json={}, headers=who.headers)
        assert answer.status_code == 200 and answer.json["state"] == "archived"
        assert client.get(f"/api/v1/news/{article['id']}").status_code == 404
    assert client.get("/api/v1/news").json["items"] == []
    twice = client.post(
        f"/api/v1/news/{first['id']}/archive", json={}, headers=newsroom["admin"].headers
    )
    assert twice.status_code == 409


def test_anyone_reads_published_news_pinned_first_then_newest_by_category(
    client, published_article, newsroom
) -> None:
    old = published_article(title="旧通知", category="notice")
    pinned = published_article(title="置顶的重点工作", category="key_work", pinned=True)
    new = published_article(title="新动态", category="progress")
    # A draft is never listed.
    _write(client, newsroom["publicist"], title="草稿")

    listed = client.get("/api/v1/news")
    assert listed.status_code == 200
    assert [i["id"] for i in listed.json["items"]] == [pinned["id"], new["id"], old["id"]]
    assert listed.json["items"][0]["category_label"] == "重点工作"
    by_category = client.get("/api/v1/news?category=notice").json["items"]
    assert [i["id"] for i in by_category] == [old["id"]]
    bad = client.get("/api/v1/news?category=gossip")
    assert bad.status_code == 422
    assert "栏目应为" in str(bad.json["error"]["details"])

    page_one = client.get("/api/v1/news?limit=2").json
    page_two = client.get(f"/api/v1/news?limit=2&cursor={page_one['next_cursor']}").json
    assert [i["id"] for i in page_one["items"] + page_two["items"]] == [
        pinned["id"],
        new["id"],
        old["id"],
    ]
    assert page_two["next_cursor"] is None


def test_public_reads_answer_304_to_a_matching_etag_and_a_new_tag_after_a_change(
    client, published_article, newsroom
) -> None:
    article = published_article()
    first = client.get(f"/api/v1/news/{article['id']}")
    assert first.status_code == 200
    assert first.headers["Cache-Control"] == "public, max-age=60"
    etag = first.headers["ETag"]
    assert etag.startswith('W/"')
    again = client.get(f"/api/v1/news/{article['id']}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""

    listing = client.get("/api/v1/news")
    list_tag = listing.headers["ETag"]
    assert client.get("/api/v1/news", headers={"If-None-Match": list_tag}).status_code == 304

    client.patch(
        f"/api/v1/news/{article['id']}",
        json={"title": "更正后的标题", "note": "更正"},
        headers=newsroom["admin"].headers,
    )
    changed = client.get(f"/api/v1/news/{article['id']}", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json["title"] == "更正后的标题"
    assert client.get("/api/v1/news", headers={"If-None-Match": list_tag}).status_code == 200


def test_views_are_written_in_batches_not_one_write_per_read(
    client, app, db, published_article
) -> None:
    article = published_article()
    counter = app.extensions["view_counter"]
    for _ in range(30):
        assert client.get(f"/api/v1/news/{article['id']}").status_code == 200

    def stored() -> int:
        with db.transaction() as session:
            return session.scalar(sa.select(Article.views).where(Article.id == article["id"]))

    assert stored() == 0  # thirty reads, no write yet
    assert counter.pending() == 30
    assert counter.flush() == 30
    assert stored() == 30
    assert client.get(f"/api/v1/news/{article['id']}").json["views"] == 30


def test_the_view_buffer_writes_once_the_batch_is_full(db, published_article) -> None:
    article_id = uuid.UUID(published_article()["id"])
    counter = services.ViewCounter(db, every_seconds=3600, every_views=10)
    for _ in range(25):
        counter.add(article_id)
    with db.transaction() as session:
        assert session.get(Article, article_id).views == 20
    assert counter.pending() == 5
    counter.close()
    with db.transaction() as session:
        assert session.get(Article, article_id).views == 25


def test_the_last_views_of_a_quiet_article_are_written_within_the_interval(
    db, published_article
) -> None:
    """No later reader is needed: the timer writes what waits once the interval has passed."""
    article_id = uuid.UUID(published_article()["id"])
    counter = services.ViewCounter(db, every_seconds=0.2, every_views=1000)
    try:
        for _ in range(3):
            counter.add(article_id)

        def stored() -> int:
            with db.transaction() as session:
                return session.get(Article, article_id).views

        wait_for(lambda: stored() == 3, timeout=10)
        assert counter.pending() == 0
    finally:
        counter.close()


def test_a_scheduled_article_goes_out_when_its_time_comes(client, db, newsroom) -> None:
    admin = newsroom["admin"]
    article_id = _write(client, newsroom["publicist"], title="春节放假通知")["id"]
    client.post(f"/api/v1/news/{article_id}/submit", json={}, headers=newsroom["publicist"].headers)
    when = utcnow() + timedelta(hours=2)
    scheduled = client.post(
        f"/api/v1/news/{article_id}/publish",
        json={"publish_at": when.isoformat()},
        headers=admin.headers,
    )
    assert scheduled.json["state"] == "scheduled"
    assert client.get(f"/api/v1/news/{article_id}").status_code == 404
    assert outbox(db, "news.published") == []

    with db.transaction() as session:
        assert services.publish_due(session, utcnow()) == []
    with db.transaction() as session:
        assert services.publish_due(session, when + timedelta(seconds=1)) == [uuid.UUID(article_id)]
    with db.transaction() as session:
        assert services.publish_due(session, when + timedelta(minutes=5)) == []
    assert client.get(f"/api/v1/news/{article_id}").status_code == 200
    events = outbox(db, "news.published")
    assert len(events) == 1 and events[0]["data"]["id"] == article_id
    assert events[0]["data"]["published_by"] == str(admin.id)


def test_the_desk_lists_every_state_for_writers_only(client, newsroom, person) -> None:
    _write(client, newsroom["publicist"], title="草稿一")
    desk = client.get("/api/v1/news/desk?state=draft", headers=newsroom["admin"].headers)
    assert desk.status_code == 200 and [i["title"] for i in desk.json["items"]] == ["草稿一"]
    assert client.get("/api/v1/news/desk", headers=person("resident").headers).status_code == 403
    assert client.get("/api/v1/news/desk").status_code == 401


def test_a_body_shows_only_our_own_photos_and_publishing_names_them(client, db, newsroom) -> None:
    ours, cover = uuid.uuid4(), uuid.uuid4()
    body = (
        f"![现场](/api/v1/media/{ours})\n\n![外链](https://evil.example/x.png)\n\n"
        "<img src=/api/v1/media/not-a-uuid>"
    )
    article = _write(client, newsroom["admin"], body=body, cover_media_id=str(cover))
    assert f'src="/api/v1/media/{ours}"' in article["body_html"]
    assert "evil.example" not in article["body_html"]
    assert "not-a-uuid" not in article["body_html"]
    client.post(f"/api/v1/news/{article['id']}/publish", json={}, headers=newsroom["admin"].headers)
    (event,) = outbox(db, "news.published")
    assert event["data"]["media_ids"] == [str(cover), str(ours)]
    assert event["data"]["cover_media_id"] == str(cover)
    assert set(event["data"]) >= {
        "id",
        "title",
        "category",
        "author_id",
        "published_at",
        "cover_media_id",
    }


def test_oversized_news_texts_are_refused_with_a_clear_message(client, newsroom) -> None:
    long_title = client.post(
        "/api/v1/news",
        json={"title": "长" * 101, "category": "notice"},
        headers=newsroom["publicist"].headers,
    )
    assert long_title.status_code == 422
    assert long_title.json["error"]["message"] == "标题最多 100 个字，现在有 101 个字。"
    long_body = client.post(
        "/api/v1/news",
        json={"title": "标题", "category": "notice", "body": "字" * 20001},
        headers=newsroom["publicist"].headers,
    )
    assert long_body.status_code == 422
    assert "正文最多 20000 个字" in long_body.json["error"]["message"]
