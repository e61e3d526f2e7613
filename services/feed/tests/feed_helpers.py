"""Helpers shared by feed's tests: people, envelopes, settings, outbox reads."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from feed.settings import FeedSettings
from shared.events import Envelope
from shared.testing import envelope as shared_envelope
from shared.testing import settings_for_test

# Markup that must stay text wherever it is shown.
SCRIPT = (
    '<script>alert("x")</script><img src=x onerror=alert(1)><a href="javascript:alert(2)">点我</a>'
)


@dataclass
class Person:
    id: uuid.UUID
    name: str
    roles: tuple[str, ...]
    headers: dict[str, str] = field(default_factory=dict)
    village_id: uuid.UUID | None = None


def envelope(event_type: str, data: dict[str, Any], **kwargs: Any) -> Envelope:
    """An event as the consumer hands it over; feed's come from scoring unless said."""
    kwargs.setdefault("producer", "scoring")
    return shared_envelope(event_type, data, **kwargs)


def settings_with(database_url: str, jwt_keys, **overrides: Any) -> FeedSettings:
    values: dict[str, Any] = {
        "moderation_words": ["赌博", "办证"],
        # Views are written when a test says so (flush) unless it sets smaller numbers.
        "view_flush_seconds": 3600,
        "view_flush_views": 100000,
    }
    values.update(overrides)
    return settings_for_test(FeedSettings, database_url, jwt_keys, **values)


def outbox(db, event_type: str | None = None) -> list[dict]:
    """The envelopes feed wrote to its outbox, oldest first."""
    table = db.metadata.tables["outbox"]
    stmt = sa.select(table.c.envelope).order_by(table.c.created_at)
    if event_type:
        stmt = stmt.where(table.c.event_type == event_type)
    with db.engine.connect() as conn:
        return [row.envelope for row in conn.execute(stmt)]


def board(period: str = "month:2026-11", **extra: Any) -> dict[str, Any]:
    """scoring's ``leaderboard.published`` data for one month."""
    return {
        "period": period,
        "top": [
            {"user_id": str(uuid.uuid4()), "name": "王强", "points": 28, "rank": 1},
            {"user_id": str(uuid.uuid4()), "name": "李娜", "points": 25, "rank": 2},
        ],
        "bottom": [{"user_id": str(uuid.uuid4()), "name": "赵六", "points": 1, "rank": 167}],
        **extra,
    }
