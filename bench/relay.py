"""Item 3, outbox relay: 100 k pending outbox rows published with publisher confirms by
``shared.relay.OutboxRelay`` (its deployed batch size), events/s; beside raw pika publishing the
same messages (same bodies and properties, prepared in memory) on a ``SelectConnection`` with
batched confirms: a batch of the same size, then wait until every message of it is confirmed.

The ratio therefore shows what the relay's own work costs (selecting the rows ``FOR UPDATE SKIP
LOCKED``, building the messages, marking them sent, one transaction per batch) on top of the
broker's. Throwaway database and vhost (``shared.testing.throwaway_backends``); the rows are
written once in bulk and set pending again before each repeat; a tap queue bound to ``#`` takes
the messages (emptied after each run) so that none is returned unroutable.
"""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import pika
import sqlalchemy as sa

from bench.common import Context, Goal, Result
from shared.db import Database
from shared.events import make_envelope
from shared.relay import OutboxRelay, OutgoingMessage, pending_count
from shared.settings import ServiceSettings
from shared.testing import throwaway_backends
from shared.tests.conftest import EXCHANGE, metadata

SECTION = "relay"
TAP = "bench-tap"


def _data(n: int) -> dict:
    """A payload the size of intake's ``issue.reported`` (~600 bytes of JSON)."""
    return {
        "issue_id": str(uuid.uuid4()),
        "ticket_no": f"SKJ-20261129-{n:05d}",
        "reporter_id": str(uuid.uuid4()),
        "category": "road_traffic",
        "description": "村口道路有个大坑，晚上看不清容易摔倒。",
        "village_id": "7d0f5a8e-3c1b-4c5e-9a59-0b8f2f1d6a11",
        "address": "沙口集村东头",
        "lat": 38.3081,
        "lon": 115.5391,
        "photo_ids": [],
        "reported_at": datetime.now(UTC).isoformat(),
    }


def fill(db: Database, count: int) -> None:
    """``count`` pending rows, as ``emit`` writes them, inserted in bulk."""
    outbox = db.metadata.tables["outbox"]
    start = datetime.now(UTC)
    with db.engine.begin() as conn:
        for first in range(0, count, 5000):
            rows = []
            for n in range(first, min(count, first + 5000)):
                envelope = make_envelope("issue.reported", _data(n), producer="bench")
                rows.append(
                    {
                        "id": uuid.UUID(envelope["id"]),
                        "event_type": "issue.reported",
                        "envelope": envelope,
                        "created_at": start + timedelta(microseconds=n),
                        "attempts": 0,
                    }
                )
            conn.execute(sa.insert(outbox), rows)


def set_pending(db: Database) -> None:
    outbox = db.metadata.tables["outbox"]
    with db.engine.begin() as conn:
        conn.execute(sa.update(outbox).values(sent_at=None, attempts=0, next_attempt_at=None))
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE outbox"))


def tap(amqp_url: str, purge: bool = False) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
    channel.queue_declare(TAP, durable=True)
    channel.queue_bind(TAP, EXCHANGE, routing_key="#")
    if purge:
        channel.queue_purge(TAP)
    connection.close()


def relay_rate(db: Database, amqp_url: str, batch_size: int, count: int) -> float:
    relay = OutboxRelay(db, amqp_url, EXCHANGE, service="bench", batch_size=batch_size)
    try:
        started = time.perf_counter()
        sent = 0
        while n := relay.run_once():
            sent += n
        elapsed = time.perf_counter() - started
    finally:
        relay.close()
    left = pending_count(db)
    if sent != count or left:
        raise RuntimeError(f"relay sent {sent} of {count}; {left} still pending")
    return count / elapsed


def messages(db: Database, amqp_url: str) -> list[OutgoingMessage]:
    """The messages the relay builds from the rows (same bodies, same properties)."""
    outbox = db.metadata.tables["outbox"]
    builder = OutboxRelay(db, amqp_url, EXCHANGE, service="bench")
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(outbox.c.event_type, outbox.c.envelope).order_by(
                outbox.c.created_at, outbox.c.id
            )
        ).all()
    return [builder._message(row.event_type, row.envelope) for row in rows]


def raw_pika_rate(amqp_url: str, batch: list[OutgoingMessage], batch_size: int) -> float:
    """Raw pika: publish ``batch_size`` messages, wait for all their confirms, next batch."""
    state = {"next": 0, "unconfirmed": set(), "tag": 0, "started": 0.0, "elapsed": 0.0}
    errors: list[str] = []

    def send(channel) -> None:
        if state["next"] >= len(batch):
            state["elapsed"] = time.perf_counter() - state["started"]
            channel.connection.close()
            return
        end = min(len(batch), state["next"] + batch_size)
        for message in batch[state["next"] : end]:
            channel.basic_publish(
                EXCHANGE,
                message.event_type,
                message.body,
                message.properties,
                mandatory=True,
            )
            state["tag"] += 1
            state["unconfirmed"].add(state["tag"])
        state["next"] = end

    def on_confirm(frame) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            errors.append(f"nack {method.delivery_tag}")
        unconfirmed = state["unconfirmed"]
        if method.multiple:
            unconfirmed.difference_update([t for t in unconfirmed if t <= method.delivery_tag])
        else:
            unconfirmed.discard(method.delivery_tag)
        if not unconfirmed:
            send(channel_box[0])

    channel_box: list = []

    def on_channel(channel) -> None:
        channel_box.append(channel)
        channel.add_on_return_callback(lambda *_a: errors.append("returned"))

        def confirmed(_frame) -> None:
            state["started"] = time.perf_counter()
            send(channel)

        channel.confirm_delivery(ack_nack_callback=on_confirm, callback=confirmed)

    connection = pika.SelectConnection(
        pika.URLParameters(amqp_url),
        on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
        on_open_error_callback=lambda _c, exc: errors.append(str(exc)),
        on_close_callback=lambda conn, _reason: conn.ioloop.stop(),
    )
    connection.ioloop.start()
    if errors or not state["elapsed"]:
        raise RuntimeError(f"raw pika: {errors[:3] or 'did not finish'}")
    return len(batch) / state["elapsed"]


def run(ctx: Context) -> list[Result]:
    count = ctx.size(100_000, 2_000)
    batch_size = ServiceSettings().relay_batch_size
    ours: list[float] = []
    refs: list[float] = []
    with throwaway_backends(metadata, producer="bench_relay") as (amqp_url, db):
        tap(amqp_url)
        fill(db, count)
        prepared = messages(db, amqp_url)
        for _ in range(ctx.repeats):
            set_pending(db)
            ours.append(relay_rate(db, amqp_url, batch_size, count))
            tap(amqp_url, purge=True)
            refs.append(raw_pika_rate(amqp_url, prepared, batch_size))
            tap(amqp_url, purge=True)
    return [
        Result(
            SECTION,
            f"OutboxRelay {count:,} rows, batches of {batch_size}",
            statistics.median(ours),
            "events/s",
            reference=statistics.median(refs),
            reference_name=f"raw pika SelectConnection, confirms per batch of {batch_size}",
            goal=Goal(at_least=5000, ratio_at_least=0.30),
            runs=ours,
            extra={"reference_runs": refs, "events": count, "batch_size": batch_size},
        )
    ]
