"""Comments and their moderation: shown at once unless they match the word list; the admins'
queue; hide and restore with a recorded reason; counts follow what is shown."""

from __future__ import annotations

import sqlalchemy as sa

from feed.models import Article, ModerationAction


def _article(published_article) -> str:
    return published_article(title="东沙口集村完成主街道路面硬化")["id"]


def test_a_resident_comments_on_published_news_and_everyone_sees_it_at_once(
    client, person, published_article
) -> None:
    article_id = _article(published_article)
    resident = person("resident", name="王建国")
    answer = client.post(
        f"/api/v1/news/{article_id}/comments", json={"text": "路修得好！"}, headers=resident.headers
    )
    assert answer.status_code == 201 and answer.json["state"] == "visible"
    public = client.get(f"/api/v1/news/{article_id}/comments").json["items"]
    assert [(c["text"], c["author_name"]) for c in public] == [("路修得好！", "王**")]
    assert client.get(f"/api/v1/news/{article_id}").json["comment_count"] == 1
    assert (
        client.post(f"/api/v1/news/{article_id}/comments", json={"text": "匿名评论"}).status_code
        == 401
    )


def test_comments_on_unpublished_news_are_refused(client, person, newsroom) -> None:
    draft = client.post(
        "/api/v1/news",
        json={"title": "草稿", "category": "notice"},
        headers=newsroom["publicist"].headers,
    ).json
    answer = client.post(
        f"/api/v1/news/{draft['id']}/comments",
        json={"text": "抢先评论"},
        headers=person("resident").headers,
    )
    assert answer.status_code == 404


def test_a_comment_with_a_listed_word_waits_for_an_admin_and_only_its_author_sees_it(
    client, person, published_article
) -> None:
    article_id = _article(published_article)
    resident, neighbour, admin = person("resident"), person("resident"), person("admin")
    # Spaces and full-width letters do not hide a listed word (the list holds 赌博, 办证).
    held = client.post(
        f"/api/v1/news/{article_id}/comments",
        json={"text": "村口有人聚众 赌 博"},
        headers=resident.headers,
    )
    assert held.status_code == 201 and held.json["state"] == "pending"
    assert client.get(f"/api/v1/news/{article_id}/comments").json["items"] == []
    own = client.get(f"/api/v1/news/{article_id}/comments", headers=resident.headers).json
    assert [c["state"] for c in own["items"]] == ["pending"] and own["items"][0]["mine"]
    other = client.get(f"/api/v1/news/{article_id}/comments", headers=neighbour.headers).json
    assert other["items"] == []
    assert client.get(f"/api/v1/news/{article_id}").json["comment_count"] == 0

    assert client.get("/api/v1/moderation/comments", headers=resident.headers).status_code == 403
    queue = client.get("/api/v1/moderation/comments", headers=admin.headers).json["items"]
    assert [(c["id"], c["held_words"]) for c in queue] == [(held.json["id"], ["赌博"])]

    approved = client.post(
        f"/api/v1/comments/{held.json['id']}/restore",
        json={"reason": "是在反映问题，予以显示"},
        headers=admin.headers,
    )
    assert approved.status_code == 200 and approved.json["state"] == "visible"
    assert approved.json["moderation_reason"] == "是在反映问题，予以显示"
    assert len(client.get(f"/api/v1/news/{article_id}/comments").json["items"]) == 1
    assert client.get(f"/api/v1/news/{article_id}").json["comment_count"] == 1
    assert client.get("/api/v1/moderation/comments", headers=admin.headers).json["items"] == []


def test_admins_hide_and_restore_comments_with_a_recorded_reason(
    client, db, person, published_article
) -> None:
    article_id = _article(published_article)
    resident, admin = person("resident"), person("admin")
    comment = client.post(
        f"/api/v1/news/{article_id}/comments", json={"text": "说得对"}, headers=resident.headers
    ).json
    refused = client.post(
        f"/api/v1/comments/{comment['id']}/hide",
        json={"reason": "x"},
        headers=person("publicist").headers,
    )
    assert refused.status_code == 403
    no_reason = client.post(
        f"/api/v1/comments/{comment['id']}/hide", json={"reason": ""}, headers=admin.headers
    )
    assert no_reason.status_code == 422 and no_reason.json["error"]["message"] == "请填写原因。"
    hidden = client.post(
        f"/api/v1/comments/{comment['id']}/hide",
        json={"reason": "与新闻无关"},
        headers=admin.headers,
    )
    assert hidden.json["state"] == "hidden"
    twice = client.post(
        f"/api/v1/comments/{comment['id']}/hide", json={"reason": "再次"}, headers=admin.headers
    )
    assert twice.status_code == 409
    assert client.get(f"/api/v1/news/{article_id}/comments").json["items"] == []
    hidden_list = client.get(
        "/api/v1/moderation/comments?state=hidden", headers=admin.headers
    ).json["items"]
    assert [c["moderation_reason"] for c in hidden_list] == ["与新闻无关"]
    client.post(
        f"/api/v1/comments/{comment['id']}/restore",
        json={"reason": "误屏蔽"},
        headers=admin.headers,
    )
    assert len(client.get(f"/api/v1/news/{article_id}/comments").json["items"]) == 1
    with db.transaction() as session:
        actions = session.scalars(sa.select(ModerationAction).order_by(ModerationAction.at)).all()
        assert [(a.target_kind, a.action, a.reason) for a in actions] == [
            ("comment", "hide", "与新闻无关"),
            ("comment", "restore", "误屏蔽"),
        ]
        assert session.scalar(sa.select(Article.comment_count)) == 1


def test_post_comments_follow_the_same_moderation(client, person) -> None:
    member, resident, admin = person("party_member"), person("resident"), person("admin")
    post = client.post(
        "/api/v1/posts", json={"text": "主题党日", "tag": "activity"}, headers=member.headers
    ).json
    shown = client.post(
        f"/api/v1/posts/{post['id']}/comments", json={"text": "点赞！"}, headers=resident.headers
    )
    held = client.post(
        f"/api/v1/posts/{post['id']}/comments",
        json={"text": "快速办证，加微信"},
        headers=resident.headers,
    )
    assert (shown.json["state"], held.json["state"]) == ("visible", "pending")
    listed = client.get(f"/api/v1/posts/{post['id']}/comments", headers=member.headers).json
    assert [c["text"] for c in listed["items"]] == ["点赞！"]
    assert listed["items"][0]["author_name"] == "张三"  # signed-in readers see the whole name
    assert (
        client.get(f"/api/v1/posts/{post['id']}", headers=member.headers).json["comment_count"] == 1
    )
    queue = client.get("/api/v1/moderation/comments", headers=admin.headers).json["items"]
    assert [c["post_id"] for c in queue] == [post["id"]]
