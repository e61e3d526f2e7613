"""Fixtures for the plumbing's tests: a throwaway service schema on a fresh PostgreSQL database,
the test's vhost on the real broker, and helpers to publish, count and read messages there."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pytest
import sqlalchemy as sa

from shared.db import Database, plumbing_tables
from shared.events import emit
from shared.testing import PostgresServer, RabbitServer

EXCHANGE = "service365.events"

metadata = sa.MetaData()
outbox, processed_events = plumbing_tables(metadata)
# The one demo table: what a handler or a use case changes alongside its events.
demo_notes = sa.Table(
    "demo_notes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.Uuid, nullable=True),
    sa.Column("text", sa.String(200), nullable=False),
)


@pytest.fixture
def db(postgres_server: PostgresServer) -> Iterator[Database]:
    """A ``Database`` for the demo service on a new PostgreSQL database."""
    database = Database(
        postgres_server.create_database("plumbing"), metadata=metadata, producer="demo"
    )
    metadata.create_all(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def service() -> str:
    """A service name of this test's own, so its metric series start at zero."""
    return f"demo{uuid.uuid4().hex[:8]}"


class Broker:
    """The test's side of the broker: its own connection to the test vhost."""

    def __init__(self, url: str, server: RabbitServer) -> None:
        self.url = url
        self.server = server
        self.vhost = unquote(urlsplit(url).path[1:])
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()  # a publish returns once the broker has it
        self.channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)

    def tap(self, name: str = "tap", routing_key: str = "#") -> str:
        """A queue bound to the exchange that collects what is published to it."""
        self.channel.queue_declare(name, durable=True)
        self.channel.queue_bind(name, EXCHANGE, routing_key=routing_key)
        return name

    def depth(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def drain(self, queue: str) -> list[tuple[Any, bytes]]:
        """Take every message waiting in a queue: ``(properties, body)`` pairs."""
        messages = []
        while True:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return messages
            messages.append((properties, body))

    def publish(self, body: bytes | dict[str, Any], routing_key: str, exchange: str = EXCHANGE):
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        self.channel.basic_publish(
            exchange,
            routing_key,
            body,
            pika.BasicProperties(content_type="application/json", delivery_mode=2),
        )

    def close_connections(self) -> None:
        """Force-close every connection of this vhost from the broker's side."""
        self.server.ctl(["close_all_connections", "--vhost", self.vhost, "closed by a test"])

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


@pytest.fixture
def broker(amqp_url: str, rabbit_server: RabbitServer) -> Iterator[Broker]:
    test_broker = Broker(amqp_url, rabbit_server)
    yield test_broker
    test_broker.close()


@contextmanager
def running(target: Callable[[threading.Event], None]) -> Iterator[threading.Event]:
    """Run ``relay.run_forever`` or ``consumer.run_forever`` in a thread for a ``with`` block."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target(stop)
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive(), "the loop did not stop within 15 s of being asked"
    assert not errors, f"the loop died: {errors!r}"


def write_events(db: Database, count: int, event_type: str = "demo.happened") -> list[str]:
    """Write ``count`` events (each with its demo note) the way a use case does; return ids."""
    ids = []
    with db.transaction() as session:
        for n in range(count):
            session.execute(sa.insert(demo_notes).values(text=f"change {n}"))
            ids.append(emit(session, event_type, {"n": n})["id"])
    return ids
