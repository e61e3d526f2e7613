"""Helpers shared by dispatch's tests (imported by conftest and the test modules)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from dispatch.settings import DispatchSettings
from shared.events import Envelope

# The seed article's table (DESIGN.md): 2,811 reports from Feb 2022, 2,750 completed.
SEED = {
    "admin_affairs": 160,
    "road_traffic": 319,
    "neighbor_dispute": 99,
    "medical_elderly": 202,
    "water_power": 1287,
    "other": 744,
}


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


@dataclass
class SeedReports:
    ids: list[uuid.UUID]  # in the order reported
    open_ids: set[uuid.UUID]
    done_ids: list[uuid.UUID]
    late_ids: list[uuid.UUID]


def load_seed_reports(db, town: Township) -> SeedReports:
    """The seed's 2,811 reports, 2,750 of them completed (97.83 %). The first report of each
    category goes through the real handler, the rest in one bulk insert of the same rows. 61 stay
    open (5 of them assigned at township level and overdue); the done ones took (k % 48) + 1
    hours, alternately resolved and closed."""
    from dispatch.handlers import handle_issue_reported
    from dispatch.models import Issue

    start = datetime(2022, 2, 1, tzinfo=UTC)
    bulk: list[dict] = []
    with db.transaction() as session:
        n = 0
        for category, count in SEED.items():
            for k in range(count):
                village = town.village1 if n % 3 else town.village2
                data = report_data(
                    village, category=category, reported_at=start + timedelta(minutes=n)
                )
                if k == 0:
                    handle_issue_reported(session, envelope("issue.reported", data))
                else:
                    bulk.append(
                        {
                            "id": uuid.UUID(data["issue_id"]),
                            "reporter_id": uuid.UUID(data["reporter_id"]),
                            "category": category,
                            "description": data["description"],
                            "village_id": village,
                            "reported_at": start + timedelta(minutes=n),
                            "state": "reported",
                            "level": "grid",
                        }
                    )
                n += 1
        session.execute(sa.insert(Issue), bulk)
    with db.transaction() as session:
        ids = list(session.scalars(sa.select(Issue.id).order_by(Issue.reported_at)))
        open_ids = set(ids[::46][:61])
        done_ids = [i for i in ids if i not in open_ids]
        for k in range(48):
            group = done_ids[k::48]
            session.execute(
                sa.update(Issue)
                .where(Issue.id.in_(group))
                .values(
                    state="closed" if k % 2 else "resolved",
                    resolved_at=Issue.reported_at + sa.literal(timedelta(hours=k + 1), sa.Interval),
                    assignee_id=town.worker1.id,
                    due_at=Issue.reported_at + sa.literal(timedelta(days=3), sa.Interval),
                )
            )
        late = ids[::46][:5]
        session.execute(
            sa.update(Issue)
            .where(Issue.id.in_(late))
            .values(
                state="assigned", due_at=datetime.now(UTC) - timedelta(hours=1), level="township"
            )
        )
    return SeedReports(ids=ids, open_ids=open_ids, done_ids=done_ids, late_ids=late)
