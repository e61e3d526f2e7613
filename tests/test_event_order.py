"""Out-of-order events end in the right state, over the real broker and PostgreSQL.

Retries reorder events. Each pair below is delivered in both orders (to two issues, villages or
accounts that are otherwise alike); both must end where dispatch's newer step left them.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from dispatch.handlers import SUBSCRIPTIONS as DISPATCH_SUBSCRIPTIONS
from dispatch.models import Base as DispatchBase
from dispatch.models import Staff
from intake.models import User, Village
from shared.clock import SHANGHAI
from shared.consumer import Consumer
from shared.db import Database
from shared.events import make_envelope
from shared.testing import wait_for

VILLAGE = uuid.UUID("9d709f5c-218e-58c0-83e0-1db6b1b57b8e")
WORKER, OTHER_WORKER, LEADER, ADMIN = (uuid.uuid4() for _ in range(4))
START = datetime.now(UTC) - timedelta(hours=2)
DUE = START + timedelta(hours=24)
NEW_DUE = START + timedelta(hours=72)
VIEW_FIELDS = (
    "status",
    "level",
    "handler_name",
    "due_at",
    "resolution_note",
    "resolved_at",
    "rating",
    "closed_at",
    "reject_reason",
    "can_rate",
)


def _snapshot(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "state": "reported",
        "level": "grid",
        "assignee_id": None,
        "assignee_name": None,
        "handler_id": None,
        "handler_name": None,
        "follower_id": None,
        "follower_name": None,
        "due_at": None,
        "resolution_no": 0,
        "resolution_note": None,
        "resolution_photo_ids": [],
        "resolved_at": None,
        "rating": None,
        "closed_at": None,
        "reject_reason": None,
    }
    base.update(changes)
    return base


ASSIGNED = _snapshot(
    state="assigned", assignee_id=str(WORKER), assignee_name="王网格", due_at=DUE.isoformat()
)
STARTED = {**ASSIGNED, "state": "in_progress"}
ESCALATED = {**STARTED, "level": "township", "handler_id": str(ADMIN), "handler_name": "乡管理员"}
RESOLVED_AT = START + timedelta(minutes=50)
RESOLVED = {
    **STARTED,
    "state": "resolved",
    "resolution_no": 1,
    "resolution_note": "已回填路面并设置警示牌。",
    "resolved_at": RESOLVED_AT.isoformat(),
}
CLOSED = {**RESOLVED, "state": "closed", "rating": "satisfied", "closed_at": START.isoformat()}
REOPENED = {
    **RESOLVED,
    "state": "reopened",
    "rating": "unsatisfied",
    "assignee_id": str(OTHER_WORKER),
    "assignee_name": "李网格",
    "follower_id": str(LEADER),
    "follower_name": "赵志刚",
    "due_at": NEW_DUE.isoformat(),
}


def _life(issue_id: str) -> dict[str, dict]:
    """One issue's steps as dispatch would publish them: versions and times in step order.

    (The escalation is used only before ``started``'s pair; the later snapshots are those of a
    life without it, whose version numbers simply skip one.)
    """
    steps = [
        (
            "assigned",
            "issue.assigned",
            ASSIGNED,
            {"assignee_id": str(WORKER), "due_at": DUE.isoformat(), "difficulty": 3},
        ),
        ("started", "issue.started", STARTED, {"assignee_id": str(WORKER)}),
        (
            "escalated",
            "issue.escalated",
            ESCALATED,
            {"from_level": "grid", "to_level": "township", "reason": "需要乡里协调施工队"},
        ),
        (
            "resolved",
            "issue.resolved",
            RESOLVED,
            {"note": RESOLVED["resolution_note"], "photo_ids": [], "resolution_no": 1},
        ),
        ("closed", "issue.closed", CLOSED, {"rating": "satisfied", "closed_at": START.isoformat()}),
        (
            "reopened",
            "issue.reopened",
            REOPENED,
            {"reason": "unsatisfied", "assignee_id": str(OTHER_WORKER)},
        ),
    ]
    events = {}
    for n, (name, event_type, snapshot, data) in enumerate(steps):
        events[name] = make_envelope(
            event_type,
            {"issue_id": issue_id, **data, "issue_version": n + 2, "snapshot": snapshot},
            producer="dispatch",
            occurred_at=START + timedelta(minutes=10 * (n + 1)),
        )
    return events


@pytest.fixture
def township(intake) -> dict[str, Any]:
    """A village, a resident (signed in) and the workers and leaders intake knows."""
    db = intake["db"]
    resident = uuid.uuid4()
    with db.transaction() as session:
        session.add(Village(id=VILLAGE, name="沙口集村"))
        session.add(User(id=resident, openid="o-resident", name="张大爷", roles=["resident"]))
        session.add(User(id=WORKER, username="worker01", name="王网格", roles=["grid_worker"]))
        session.add(
            User(id=OTHER_WORKER, username="worker02", name="李网格", roles=["grid_worker"])
        )
        session.add(User(id=LEADER, username="area01", name="赵志刚", roles=["area_leader"]))
    token, _ = intake["issuer"].issue(resident, ["resident"], "张大爷")
    return {"headers": {"Authorization": f"Bearer {token}"}}


def _processed(db: Database, event_ids: list[str]) -> Callable[[], bool]:
    processed = db.metadata.tables["processed_events"]
    wanted = {uuid.UUID(i) for i in event_ids}

    def done() -> bool:
        with db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(processed.c.event_id).where(processed.c.event_id.in_(wanted))
            )
            return {row[0] for row in rows} == wanted

    return done


def _deliver_both_ways(
    intake, listener, township, setup: list[str], first: str, second: str
) -> tuple[dict, dict]:
    """Two new reports; the same steps to each, the last two in opposite orders. The views."""
    client, headers = intake["client"], township["headers"]
    views = []
    published: list[str] = []
    orders = ([*setup, first, second], [*setup, second, first])
    ids = []
    for order in orders:
        created = client.post(
            "/api/v1/issues",
            json={
                "category": "road_traffic",
                "description": "村口的路面塌了一个大坑，晚上很危险。",
                "village_id": str(VILLAGE),
            },
            headers=headers,
        )
        assert created.status_code == 201, created.json
        ids.append(created.json["id"])
        events = _life(created.json["id"])
        for name in order:
            listener.publish_envelope(events[name])
            published.append(events[name]["id"])
    wait_for(_processed(intake["db"], published), timeout=20)
    for issue_id in ids:
        view = client.get(f"/api/v1/issues/{issue_id}", headers=headers).json
        kinds = [step["kind"] for step in view["timeline"]]
        for name in (*setup, first, second):
            assert kinds.count(f"issue.{name}") == 1, kinds  # each step once, whatever the order
        views.append({field: view[field] for field in VIEW_FIELDS})
    return views[0], views[1]


def _local(moment: datetime) -> str:
    return moment.astimezone(SHANGHAI).isoformat()


def test_a_late_assigned_after_started_keeps_the_assignee_and_the_deadline(
    intake, listener, township
):
    in_order, reversed_order = _deliver_both_ways(
        intake, listener, township, [], "assigned", "started"
    )
    assert in_order == reversed_order
    assert in_order["status"] == "in_progress"
    assert in_order["handler_name"] == "王网格"
    assert in_order["due_at"] == _local(DUE)


def test_a_late_escalated_after_started_keeps_the_level_and_its_holder(intake, listener, township):
    in_order, reversed_order = _deliver_both_ways(
        intake, listener, township, ["assigned"], "started", "escalated"
    )
    assert in_order == reversed_order
    assert (in_order["status"], in_order["level"]) == ("in_progress", "township")
    assert in_order["handler_name"] == "乡管理员"


def test_a_late_resolved_after_closed_keeps_the_resolution_note(intake, listener, township):
    in_order, reversed_order = _deliver_both_ways(
        intake, listener, township, ["assigned", "started"], "resolved", "closed"
    )
    assert in_order == reversed_order
    assert (in_order["status"], in_order["rating"]) == ("closed", "satisfied")
    assert in_order["resolution_note"] == "已回填路面并设置警示牌。"
    assert in_order["resolved_at"] == _local(RESOLVED_AT)
    assert in_order["can_rate"] is False


def test_a_reopening_after_the_resolution_goes_to_the_new_assignee_in_either_order(
    intake, listener, township
):
    in_order, reversed_order = _deliver_both_ways(
        intake, listener, township, ["assigned", "started"], "resolved", "reopened"
    )
    assert in_order == reversed_order
    assert (in_order["status"], in_order["rating"]) == ("reopened", "unsatisfied")
    assert in_order["handler_name"] == "李网格"
    assert in_order["due_at"] == _local(NEW_DUE)
    assert in_order["can_rate"] is False


def test_a_stale_village_snapshot_never_undoes_a_newer_one(intake, listener):
    older, newer = uuid.uuid4(), uuid.uuid4()
    published = []
    for village_id, revisions in ((older, (1, 2)), (newer, (2, 1))):
        for revision in revisions:
            envelope = listener.publish(
                "village.upserted",
                {
                    "village_id": str(village_id),
                    "name": f"第{revision}版村名",
                    "code": "V88",
                    "area_leader_id": str(LEADER) if revision == 2 else None,
                    "revision": revision,
                },
            )
            published.append(envelope["id"])
    wait_for(_processed(intake["db"], published), timeout=20)
    with intake["db"].transaction() as session:
        for village_id in (older, newer):
            village = session.get(Village, village_id)
            assert (village.name, village.area_leader_id, village.revision) == (
                "第2版村名",
                LEADER,
                2,
            )


@pytest.fixture
def dispatch_worker(fresh_database, amqp_url) -> Iterator[Database]:
    """Dispatch's consumer on its own fresh database and the test's vhost."""
    db = Database(fresh_database("dispatch"), metadata=DispatchBase.metadata, producer="dispatch")
    consumer = Consumer(
        db,
        amqp_url,
        "service365.events",
        service="dispatch",
        subscriptions=DISPATCH_SUBSCRIPTIONS,
        retry_delays_ms=[50, 100],
    )
    consumer.declare()
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run_forever, args=(stop,), daemon=True)
    thread.start()
    yield db
    stop.set()
    thread.join(timeout=15)
    db.dispose()


def test_a_stale_account_snapshot_never_brings_a_disabled_account_back(dispatch_worker, listener):
    db = dispatch_worker
    in_order, reversed_order = uuid.uuid4(), uuid.uuid4()
    published = []
    for user_id, steps in (
        (in_order, ((1, True), (2, False))),
        (reversed_order, ((2, False), (1, True))),
    ):
        for revision, active in steps:
            envelope = listener.publish(
                "account.upserted",
                {
                    "user_id": str(user_id),
                    "username": f"w{user_id.hex[:8]}",
                    "name": "网格员马",
                    "roles": ["grid_worker"],
                    "phone": None,
                    "village_id": None,
                    "active": active,
                    "tokens_valid_after": datetime.now(UTC).isoformat() if revision == 2 else None,
                    "revision": revision,
                    "openid": None,
                },
                producer="intake",
            )
            published.append(envelope["id"])
    wait_for(_processed(db, published), timeout=20)
    with db.transaction() as session:
        for user_id in (in_order, reversed_order):
            staff = session.get(Staff, user_id)
            assert (staff.active, staff.revision) == (False, 2)
