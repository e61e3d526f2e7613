"""Helpers shared by notify's tests: people, envelopes, settings, a dispatch issue builder."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from notify.settings import NotifySettings
from shared.testing import settings_for_test


@dataclass
class Person:
    id: uuid.UUID
    name: str
    roles: tuple[str, ...]
    headers: dict[str, str] = field(default_factory=dict)


def settings_with(database_url: str, jwt_keys, **overrides: Any) -> NotifySettings:
    return settings_for_test(NotifySettings, database_url, jwt_keys, **overrides)
