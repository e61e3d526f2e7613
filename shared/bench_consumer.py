"""Measure the consumer: events/s applied (inbox claim + a one-row handler, one transaction each).

Fills the service's queue with N envelopes first, then times one consumer draining it. Uses the
local PostgreSQL and RabbitMQ of the test fixtures (a throwaway database and vhost, removed
afterwards)::

    .venv/bin/python -m shared.bench_consumer --events 20000
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--prefetch", type=int, default=20)
    args = parser.parse_args()

    with throwaway_backends(metadata) as (amqp_url, db):
        consumer = Consumer(
            db,
            amqp_url,
            EXCHANGE,
            service="bench",
            subscriptions={"issue.reported": handle_issue_reported},
            prefetch=args.prefetch,
        )
        consumer.declare()
        _fill(amqp_url, args.events)

        def applied() -> int:
            with db.engine.connect() as conn:
                return conn.execute(sa.select(sa.func.count()).select_from(demo_notes)).scalar()

        stop = threading.Event()
        thread = threading.Thread(target=consumer.run_forever, args=(stop,), daemon=True)
        started = time.perf_counter()
        thread.start()
        wait_for(lambda: applied() >= args.events, timeout=3600, interval=0.05)
        elapsed = time.perf_counter() - started
        stop.set()
        thread.join(timeout=30)
        print(
            f"consumer, prefetch {args.prefetch}, one transaction per event with its inbox row: "
            f"{args.events} events in {elapsed:.2f}s = {args.events / elapsed:,.0f} events/s"
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
