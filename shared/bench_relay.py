"""Measure the outbox relay: events/s draining a backlog, against one-by-one confirms.

Uses the local PostgreSQL and RabbitMQ of the test fixtures (a throwaway database and vhost,
removed afterwards)::

    .venv/bin/python -m shared.bench_relay --events 5000 --batch-size 200
"""

from __future__ import annotations

import argparse
import json
import time

import pika

from shared.relay import OutboxRelay, pending_count
from shared.testing import throwaway_backends
from shared.tests.conftest import EXCHANGE, metadata, write_events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=200)
    args = parser.parse_args()

    with throwaway_backends(metadata) as (amqp_url, db):
        _tap(amqp_url)
        for start in range(0, args.events, 1000):
            write_events(db, min(1000, args.events - start))

        relay = OutboxRelay(db, amqp_url, EXCHANGE, service="bench", batch_size=args.batch_size)
        started = time.perf_counter()
        while relay.run_once():
            pass
        elapsed = time.perf_counter() - started
        relay.close()
        assert pending_count(db) == 0
        print(
            f"relay, batches of {args.batch_size} with confirms: {args.events} events in "
            f"{elapsed:.2f}s = {args.events / elapsed:,.0f} events/s"
        )
        single = min(args.events, 1000)
        rate = _one_by_one(amqp_url, single)
        print(f"for comparison, one blocking confirm per message: {rate:,.0f} messages/s")


def _tap(amqp_url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
    channel.queue_declare("tap", durable=True)
    channel.queue_bind("tap", EXCHANGE, routing_key="#")
    connection.close()


def _one_by_one(amqp_url: str, count: int) -> float:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    body = json.dumps({"n": 0}).encode()
    started = time.perf_counter()
    for _ in range(count):
        channel.basic_publish(
            EXCHANGE, "demo.happened", body, pika.BasicProperties(delivery_mode=2)
        )
    elapsed = time.perf_counter() - started
    connection.close()
    return count / elapsed


if __name__ == "__main__":
    main()
