"""Helpers shared by notify's tests: people, envelopes, settings, a dispatch issue builder."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from notify.settings import NotifySettings
from shared.events import Envelope


@dataclass
class Person:
    id: uuid.UUID
    name: str
    roles: tuple[str, ...]
    headers: dict[str, str] = field(default_factory=dict)


def at(text: str) -> datetime:
    """``at("2026-11-30T15:59:59Z")``: an aware UTC time."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def envelope(
    event_type: str,
    data: dict[str, Any],
    *,
    occurred_at: datetime | None = None,
    event_id: uuid.UUID | None = None,
    producer: str = "dispatch",
) -> Envelope:
    return Envelope(
        id=event_id or uuid.uuid4(),
        type=event_type,
        version=1,
        occurred_at=occurred_at or datetime.now(UTC),
        producer=producer,
        correlation_id=str(uuid.uuid4()),
        data=data,
    )


def settings_with(database_url: str, jwt_keys, **overrides: Any) -> NotifySettings:
    values: dict[str, Any] = {
        "app_env": "test",
        "database_url": database_url,
        "rabbitmq_url": "amqp://guest:guest@127.0.0.1:5672/%2F",
        "jwt_public_key_file": jwt_keys[1],
        "log_format": "text",
    }
    values.update(overrides)
    return NotifySettings(**values)
