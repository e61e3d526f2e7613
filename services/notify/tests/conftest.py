"""Fixtures for notify's tests: a fresh PostgreSQL database per test (cloned from a migrated
template), signed tokens, and people known to notify as ``account.upserted`` makes them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from notify_helpers import Person, settings_with

from notify.app import create_app
from notify.handlers import SUBSCRIPTIONS, handle_account_upserted, use_settings
from notify.settings import NotifySettings
from shared.testing import envelope


@pytest.fixture
def database_url(fresh_database) -> str:
    return fresh_database("notify")


@pytest.fixture
def settings(database_url, jwt_keys) -> NotifySettings:
    return settings_with(database_url, jwt_keys)


@pytest.fixture
def app(settings):
    app = create_app(settings)
    app.config["TESTING"] = True
    use_settings(settings)
    yield app
    use_settings(None)
    app.extensions["db"].dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def db(app):
    return app.extensions["db"]


@pytest.fixture
def person(db, issuer) -> Callable[..., Person]:
    """``person("grid_worker", name="王强", village_id=v)``: known to notify through the real
    ``account.upserted`` handler (with a phone and, for residents, an openid), and signed in."""

    def make(
        *roles: str,
        name: str = "张三",
        village_id: uuid.UUID | None = None,
        phone: str | None = "13800000000",
        openid: str | None = None,
        known: bool = True,
    ) -> Person:
        user_id = uuid.uuid4()
        if known:
            data = {
                "user_id": str(user_id),
                "name": name,
                "roles": list(roles),
                "village_id": str(village_id) if village_id else None,
                "active": True,
                "revision": 1,
                "phone": phone,
                "openid": openid
                if openid is not None
                else (f"openid-{user_id.hex[:12]}" if "resident" in roles else None),
            }
            with db.transaction() as session:
                handle_account_upserted(
                    session, envelope("account.upserted", data, producer="intake")
                )
        token, _ = issuer.issue(user_id, roles, name)
        return Person(user_id, name, tuple(roles), {"Authorization": f"Bearer {token}"})

    return make


@pytest.fixture
def feed(db) -> Callable[..., uuid.UUID]:
    """``feed("issue.resolved", data, event_id=...)``: one event through its handler, in its own
    transaction, as the consumer runs it; returns the event id."""

    def apply(
        event_type: str,
        data: dict[str, Any],
        *,
        at: datetime | None = None,
        event_id: uuid.UUID | None = None,
        producer: str = "dispatch",
    ) -> uuid.UUID:
        event = envelope(event_type, data, occurred_at=at, event_id=event_id, producer=producer)
        with db.transaction() as session:
            SUBSCRIPTIONS[event_type](session, event)
        return event.id

    return apply


# The fake WeChat / SMS / webhook server of the delivery tests (tests/fake_providers.py).
from fake_providers import fake_provider  # noqa: E402, F401
