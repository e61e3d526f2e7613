"""feed's worker over the real broker: scoring's 红黑榜 in (twice, posted once), and the
relay sending ``post.published`` and ``news.published`` out."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator

import pika
import pytest
import sqlalchemy as sa
from feed_helpers import board, settings_with

from feed.app import create_app
from feed.handlers import SUBSCRIPTIONS
from feed.models import Post
from shared.consumer import Consumer
from shared.events import make_envelope
from shared.relay import OutboxRelay
from shared.testing import wait_for

EXCHANGE = "service365.events"


@pytest.fixture
def worker_app(database_url, jwt_keys, amqp_url) -> Iterator[dict]:
    """feed's app plus its relay and consumer threads on a fresh vhost, and a listener."""
    settings = settings_with(
        database_url, jwt_keys, rabbitmq_url=amqp_url, consumer_retry_delays_ms=[50, 100]
    )
    app = create_app(settings)
    db = app.extensions["db"]
    consumer = Consumer(
        db,
        amqp_url,
        EXCHANGE,
        service="feed",
        subscriptions=SUBSCRIPTIONS,
        retry_delays_ms=settings.consumer_retry_delays_ms,
    )
    consumer.declare()
    relay = OutboxRelay(db, amqp_url, EXCHANGE, service="feed", poll_seconds=0.05)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    listen = channel.queue_declare("", exclusive=True).method.queue
    for key in ("post.published", "news.published"):
        channel.queue_bind(listen, EXCHANGE, routing_key=key)
    stop = threading.Event()
    threads = [
        threading.Thread(target=relay.run_forever, args=(stop,), daemon=True),
        threading.Thread(target=consumer.run_forever, args=(stop,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    yield {"app": app, "db": db, "channel": channel, "listen": listen}
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    relay.close()
    connection.close()
    app.extensions["view_counter"].close()
    db.dispose()


def publish(channel, envelope: dict) -> None:
    channel.basic_publish(
        EXCHANGE,
        envelope["type"],
        json.dumps(envelope).encode(),
        pika.BasicProperties(delivery_mode=2, content_type="application/json"),
    )


def test_a_board_delivered_twice_over_the_broker_is_posted_once_and_announced(
    worker_app,
) -> None:
    db, channel = worker_app["db"], worker_app["channel"]
    envelope = make_envelope("leaderboard.published", board("month:2026-10"), producer="scoring")
    publish(channel, envelope)
    publish(channel, envelope)  # the broker redelivers: the same envelope, the same id

    def received() -> dict | None:
        method, _props, body = channel.basic_get(worker_app["listen"], auto_ack=True)
        return json.loads(body) if method else None

    message = wait_for(received, timeout=15)
    assert message["type"] == "post.published" and message["producer"] == "feed"
    assert message["data"]["tag"] == "honor_board"
    # A marker event after the duplicate: once it is applied, the duplicate was handled too.
    marker = uuid.uuid4()
    publish(
        channel,
        make_envelope(
            "account.upserted",
            {"user_id": str(marker), "name": "标记", "roles": [], "revision": 1},
            producer="intake",
        ),
    )
    table = db.metadata.tables["processed_events"]

    def processed() -> int:
        with db.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()

    wait_for(lambda: processed() == 2, timeout=15)
    with db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Post)) == 1
    assert received() is None


def test_published_news_goes_out_through_the_relay(worker_app, issuer) -> None:
    client = worker_app["app"].test_client()
    admin_id = uuid.uuid4()
    token, _ = issuer.issue(admin_id, ["admin"], "管理员")
    headers = {"Authorization": f"Bearer {token}"}
    written = client.post(
        "/api/v1/news", json={"title": "通知", "category": "notice"}, headers=headers
    ).json
    client.post(f"/api/v1/news/{written['id']}/publish", json={}, headers=headers)

    def received() -> dict | None:
        method, _props, body = worker_app["channel"].basic_get(worker_app["listen"], auto_ack=True)
        return json.loads(body) if method else None

    message = wait_for(received, timeout=15)
    assert message["type"] == "news.published"
    assert message["data"]["id"] == written["id"] and message["data"]["category"] == "notice"
