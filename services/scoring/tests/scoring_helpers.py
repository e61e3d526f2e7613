"""Helpers shared by scoring's tests: people, envelopes of dispatch's events, settings."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from scoring.settings import ScoringSettings
from shared.testing import settings_for_test


@dataclass
class Person:
    id: uuid.UUID
    name: str
    roles: tuple[str, ...]
    headers: dict[str, str] = field(default_factory=dict)


def settings_with(database_url: str, jwt_keys, **overrides: Any) -> ScoringSettings:
    return settings_for_test(ScoringSettings, database_url, jwt_keys, **overrides)


class Dispatch:
    """Builds dispatch's ``issue.*`` event data for one issue, counting ``issue_version``."""

    def __init__(self, issue_id: uuid.UUID | None = None) -> None:
        self.issue_id = issue_id or uuid.uuid4()
        self.version = 0
        self.resolutions = 0

    def _step(self, state: str, **data: Any) -> dict[str, Any]:
        self.version += 1
        return {
            "issue_id": str(self.issue_id),
            "issue_version": self.version,
            "snapshot": {"state": state, "level": "grid", "resolution_no": self.resolutions},
            **data,
        }

    def assigned(
        self,
        assignee: uuid.UUID,
        *,
        difficulty: int = 4,
        due_at: datetime,
        grid_id: uuid.UUID | None = None,
        grid_leader_id: uuid.UUID | None = None,
        village_id: uuid.UUID | None = None,
    ) -> dict[str, Any]:
        return self._step(
            "assigned",
            assignee_id=str(assignee),
            grid_id=str(grid_id) if grid_id else None,
            grid_leader_id=str(grid_leader_id) if grid_leader_id else None,
            village_id=str(village_id) if village_id else None,
            difficulty=difficulty,
            due_at=due_at.isoformat(),
            assigned_by=str(uuid.uuid4()),
        )

    def started(self, assignee: uuid.UUID) -> dict[str, Any]:
        return self._step("in_progress", assignee_id=str(assignee))

    def resolved(
        self,
        resolver: uuid.UUID,
        *,
        resolved_at: datetime,
        due_at: datetime,
        difficulty: int = 4,
        assignee: uuid.UUID | None = None,
    ) -> dict[str, Any]:
        self.resolutions += 1
        return self._step(
            "resolved",
            assignee_id=str(assignee or resolver),
            resolver_id=str(resolver),
            resolver_role="grid_worker",
            level="grid",
            difficulty=difficulty,
            due_at=due_at.isoformat(),
            resolved_at=resolved_at.isoformat(),
            on_time=resolved_at <= due_at,
            resolution_no=self.resolutions,
        )

    def rated(self, rating: str, *, rated_at: datetime) -> dict[str, Any]:
        return {
            "issue_id": str(self.issue_id),
            "reporter_id": str(uuid.uuid4()),
            "rating": rating,
            "comment": None,
            "rated_at": rated_at.isoformat(),
            "resolution_no": self.resolutions,
        }

    def reopened(self, reason: str = "unsatisfied") -> dict[str, Any]:
        return self._step("reopened", reason=reason, assignee_id=None)

    def callback(self, passed: bool) -> dict[str, Any]:
        return self._step(
            "resolved", supervisor_id=str(uuid.uuid4()), method="phone", passed=passed
        )
