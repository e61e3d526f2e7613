"""The party-building feed (党建朋友圈): who posts, the limits, reading with filters and cursors
while new posts arrive, deleting one's own post, admins hiding with a reason."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from feed_helpers import outbox

from feed.models import ModerationAction


def _post(client, who, **fields) -> dict:
    body = {"text": "支部组织党员到敬老院打扫卫生。", "tag": "activity"}
    body.update(fields)
    answer = client.post("/api/v1/posts", json=body, headers=who.headers)
    assert answer.status_code == 201, answer.json
    return answer.json


def test_party_members_grid_leaders_and_admins_post_and_residents_cannot(
    client, person, village
) -> None:
    for role in ("party_member", "grid_leader", "admin"):
        post = _post(client, person(role, name=f"{role}姓名"))
        assert post["village_id"] == str(village) and post["village_name"] == "沙口集村"
        assert post["author_name"] == f"{role}姓名"
    for role in ("resident", "publicist", "grid_worker", "supervisor"):
        answer = client.post(
            "/api/v1/posts",
            json={"text": "想发一条", "tag": "study"},
            headers=person(role).headers,
        )
        assert answer.status_code == 403, role
    assert client.post("/api/v1/posts", json={"text": "匿名", "tag": "study"}).status_code == 401


def test_a_post_over_1000_characters_is_refused_with_a_clear_chinese_message(
    client, person
) -> None:
    member = person("party_member")
    assert _post(client, member, text="字" * 1000)["text"] == "字" * 1000
    answer = client.post(
        "/api/v1/posts", json={"text": "字" * 1001, "tag": "study"}, headers=member.headers
    )
    assert answer.status_code == 422
    assert answer.json["error"]["message"] == "动态内容最多 1000 个字，现在有 1001 个字。"
    assert answer.json["error"]["details"] == {"text": "动态内容最多 1000 个字，现在有 1001 个字。"}
    empty = client.post(
        "/api/v1/posts", json={"text": "   ", "tag": "study"}, headers=member.headers
    )
    assert empty.status_code == 422 and empty.json["error"]["message"] == "请填写动态内容。"


def test_more_than_nine_photos_is_refused_with_a_clear_chinese_message(client, person) -> None:
    member = person("party_member")
    nine = [str(uuid.uuid4()) for _ in range(9)]
    assert _post(client, member, photo_ids=nine)["photo_ids"] == nine
    ten = [str(uuid.uuid4()) for _ in range(10)]
    answer = client.post(
        "/api/v1/posts",
        json={"text": "活动照片", "tag": "activity", "photo_ids": ten},
        headers=member.headers,
    )
    assert answer.status_code == 422
    assert answer.json["error"]["message"] == "每条动态最多 9 张照片，现在有 10 张。"


def test_a_comment_over_500_characters_is_refused(client, person) -> None:
    post = _post(client, person("party_member"))
    resident = person("resident")
    answer = client.post(
        f"/api/v1/posts/{post['id']}/comments", json={"text": "评" * 501}, headers=resident.headers
    )
    assert answer.status_code == 422
    assert answer.json["error"]["message"] == "评论最多 500 个字，现在有 501 个字。"


def test_a_wrong_tag_or_unknown_village_is_refused(client, person) -> None:
    member = person("party_member")
    tag = client.post("/api/v1/posts", json={"text": "x", "tag": "gossip"}, headers=member.headers)
    assert tag.status_code == 422 and "标签应为" in str(tag.json["error"]["details"])
    nowhere = client.post(
        "/api/v1/posts",
        json={"text": "x", "tag": "study", "village_id": str(uuid.uuid4())},
        headers=member.headers,
    )
    assert nowhere.status_code == 422 and nowhere.json["error"]["message"] == "没有这个村。"


def test_everyone_signed_in_reads_the_feed_newest_first_and_anonymous_does_not(
    client, person
) -> None:
    member = person("party_member")
    first, second = _post(client, member, text="第一条"), _post(client, member, text="第二条")
    listed = client.get("/api/v1/posts", headers=person("resident").headers)
    assert [p["id"] for p in listed.json["items"]] == [second["id"], first["id"]]
    assert client.get("/api/v1/posts").status_code == 401


def test_pages_have_no_duplicates_or_gaps_while_new_posts_arrive(client, person) -> None:
    member = person("party_member")
    reader = person("resident")
    original = [_post(client, member, text=f"动态 {n}")["id"] for n in range(23)]
    seen: list[str] = []
    cursor = None
    arrived = []
    while True:
        url = "/api/v1/posts?limit=5" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=reader.headers).json
        seen += [p["id"] for p in page["items"]]
        # Two new posts arrive between every two pages.
        arrived += [_post(client, member, text="新来的")["id"] for _ in range(2)]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert seen == list(reversed(original))  # every older post once, in order; no newcomer
    assert not set(arrived) & set(seen)
    # The newcomers are on top of a fresh first page.
    top = client.get("/api/v1/posts?limit=3", headers=reader.headers).json["items"]
    assert [p["id"] for p in top] == list(reversed(arrived))[:3]


def test_the_feed_filters_by_village_and_tag(client, person, feed_event, village) -> None:
    other = uuid.uuid4()
    feed_event(
        "village.upserted",
        {"village_id": str(other), "name": "东沙口集村", "revision": 1},
        producer="dispatch",
    )
    member = person("party_member")
    here_study = _post(client, member, tag="study")
    there_deed = _post(client, member, tag="good_deed", village_id=str(other))
    here_deed = _post(client, member, tag="good_deed")
    reader = person("resident").headers

    def ids(query: str) -> list[str]:
        return [p["id"] for p in client.get(f"/api/v1/posts?{query}", headers=reader).json["items"]]

    assert ids(f"village_id={village}") == [here_deed["id"], here_study["id"]]
    assert ids("tag=good_deed") == [here_deed["id"], there_deed["id"]]
    assert ids(f"village_id={other}&tag=good_deed") == [there_deed["id"]]
    assert client.get("/api/v1/posts?tag=x", headers=reader).status_code == 422


def test_authors_delete_their_own_posts_only(client, person) -> None:
    author, other = person("party_member"), person("party_member")
    post = _post(client, author)
    refused = client.delete(f"/api/v1/posts/{post['id']}", headers=other.headers)
    assert refused.status_code == 403
    assert refused.json["error"]["message"] == "只能删除自己发布的动态。"
    assert client.delete(f"/api/v1/posts/{post['id']}", headers=author.headers).status_code == 204
    assert client.get(f"/api/v1/posts/{post['id']}", headers=author.headers).status_code == 404
    assert client.get("/api/v1/posts", headers=author.headers).json["items"] == []


def test_an_admin_hides_a_post_with_a_recorded_reason_and_restores_it(client, db, person) -> None:
    author, admin, reader = person("party_member"), person("admin"), person("resident")
    post = _post(client, author)
    member = person("party_member")
    assert (
        client.post(
            f"/api/v1/posts/{post['id']}/hide", json={"reason": "x"}, headers=member.headers
        ).status_code
        == 403
    )
    no_reason = client.post(f"/api/v1/posts/{post['id']}/hide", json={}, headers=admin.headers)
    assert no_reason.status_code == 422
    hidden = client.post(
        f"/api/v1/posts/{post['id']}/hide", json={"reason": "含个人隐私"}, headers=admin.headers
    )
    assert hidden.status_code == 200 and hidden.json["state"] == "hidden"
    assert client.get(f"/api/v1/posts/{post['id']}", headers=reader.headers).status_code == 404
    mine = client.get(f"/api/v1/posts/{post['id']}", headers=author.headers).json
    assert mine["hidden_reason"] == "含个人隐私"
    assert client.get("/api/v1/posts", headers=reader.headers).json["items"] == []
    restored = client.post(
        f"/api/v1/posts/{post['id']}/restore",
        json={"reason": "已核实无隐私"},
        headers=admin.headers,
    )
    assert restored.json["state"] == "published"
    assert len(client.get("/api/v1/posts", headers=reader.headers).json["items"]) == 1
    with db.transaction() as session:
        actions = session.scalars(sa.select(ModerationAction).order_by(ModerationAction.at)).all()
        assert [(a.action, a.reason, a.actor_id) for a in actions] == [
            ("hide", "含个人隐私", admin.id),
            ("restore", "已核实无隐私", admin.id),
        ]


def test_posting_emits_post_published_with_its_fields(client, db, person) -> None:
    member = person("party_member")
    photos = [str(uuid.uuid4()), str(uuid.uuid4())]
    post = _post(client, member, text="党员好事：" + "长" * 100, tag="good_deed", photo_ids=photos)
    (event,) = outbox(db, "post.published")
    data = event["data"]
    assert event["producer"] == "feed"
    assert data["id"] == post["id"] and data["author_id"] == str(member.id)
    assert data["tag"] == "good_deed" and data["photo_ids"] == photos
    assert data["village_id"] == str(member.village_id)
    assert len(data["excerpt"]) == 60 and data["excerpt"].endswith("…")
    assert data["published_at"]
