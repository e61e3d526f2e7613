"""Helpers shared by dispatch's tests (imported by conftest and the test modules)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from dispatch.settings import DispatchSettings
from shared.events import Envelope


@dataclass
class Person:
    id: uuid.UUID
    name: str
    roles: tuple[str, ...]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Township:
    admin: Person
    admin2: Person
    area_leader: Person
    supervisor: Person
    resident: Person
    leader1: Person
    worker1: Person
    worker2: Person
    leader2: Person
    worker3: Person
    village1: uuid.UUID
    village2: uuid.UUID
    grid1: uuid.UUID
    grid2: uuid.UUID
    department: uuid.UUID


def envelope(event_type: str, data: dict[str, Any]) -> Envelope:
    return Envelope(
        id=uuid.uuid4(),
        type=event_type,
        version=1,
        occurred_at=datetime.now(UTC),
        producer="intake",
        correlation_id=str(uuid.uuid4()),
        data=data,
    )


def report_data(
    village_id: uuid.UUID,
    *,
    category: str = "water_power",
    reporter_id: uuid.UUID | None = None,
    reported_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "issue_id": str(uuid.uuid4()),
        "reporter_id": str(reporter_id or uuid.uuid4()),
        "category": category,
        "description": "村东头自来水管破裂，已经漏水两天了。",
        "village_id": str(village_id),
        "address": "沙口集村东街 12 号",
        "lat": 36.2,
        "lon": 115.1,
        "photo_ids": [],
        "reported_at": (reported_at or datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        "ticket_no": "SKJ-20260301-0001",
    }


def outbox(db, event_type: str | None = None) -> list[dict[str, Any]]:
    """The envelopes dispatch wrote, oldest first (optionally of one type)."""
    table = db.metadata.tables["outbox"]
    stmt = sa.select(table.c.envelope).order_by(table.c.created_at)
    if event_type:
        stmt = stmt.where(table.c.event_type == event_type)
    with db.engine.connect() as conn:
        return [row[0] for row in conn.execute(stmt)]


def post(client, path: str, who: Person, body: dict[str, Any] | None = None):
    return client.post(path, json=body or {}, headers=who.headers)


def assign(client, issue_id, who: Person, assignee: Person, **extra: Any):
    body = {"assignee_id": str(assignee.id), "difficulty": 3, **extra}
    return post(client, f"/api/v1/issues/{issue_id}/assign", who, body)


def settings_with(database_url: str, jwt_keys, **overrides: Any) -> DispatchSettings:
    values: dict[str, Any] = {
        "app_env": "test",
        "database_url": database_url,
        "rabbitmq_url": "amqp://guest:guest@127.0.0.1:5672/%2F",
        "jwt_public_key_file": jwt_keys[1],
        "log_format": "text",
        "callback_sample_share": 0.0,
    }
    values.update(overrides)
    return DispatchSettings(**values)
