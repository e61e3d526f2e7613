"""A resident's follow-ups across the real broker: intake and dispatch each with their relay and
consumer on one vhost. The contact phone and urging reach dispatch, a withdrawal takes the item
out of the queue, a withdrawal that races an assignment is declined and the resident's view
follows dispatch, and the callback shows in the resident's timeline."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from dispatch import services as dispatch_services
from dispatch.handlers import SUBSCRIPTIONS as DISPATCH_SUBSCRIPTIONS
from dispatch.models import Base as DispatchBase
from dispatch.models import Issue as DispatchIssue
from dispatch.models import IssueHistory
from dispatch.settings import DispatchSettings
from intake.models import User, Village
from shared.auth import Principal
from shared.consumer import Consumer
from shared.db import Database
from shared.relay import OutboxRelay
from shared.testing import wait_for

VILLAGE = uuid.UUID("9d709f5c-218e-58c0-83e0-1db6b1b57b8e")
ADMIN, WORKER = uuid.uuid4(), uuid.uuid4()


class Dispatch:
    """dispatch's consumer on a fresh database; its relay starts when the test says so."""

    def __init__(self, db: Database, amqp_url: str) -> None:
        self.db = db
        self.amqp_url = amqp_url
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.relay: OutboxRelay | None = None

    def _run(self, target) -> None:
        thread = threading.Thread(target=target, args=(self.stop,), daemon=True)
        thread.start()
        self.threads.append(thread)

    def start_consumer(self) -> None:
        consumer = Consumer(
            self.db,
            self.amqp_url,
            "service365.events",
            service="dispatch",
            subscriptions=DISPATCH_SUBSCRIPTIONS,
            retry_delays_ms=[50, 100],
        )
        consumer.declare()
        self._run(consumer.run_forever)

    def start_relay(self) -> None:
        self.relay = OutboxRelay(
            self.db, self.amqp_url, "service365.events", service="dispatch", poll_seconds=0.05
        )
        self._run(self.relay.run_forever)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)
        if self.relay is not None:
            self.relay.close()
        self.db.dispose()

    def issue(self, issue_id: str) -> DispatchIssue | None:
        with self.db.transaction() as session:
            return session.get(DispatchIssue, uuid.UUID(issue_id))

    def actions(self, issue_id: str) -> list[str]:
        with self.db.transaction() as session:
            return list(
                session.scalars(
                    sa.select(IssueHistory.action)
                    .where(IssueHistory.issue_id == uuid.UUID(issue_id))
                    .order_by(IssueHistory.occurred_at, IssueHistory.seq)
                )
            )


@pytest.fixture
def dispatch(fresh_database, amqp_url, jwt_keys) -> Iterator[Dispatch]:
    db = Database(fresh_database("dispatch"), metadata=DispatchBase.metadata, producer="dispatch")
    with db.transaction() as session:
        dispatch_services.upsert_staff(
            session, {"user_id": WORKER, "name": "王网格", "roles": ["grid_worker"]}
        )
        dispatch_services.upsert_staff(
            session, {"user_id": ADMIN, "name": "乡管理员", "roles": ["admin"]}
        )
    running = Dispatch(db, amqp_url)
    running.start_consumer()
    yield running
    running.close()


@pytest.fixture
def resident(intake) -> dict[str, str]:
    resident_id = uuid.uuid4()
    with intake["db"].transaction() as session:
        session.add(Village(id=VILLAGE, name="沙口集村"))
        session.add(User(id=resident_id, openid="o-li", name="李大爷", roles=["resident"]))
    token, _ = intake["issuer"].issue(resident_id, ["resident"], "李大爷")
    return {"Authorization": f"Bearer {token}"}


def _photo(client, headers) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (90, 90, 200)).save(buffer, "JPEG")
    answer = client.post(
        "/api/v1/media",
        data={"file": (io.BytesIO(buffer.getvalue()), "p.jpg")},
        headers=headers,
        content_type="multipart/form-data",
    )
    assert answer.status_code == 201, answer.json
    return answer.json["id"]


def _report(client, headers, **extra: Any) -> str:
    body = {"category": "road_traffic", "village_id": str(VILLAGE), **extra}
    answer = client.post("/api/v1/issues", json=body, headers=headers)
    assert answer.status_code == 201, answer.json
    return answer.json["id"]


