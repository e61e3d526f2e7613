"""Measure the consumer: events/s applied (inbox claim + a one-row handler, in batches).

Fills the service's queue with N envelopes first, then times one consumer draining it. Uses the
local PostgreSQL and RabbitMQ of the test fixtures (a throwaway database and vhost, removed
afterwards)::

    .venv/bin/python -m shared.bench_consumer --events 20000
    .venv/bin/python -m shared.bench_consumer --events 5000 --batch-size 1   # one commit each

``bench/consumers.py`` uses ``measure`` as the reference beside each service's consumer.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import pika
import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.consumer import Consumer
from shared.events import Envelope, make_envelope
from shared.testing import throwaway_backends, wait_for
from shared.tests.conftest import EXCHANGE, demo_notes, metadata


def handle_issue_reported(session: Session, event: Envelope) -> None:
    session.execute(sa.insert(demo_notes).values(event_id=event.id, text=event.type))


def measure(events: int, *, prefetch: int = 200, batch_size: int = 100) -> float:
    """Events/s one consumer applies draining a queue filled with ``events`` envelopes."""
    with throwaway_backends(metadata) as (amqp_url, db):
        consumer = Consumer(
            db,
            amqp_url,
            EXCHANGE,
            service="bench",
            subscriptions={"issue.reported": handle_issue_reported},
            prefetch=prefetch,
            batch_size=batch_size,
        )
        consumer.declare()
        _fill(amqp_url, events)

        def applied() -> int:
            with db.engine.connect() as conn:
                return conn.execute(sa.select(sa.func.count()).select_from(demo_notes)).scalar()

        stop = threading.Event()
        thread = threading.Thread(target=consumer.run_forever, args=(stop,), daemon=True)
        started = time.perf_counter()
        thread.start()
        wait_for(lambda: applied() >= events, timeout=3600, interval=0.02)
        elapsed = time.perf_counter() - started
        stop.set()
        thread.join(timeout=30)
        return events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--prefetch", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    rate = measure(args.events, prefetch=args.prefetch, batch_size=args.batch_size)
    print(
        f"consumer, prefetch {args.prefetch}, batches of up to {args.batch_size} events (one "
        f"transaction each, an inbox row per event, savepoints only after a handler failed): "
        f"{args.events} events "
        f"= {rate:,.0f} events/s"
    )


def _fill(amqp_url: str, count: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    for n in range(count):
        envelope = make_envelope("issue.reported", {"n": n}, producer="bench")
        channel.basic_publish(
            EXCHANGE,
            "issue.reported",
            json.dumps(envelope).encode(),
            pika.BasicProperties(delivery_mode=2, content_type="application/json"),
        )
    connection.close()


if __name__ == "__main__":
    main()
