"""Fixtures for feed's tests: a fresh PostgreSQL database per test (cloned from a migrated
template), signed tokens, and people and villages known to feed as the real handlers make them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from feed_helpers import Person, envelope, settings_with

from feed.app import create_app
from feed.handlers import SUBSCRIPTIONS
from feed.settings import FeedSettings

VILLAGE_ID = uuid.UUID("9d709f5c-218e-58c0-83e0-1db6b1b57b8e")  # 沙口集村 of the demo township


@pytest.fixture
def database_url(fresh_database) -> str:
    return fresh_database("feed")


@pytest.fixture
def settings(database_url, jwt_keys, session_amqp_url) -> FeedSettings:
    return settings_with(database_url, jwt_keys, rabbitmq_url=session_amqp_url)


@pytest.fixture
def app(settings):
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["view_counter"].close()
    app.extensions["db"].dispose()


@pytest.fixture
def signed(issuer) -> Callable[[list[str]], dict[str, str]]:
    """``signed(["admin"])``: headers of a signed-in caller with those roles."""
    users: dict[tuple[str, ...], uuid.UUID] = {}

    def headers(roles: list[str]) -> dict[str, str]:
        user_id = users.setdefault(tuple(sorted(roles)), uuid.uuid4())
        token, _ = issuer.issue(user_id, roles, "测试", VILLAGE_ID)
        return {"Authorization": f"Bearer {token}"}

    return headers


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def db(app):
    return app.extensions["db"]


@pytest.fixture
def feed_event(db) -> Callable[..., uuid.UUID]:
    """``feed_event("leaderboard.published", data)``: one event through its handler, in its own
    transaction, as the consumer runs it; returns the event id."""

    def apply(
        event_type: str,
        data: dict[str, Any],
        *,
        at: datetime | None = None,
        event_id: uuid.UUID | None = None,
        producer: str = "scoring",
    ) -> uuid.UUID:
        event = envelope(event_type, data, occurred_at=at, event_id=event_id, producer=producer)
        with db.transaction() as session:
            SUBSCRIPTIONS[event_type](session, event)
        return event.id

    return apply


@pytest.fixture
def village(feed_event) -> uuid.UUID:
    feed_event(
        "village.upserted",
        {"village_id": str(VILLAGE_ID), "name": "沙口集村", "revision": 1},
        producer="dispatch",
    )
    return VILLAGE_ID


@pytest.fixture
def person(feed_event, issuer) -> Callable[..., Person]:
    """``person("party_member", name="张三")``: known to feed through the real
    ``account.upserted`` handler, and signed in. ``known=False`` signs in without telling it."""

    def make(
        *roles: str,
        name: str = "张三",
        village_id: uuid.UUID | None = VILLAGE_ID,
        known: bool = True,
    ) -> Person:
        user_id = uuid.uuid4()
        if known:
            feed_event(
                "account.upserted",
                {
                    "user_id": str(user_id),
                    "name": name,
                    "roles": list(roles),
                    "village_id": str(village_id) if village_id else None,
                    "active": True,
                    "revision": 1,
                    "phone": "13800000000",
                },
                producer="intake",
            )
        token, _ = issuer.issue(user_id, roles, name, village_id)
        return Person(user_id, name, tuple(roles), {"Authorization": f"Bearer {token}"}, village_id)

    return make


@pytest.fixture
def newsroom(client, person) -> dict[str, Person]:
    """A publicist and an admin, and a helper pair to write and publish news."""
    return {"publicist": person("publicist", name="刘芳"), "admin": person("admin", name="管理员")}


@pytest.fixture
def published_article(client, newsroom) -> Callable[..., dict]:
    """``published_article(title=..., category=..., pinned=...)``: written by the publicist,
    submitted, published by the admin; returns the editor's view."""

    def make(**fields: Any) -> dict:
        body = {"title": "关于冬季安全用电的通知", "category": "notice", "body": "请注意用电安全。"}
        body.update(fields)
        written = client.post("/api/v1/news", json=body, headers=newsroom["publicist"].headers)
        assert written.status_code == 201, written.json
        article_id = written.json["id"]
        submitted = client.post(
            f"/api/v1/news/{article_id}/submit", json={}, headers=newsroom["publicist"].headers
        )
        assert submitted.status_code == 200, submitted.json
        published = client.post(
            f"/api/v1/news/{article_id}/publish", json={}, headers=newsroom["admin"].headers
        )
        assert published.status_code == 200, published.json
        return published.json

    return make