def _arrived(dispatch: Dispatch, issue_id: str) -> DispatchIssue:
    return wait_for(lambda: dispatch.issue(issue_id), timeout=20)


def test_the_phone_and_the_urging_reach_dispatch_and_a_withdrawal_leaves_its_queue(
    intake, dispatch, resident
):
    client = intake["client"]
    phone = client.put(
        "/api/v1/me/phone", json={"phone": "13900139000", "confirm": True}, headers=resident
    )
    assert phone.status_code == 200, phone.json
    kept = _report(client, resident, description="大坑", photo_ids=[_photo(client, resident)])
    dropped = _report(client, resident, description="村口的路面塌了一个大坑。")

    issue = _arrived(dispatch, kept)
    assert (issue.contact_phone, issue.contact_name, issue.description) == (
        "13900139000",
        "李大爷",
        "大坑",
    )
    assert client.post(f"/api/v1/issues/{kept}/urge", json={}, headers=resident).status_code == 200
    details = client.post(
        f"/api/v1/issues/{kept}/details", json={"text": "晚上没有路灯。"}, headers=resident
    )
    assert details.status_code == 201
    _arrived(dispatch, dropped)
    withdrawn = client.post(
        f"/api/v1/issues/{dropped}/withdraw", json={"reason": "村里已经修好了"}, headers=resident
    )
    assert withdrawn.status_code == 200

    wait_for(lambda: dispatch.issue(dropped).state == "withdrawn", timeout=20)
    wait_for(lambda: dispatch.actions(kept)[-2:] == ["urge", "details"], timeout=20)
    assert dispatch.issue(kept).urge_count == 1
    with dispatch.db.transaction() as session:
        queue, _ = dispatch_services.queue(
            session,
            Principal(id=ADMIN, roles=frozenset({"admin"}), name="乡管理员"),
            dispatch_services.QueueFilter(),
        )
        assert [str(i.id) for i in queue] == [kept]


def test_a_withdrawal_racing_an_assignment_is_declined_and_the_resident_sees_it_go_on(
    intake, dispatch, resident, listener
):
    client = intake["client"]
    issue_id = _report(client, resident, description="村口的路面塌了一个大坑。")
    _arrived(dispatch, issue_id)
    # The admin assigns it; the news has not reached intake yet (dispatch's relay is not running).
    with dispatch.db.transaction() as session:
        dispatch_services.assign(
            session,
            DispatchSettings(app_env="test", database_url="sqlite://"),
            Principal(id=ADMIN, roles=frozenset({"admin"}), name="乡管理员"),
            uuid.UUID(issue_id),
            assignee_id=WORKER,
            difficulty=2,
        )

    withdrawn = client.post(
        f"/api/v1/issues/{issue_id}/withdraw", json={"reason": "不想等了"}, headers=resident
    )
    assert withdrawn.status_code == 200
    wait_for(lambda: dispatch.actions(issue_id)[-1] == "withdraw_declined", timeout=20)
    assert dispatch.issue(issue_id).state == "assigned"
    dispatch.start_relay()

    def followed() -> dict | None:
        detail = client.get(f"/api/v1/issues/{issue_id}", headers=resident).json
        titles = [s["title"] for s in detail["timeline"]]
        return detail if "撤回未成功" in titles and detail["status"] == "assigned" else None

    detail = wait_for(followed, timeout=20)
    assert detail["handler_name"] == "王网格"


def test_the_callback_reaches_the_residents_timeline_without_the_supervisors_notes(
    intake, resident, listener
):
    client = intake["client"]
    issue_id = _report(client, resident, description="村口的路面塌了一个大坑。")
    listener.publish(
        "issue.callback_recorded",
        {
            "issue_id": issue_id,
            "supervisor_id": str(uuid.uuid4()),
            "method": "phone",
            "lawful": True,
            "implemented": True,
            "accepted": True,
            "passed": True,
            "notes": "仅供督导组内部参考",
            "recorded_at": datetime.now(UTC).isoformat(),
        },
    )

    def shown() -> dict | None:
        detail = client.get(f"/api/v1/issues/{issue_id}", headers=resident)
        titles = [s["title"] for s in detail.json["timeline"]]
        return detail if "督导组电话回访：满意" in titles else None

    detail = wait_for(shown, timeout=20)
    assert "仅供督导组内部参考" not in detail.get_data(as_text=True)
