"""Scoring's worker over the real broker: dispatch's events in, points and points.awarded out,
and a redelivered ``issue.resolved`` counted once."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pika
import pytest
import sqlalchemy as sa
from scoring_helpers import Dispatch, settings_with

from scoring.app import create_app
from scoring.handlers import SUBSCRIPTIONS, use_settings
from scoring.models import Issue, PointsEntry, ScoreTotal
from shared.consumer import Consumer
from shared.events import make_envelope
from shared.relay import OutboxRelay
from shared.testing import at, wait_for

EXCHANGE = "service365.events"


@pytest.fixture
def worker_app(database_url, jwt_keys, amqp_url) -> Iterator[dict]:
    """scoring's app plus its relay and consumer threads on a fresh vhost, and a listener."""
    settings = settings_with(
        database_url, jwt_keys, rabbitmq_url=amqp_url, consumer_retry_delays_ms=[50, 100]
    )
    use_settings(settings)
    app = create_app(settings)
    db = app.extensions["db"]
    consumer = Consumer(
        db,
        amqp_url,
        EXCHANGE,
        service="scoring",
        subscriptions=SUBSCRIPTIONS,
        retry_delays_ms=settings.consumer_retry_delays_ms,
    )
    consumer.declare()
    relay = OutboxRelay(db, amqp_url, EXCHANGE, service="scoring", poll_seconds=0.05)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    listen = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(listen, EXCHANGE, routing_key="points.awarded")
    stop = threading.Event()
    threads = [
        threading.Thread(target=relay.run_forever, args=(stop,), daemon=True),
        threading.Thread(target=consumer.run_forever, args=(stop,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    yield {"db": db, "channel": channel, "listen": listen}
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    relay.close()
    connection.close()
    use_settings(None)
    db.dispose()


def publish(channel, envelope: dict) -> None:
    channel.basic_publish(
        EXCHANGE,
        envelope["type"],
        json.dumps(envelope).encode(),
        pika.BasicProperties(delivery_mode=2, content_type="application/json"),
    )


def test_a_resolved_event_delivered_twice_over_the_broker_earns_once(worker_app) -> None:
    db, channel = worker_app["db"], worker_app["channel"]
    worker = uuid.uuid4()
    issue = Dispatch()
    due = at("2026-11-10T04:00:00Z")
    publish(
        channel,
        make_envelope(
            "account.upserted",
            {"user_id": str(worker), "name": "网格员刘", "roles": ["grid_worker"], "revision": 1},
            producer="intake",
        ),
    )
    publish(
        channel,
        make_envelope("issue.assigned", issue.assigned(worker, due_at=due), producer="dispatch"),
    )
    resolved = make_envelope(
        "issue.resolved",
        issue.resolved(worker, resolved_at=due - timedelta(hours=2), due_at=due, difficulty=4),
        producer="dispatch",
    )
    publish(channel, resolved)
    publish(channel, resolved)  # the broker redelivers: the same envelope, the same id

    def awarded() -> dict | None:
        method, _props, body = channel.basic_get(worker_app["listen"], auto_ack=True)
        return json.loads(body) if method else None

    message = wait_for(awarded, timeout=15)
    assert message["data"]["user_id"] == str(worker) and message["data"]["points"] == 4

    def total() -> int | None:
        with db.transaction() as session:
            row = session.get(ScoreTotal, ("month:2026-11", worker))
            return row.points if row else None

    assert wait_for(total) == 4
    # A marker event after the duplicate: once it is applied, the duplicate was handled too.
    publish(
        channel,
        make_envelope(
            "account.upserted",
            {"user_id": str(uuid.uuid4()), "name": "标记", "roles": [], "revision": 1},
            producer="intake",
        ),
    )
    table = db.metadata.tables["processed_events"]

    def processed() -> int:
        with db.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()

    wait_for(lambda: processed() == 4)
    with db.transaction() as session:
        count = session.scalar(sa.select(sa.func.count()).select_from(PointsEntry))
    assert count == 1
    assert total() == 4
    assert awarded() is None


def test_a_reopen_that_overtakes_its_resolution_still_claws_the_points_back(worker_app) -> None:
    db, channel = worker_app["db"], worker_app["channel"]
    worker = uuid.uuid4()
    issue = Dispatch()
    due = at("2026-11-10T04:00:00Z")
    assigned = issue.assigned(worker, due_at=due)
    resolved = issue.resolved(worker, resolved_at=due - timedelta(hours=2), due_at=due)
    reopened = issue.reopened()
    publish(channel, make_envelope("issue.assigned", assigned, producer="dispatch"))

    def assignment_known() -> bool:
        with db.transaction() as session:
            return session.scalar(sa.select(sa.func.count()).select_from(PointsEntry)) == 0 and (
                session.get(Issue, issue.issue_id) is not None
            )

    wait_for(assignment_known)
    # A retry delayed the resolution: the reopen that undoes it arrives first.
    # In the month it was earned (a reopen is clawed back in its own month, whenever the test
    # runs: the month earned is not rewritten).
    publish(
        channel,
        make_envelope(
            "issue.reopened", reopened, producer="dispatch", occurred_at=due + timedelta(days=1)
        ),
    )
    publish(channel, make_envelope("issue.resolved", resolved, producer="dispatch"))

    def entries() -> list[tuple[str, int]]:
        with db.transaction() as session:
            rows = session.execute(sa.select(PointsEntry.rule_code, PointsEntry.points)).all()
            return sorted((row.rule_code, row.points) for row in rows)

    wait_for(lambda: len(entries()) == 2, timeout=15)
    assert entries() == [("reopen_clawback", -4), ("resolved_on_time", 4)]
    with db.transaction() as session:
        assert session.get(ScoreTotal, ("month:2026-11", worker)).points == 0
