"""Events feed takes in (the monthly 红黑榜, accounts, villages) through the real handlers, and
that a token is refused once its account changed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from feed_helpers import board, outbox
from marshmallow import ValidationError

from feed.models import Person, Post, Village


def test_the_monthly_board_becomes_one_township_post_however_often_it_comes(
    client, db, feed_event, person
) -> None:
    data = board("month:2026-11")
    first = feed_event("leaderboard.published", data)
    # scoring's --force re-publishes with a new event id; a redelivery repeats the old one.
    feed_event("leaderboard.published", board("month:2026-11"))
    feed_event("leaderboard.published", data, event_id=first)
    with db.transaction() as session:
        posts = session.scalars(sa.select(Post)).all()
    assert len(posts) == 1
    post = posts[0]
    assert post.tag == "honor_board" and post.author_id is None and post.village_id is None
    assert post.text.splitlines()[:3] == ["2026年11月网格员积分红黑榜", "红榜：", "第1名 王强 28分"]
    assert "黑榜：" in post.text and "第167名 赵六 1分" in post.text
    listed = client.get("/api/v1/posts?tag=honor_board", headers=person("resident").headers)
    item = listed.json["items"][0]
    assert item["tag_label"] == "红黑榜" and item["author_name"] == "沙口集乡"
    assert [r["name"] for r in item["board"]["top"]] == ["王强", "李娜"]
    (event,) = outbox(db, "post.published")
    assert event["data"]["tag"] == "honor_board" and event["data"]["author_id"] is None
    feed_event("leaderboard.published", board("month:2026-12"))
    with db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Post)) == 2


def test_a_board_event_that_is_not_a_month_is_refused_for_the_dlq(feed_event) -> None:
    with pytest.raises(ValidationError):
        feed_event("leaderboard.published", board("quarter:2026-Q4"))


def test_only_newer_account_and_village_revisions_apply(db, feed_event) -> None:
    user, village = uuid.uuid4(), uuid.uuid4()

    def account(revision: int, name: str) -> None:
        feed_event(
            "account.upserted",
            {"user_id": str(user), "name": name, "roles": ["party_member"], "revision": revision},
            producer="intake",
        )

    account(3, "新名字")
    account(2, "旧名字")
    feed_event(
        "village.upserted",
        {"village_id": str(village), "name": "新村名", "revision": 5},
        producer="dispatch",
    )
    feed_event(
        "village.upserted",
        {"village_id": str(village), "name": "旧村名", "revision": 4},
        producer="dispatch",
    )
    with db.transaction() as session:
        assert session.get(Person, user).name == "新名字"
        assert session.get(Village, village).name == "新村名"
    account(4, "再改名")
    with db.transaction() as session:
        assert session.get(Person, user).name == "再改名"


def test_a_token_of_a_disabled_or_demoted_account_is_refused(client, feed_event, person) -> None:
    member = person("party_member")
    assert client.get("/api/v1/posts", headers=member.headers).status_code == 200
    feed_event(
        "account.upserted",
        {
            "user_id": str(member.id),
            "name": member.name,
            "roles": ["resident"],
            "active": True,
            "revision": 2,
            "tokens_valid_after": (datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
        },
        producer="intake",
    )
    answer = client.get("/api/v1/posts", headers=member.headers)
    assert answer.status_code == 401 and answer.json["error"]["code"] == "token_revoked"
    # Someone feed has not heard of yet is let in on their signed token.
    assert (
        client.get("/api/v1/posts", headers=person("resident", known=False).headers).status_code
        == 200
    )


def test_an_authors_new_name_shows_on_their_older_posts(client, feed_event, person) -> None:
    member = person("party_member", name="旧名")
    client.post("/api/v1/posts", json={"text": "动态", "tag": "study"}, headers=member.headers)
    feed_event(
        "account.upserted",
        {"user_id": str(member.id), "name": "新名", "roles": ["party_member"], "revision": 2},
        producer="intake",
    )
    items = client.get("/api/v1/posts", headers=person("resident").headers).json["items"]
    assert items[0]["author_name"] == "新名"
