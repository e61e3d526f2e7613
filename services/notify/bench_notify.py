"""Measure notify: events/s turned into inbox rows and pending deliveries by the real consumer,
then deliveries/s sent to a local webhook receiver by the worker's sender.

A throwaway database (notify's tables) and vhost on the local PostgreSQL and RabbitMQ; a
township of one admin and a village's grid worker and leader, so each ``issue.reported`` makes
three inbox rows and, with the webhook on, three deliveries::

    PYTHONPATH=.:services/notify .venv/bin/python services/notify/bench_notify.py --events 5000
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pika
import sqlalchemy as sa

from notify import deliveries
from notify.handlers import SUBSCRIPTIONS, handle_account_upserted, use_settings
from notify.models import Base, Delivery, Notification
from notify.settings import NotifySettings
from shared.consumer import Consumer
from shared.events import make_envelope, parse_envelope
from shared.testing import throwaway_backends, wait_for

EXCHANGE = "service365.events"


class _Receiver(BaseHTTPRequestHandler):
    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args) -> None:
        pass


def _account(db, roles: list[str], village: uuid.UUID | None) -> None:
    data = {
        "user_id": str(uuid.uuid4()),
        "name": "测试",
        "roles": roles,
        "active": True,
        "revision": 1,
        "village_id": str(village) if village else None,
    }
    event = parse_envelope(make_envelope("account.upserted", data, producer="intake"))
    with db.transaction() as session:
        handle_account_upserted(session, event)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--prefetch", type=int, default=50)
    parser.add_argument("--senders", type=int, default=2, help="concurrent delivery senders")
    args = parser.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with throwaway_backends(Base.metadata, producer="notify") as (amqp_url, db):
        settings = NotifySettings(
            app_env="test", database_url="sqlite://", rabbitmq_url=amqp_url,
            webhook_url=f"http://127.0.0.1:{server.server_port}/hook", webhook_secret="bench",
            delivery_batch_size=1000,
        )  # fmt: skip
        use_settings(settings)
        village = uuid.uuid4()
        _account(db, ["admin"], None)
        _account(db, ["grid_worker"], village)
        _account(db, ["grid_leader"], village)
        consumer = Consumer(db, amqp_url, EXCHANGE, service="notify",
                            subscriptions=SUBSCRIPTIONS, prefetch=args.prefetch)  # fmt: skip
        consumer.declare()
        _fill(amqp_url, args.events, village)

        def count(table) -> int:
            with db.engine.connect() as conn:
                return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()

        stop = threading.Event()
        thread = threading.Thread(target=consumer.run_forever, args=(stop,), daemon=True)
        started = time.perf_counter()
        thread.start()
        wait_for(lambda: count(Notification) >= 3 * args.events, timeout=3600, interval=0.05)
        consumed = time.perf_counter() - started
        stop.set()
        thread.join(timeout=30)
        rows, pending = count(Notification), count(Delivery)
        print(
            f"consumer (prefetch {args.prefetch}): {args.events} issue.reported in {consumed:.2f}s"
            f" = {args.events / consumed:,.0f} events/s -> {rows} inbox rows and {pending}"
            f" webhook deliveries ({rows / consumed:,.0f} inbox rows/s)"
        )

        channels = deliveries.configured_channels(settings)
        per_thread: list[float] = []

        def send() -> None:
            t0 = time.perf_counter()
            while deliveries.send_due(db, settings, channels):
                pass
            per_thread.append(time.perf_counter() - t0)

        started = time.perf_counter()
        senders = [threading.Thread(target=send) for _ in range(args.senders)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        sent_in = time.perf_counter() - started
        with db.engine.connect() as conn:
            sent = conn.execute(
                sa.select(sa.func.count()).select_from(Delivery).where(Delivery.status == "sent")
            ).scalar()
        print(
            f"sender ({args.senders} at once, webhook on localhost): {sent} deliveries in"
            f" {sent_in:.2f}s = {sent / sent_in:,.0f} deliveries/s; the receiver got"
            f" {_Receiver.received} (each exactly once: {_Receiver.received == sent});"
            f" median sender {statistics.median(per_thread):.2f}s"
        )
    server.shutdown()


def _fill(amqp_url: str, count: int, village: uuid.UUID) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    for n in range(count):
        data = {"issue_id": str(uuid.uuid4()), "ticket_no": f"SK-BENCH-{n:06d}",
                "category": "water_power", "village_id": str(village),
                "reporter_id": str(uuid.uuid4())}  # fmt: skip
        envelope = make_envelope("issue.reported", data, producer="intake")
        channel.basic_publish(
            EXCHANGE,
            "issue.reported",
            json.dumps(envelope).encode(),
            pika.BasicProperties(delivery_mode=2, content_type="application/json"),
        )
    connection.close()


if __name__ == "__main__":
    main()
