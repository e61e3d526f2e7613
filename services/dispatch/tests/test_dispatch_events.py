"""Dispatch's worker end to end on the real broker and database: intake's events in through the
consumer (each applied once), dispatch's events out through the outbox relay."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime

import pika
import pytest
import sqlalchemy as sa
from dispatch_helpers import assign, post, report_data, settings_with

from dispatch.app import create_app
from dispatch.handlers import SUBSCRIPTIONS, use_settings
from dispatch.models import Issue, Staff
from shared.events import make_envelope
from shared.testing import wait_for
from shared.worker import declare_queues, run_worker


@pytest.fixture
def live(database_url, amqp_url, jwt_keys):
    """A dispatch app and its worker (consumer + relay) on a fresh vhost, plus a tap queue that
    sees everything dispatch publishes."""
    settings = settings_with(database_url, jwt_keys, rabbitmq_url=amqp_url, relay_poll_seconds=0.05)
    use_settings(settings)
    app = create_app(settings)
    db = app.extensions["db"]
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.exchange_declare(settings.events_exchange, exchange_type="topic", durable=True)
    tap = channel.queue_declare("", exclusive=True).method.queue
    for key in ("issue.*", "village.*"):
        channel.queue_bind(tap, settings.events_exchange, routing_key=key)
    declare_queues(settings, db, SUBSCRIPTIONS)  # bound before the test publishes anything
    stop = threading.Event()
    worker = threading.Thread(
        target=run_worker, args=(settings, db, SUBSCRIPTIONS), kwargs={"stop": stop}
    )
    worker.start()

    def publish(event_type: str, data: dict, envelope: dict | None = None) -> dict:
        envelope = envelope or make_envelope(event_type, data, producer="intake")
        channel.basic_publish(
            settings.events_exchange,
            event_type,
            json.dumps(envelope).encode(),
            pika.BasicProperties(content_type="application/json", delivery_mode=2),
        )
        return envelope

    seen: list[dict] = []

    def received(event_type: str) -> list[dict]:
        while True:
            method, _props, body = channel.basic_get(tap, auto_ack=True)
            if method is None:
                break
            seen.append(json.loads(body))
        return [e for e in seen if e["type"] == event_type]

    yield app, db, publish, received
    stop.set()
    worker.join(timeout=30)
    connection.close()
    use_settings(None)
    db.dispose()


def test_events_in_through_the_consumer_and_out_through_the_relay(live, person, issuer):
    app, db, publish, received = live
    client = app.test_client()
    admin = person("admin", name="乡管理员")
    worker_id = uuid.uuid4()
    publish(
        "account.upserted",
        {
            "user_id": str(worker_id),
            "username": "wgy001",
            "name": "网格员马",
            "roles": ["grid_worker"],
            "phone": "13800000000",
            "village_id": None,
            "active": True,
            "openid": None,
        },
    )
    village = uuid.uuid4()
    data = report_data(village)
    envelope = publish("issue.reported", data)
    publish("issue.reported", data, envelope)  # a redelivery changes nothing

    def known() -> bool:
        with db.transaction() as session:
            staff = session.get(Staff, worker_id)
            issue = session.get(Issue, uuid.UUID(data["issue_id"]))
            return staff is not None and issue is not None

    wait_for(known, timeout=15)
    with db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Issue)) == 1
        assert session.get(Staff, worker_id).name == "网格员马"

    token, _ = issuer.issue(worker_id, ["grid_worker"], "网格员马")
    worker = type("W", (), {"id": worker_id, "headers": {"Authorization": f"Bearer {token}"}})
    assert assign(client, data["issue_id"], admin, worker).status_code == 200
    assert post(client, f"/api/v1/issues/{data['issue_id']}/start", worker).status_code == 200
    resolved = post(
        client, f"/api/v1/issues/{data['issue_id']}/resolve", worker, {"note": "已修好。"}
    )
    assert resolved.status_code == 200
    wait_for(lambda: received("issue.resolved"), timeout=15)
    assigned = received("issue.assigned")[0]
    assert assigned["producer"] == "dispatch"
    assert assigned["data"]["assignee_id"] == str(worker_id)

    publish(
        "issue.rated",
        {
            "issue_id": data["issue_id"],
            "reporter_id": data["reporter_id"],
            "rating": "satisfied",
            "comment": "很满意",
            "rated_at": datetime.now(UTC).isoformat(),
        },
    )
    closed = wait_for(lambda: received("issue.closed"), timeout=15)
    assert closed[0]["data"]["rating"] == "satisfied"

    created = post(client, "/api/v1/villages", admin, {"code": "V99", "name": "测试村"})
    assert created.status_code == 201
    announced = wait_for(lambda: received("village.upserted"), timeout=15)
    assert announced[0]["data"]["name"] == "测试村"
