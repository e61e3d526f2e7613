"""The consumer loop against the real PostgreSQL and RabbitMQ: once-only, late ack, retry, DLQ."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pika.exceptions
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.orm import Session

from shared.consumer import ATTEMPTS_HEADER, ERROR_HEADER, REASON_HEADER, Consumer, Handler
from shared.db import Database
from shared.events import Envelope, emit, make_envelope
from shared.logging import correlation_id
from shared.relay import pending_count
from shared.settings import PROJECT_ROOT, ServiceSettings
from shared.testing import RabbitServer, TcpProxy, wait_for
from shared.tests.conftest import EXCHANGE, Broker, demo_notes, running
from shared.worker import run_worker


def make_consumer(
    db: Database, broker: Broker, service: str, subscriptions: dict[str, Handler], **options
) -> Consumer:
    options.setdefault("retry_delays_ms", (50, 100))
    options.setdefault("max_attempts", 3)
    options.setdefault("backoff_initial", 0.05)
    options.setdefault("backoff_max", 0.5)
    return Consumer(
        db, broker.url, EXCHANGE, service=service, subscriptions=subscriptions, **options
    )


def outcome_count(service: str, event_type: str, outcome: str) -> float:
    labels = {"service": service, "type": event_type, "outcome": outcome}
    return REGISTRY.get_sample_value("events_consumed_total", labels) or 0.0


def note_count(db: Database) -> int:
    with db.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(demo_notes)).scalar_one()


def envelope(event_type: str = "issue.reported", **data) -> dict:
    return make_envelope(event_type, data or {"issue_id": str(uuid.uuid4())}, producer="test")


class Recorder:
    """A handler that writes a demo note per call and can be told to fail the first N calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[float] = []
        self.correlation_ids: list[str | None] = []
        self.__name__ = "handle_issue_reported"

    def __call__(self, session: Session, event: Envelope) -> None:
        self.calls.append(time.monotonic())
        self.correlation_ids.append(correlation_id.get())
        session.execute(sa.insert(demo_notes).values(event_id=event.id, text=event.type))
        if len(self.calls) <= self.failures:
            raise RuntimeError(f"handler failure number {len(self.calls)}")


def test_declare_builds_a_quorum_queue_with_retry_queues_and_a_dlq(
    db: Database, broker: Broker, service: str
) -> None:
    consumer = make_consumer(db, broker, service, {"issue.reported": Recorder()})
    consumer.declare()
    consumer.declare()  # declaring again is harmless

    broker.publish(envelope(), "issue.reported")
    broker.publish(envelope("issue.rated"), "issue.rated")  # not subscribed: not bound
    wait_for(lambda: broker.depth(f"{service}.events") == 1)
    # Retry queues carry their delay in their name (a new setting declares new queues).
    for name in (
        f"{service}.events.retry.50ms",
        f"{service}.events.retry.100ms",
        f"{service}.events.dlq",
    ):
        assert broker.depth(name) == 0
    # The main queue is a quorum queue: redeclaring it as a classic queue is refused.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        broker.channel.queue_declare(
            f"{service}.events", durable=True, arguments={"x-queue-type": "classic"}
        )
    assert refused.value.reply_code == 406


def test_a_redelivered_event_changes_nothing(db: Database, broker: Broker, service: str) -> None:
    handler = Recorder()
    consumer = make_consumer(db, broker, service, {"issue.reported": handler})
    consumer.declare()
    event = envelope()
    broker.publish(event, "issue.reported")
    broker.publish(event, "issue.reported")  # the same envelope again, as after a lost ack

    with running(consumer.run_forever):
        wait_for(lambda: outcome_count(service, "issue.reported", "duplicate") == 1)
        assert outcome_count(service, "issue.reported", "processed") == 1
        wait_for(lambda: broker.depth(f"{service}.events") == 0)

    assert note_count(db) == 1
    assert len(handler.calls) == 1
    assert handler.correlation_ids == [event["correlation_id"]]


def test_an_unparseable_message_goes_to_the_dlq_and_the_next_good_one_is_processed(
    db: Database, broker: Broker, service: str
) -> None:
    consumer = make_consumer(
        db, broker, service, {"issue.reported": Recorder()}, dlq_refresh_seconds=0.1
    )
    consumer.declare()
    broker.publish(b"{not json", "issue.reported")
    broker.publish({"type": "issue.reported", "data": {}}, "issue.reported")  # not an envelope
    broker.publish(envelope(), "issue.reported")

    with running(consumer.run_forever):
        wait_for(lambda: outcome_count(service, "issue.reported", "processed") == 1)
        assert outcome_count(service, "unknown", "invalid") == 2
        dlq_gauge = {"service": service}
        wait_for(lambda: REGISTRY.get_sample_value("dlq_messages", dlq_gauge) == 2)

    dead = broker.drain(f"{service}.events.dlq")
    assert dead[0][1] == b"{not json"  # the body is kept as it came
    for properties, _ in dead:
        assert properties.headers[REASON_HEADER] == "invalid"
        assert properties.headers[ERROR_HEADER]
    assert note_count(db) == 1


def test_an_event_of_a_type_nobody_handles_is_acked_as_ignored(
    db: Database, broker: Broker, service: str
) -> None:
    consumer = make_consumer(db, broker, service, {"issue.reported": Recorder()})
    consumer.declare()
    broker.publish(envelope("issue.rated"), f"{service}.events", exchange="")

    with running(consumer.run_forever):
        wait_for(lambda: outcome_count(service, "issue.rated", "ignored") == 1)
        wait_for(lambda: broker.depth(f"{service}.events") == 0)
    assert broker.depth(f"{service}.events.dlq") == 0


def test_a_handler_that_always_fails_is_retried_with_growing_delays_then_dead_lettered(
    db: Database, broker: Broker, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    handler = Recorder(failures=1000)
    consumer = make_consumer(
        db, broker, service, {"issue.reported": handler}, max_attempts=3, retry_delays_ms=(50, 300)
    )
    consumer.declare()
    event = envelope()
    broker.publish(event, "issue.reported")

    with running(consumer.run_forever):
        wait_for(lambda: outcome_count(service, "issue.reported", "dead_lettered") == 1)
        assert outcome_count(service, "issue.reported", "retried") == 2

    assert len(handler.calls) == 3
    first_gap, second_gap = (b - a for a, b in zip(handler.calls, handler.calls[1:], strict=False))
    assert first_gap >= 0.05 and second_gap >= 0.3  # each retry waits its queue's delay
    assert note_count(db) == 0  # every failed try was rolled back
    [(properties, body)] = broker.drain(f"{service}.events.dlq")
    assert properties.headers[REASON_HEADER] == "max_attempts"
    assert properties.headers[ATTEMPTS_HEADER] == 3
    assert "handler failure number 3" in properties.headers[ERROR_HEADER]
    assert body and event["id"].encode() in body
    failures = [r for r in caplog.records if r.name == "shared.consumer" and r.exc_info]
    assert len(failures) == 3
    assert all(event["id"] in r.getMessage() for r in failures)
    assert set(handler.correlation_ids) == {event["correlation_id"]}


def test_a_handler_that_fails_once_then_succeeds_is_processed_once(
    db: Database, broker: Broker, service: str
) -> None:
    handler = Recorder(failures=1)
    consumer = make_consumer(db, broker, service, {"issue.reported": handler})
    consumer.declare()
    broker.publish(envelope(), "issue.reported")

    with running(consumer.run_forever):
        wait_for(lambda: outcome_count(service, "issue.reported", "processed") == 1)
        assert outcome_count(service, "issue.reported", "retried") == 1

    assert len(handler.calls) == 2
    assert note_count(db) == 1  # the failed try's note was rolled back with it
    assert broker.depth(f"{service}.events.dlq") == 0


def test_the_consumer_reconnects_after_its_connection_is_force_closed(
    db: Database, broker: Broker, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.consumer")
    consumer = make_consumer(db, broker, service, {"issue.reported": Recorder()})
    consumer.declare()

    with running(consumer.run_forever):
        broker.publish(envelope(), "issue.reported")
        wait_for(lambda: outcome_count(service, "issue.reported", "processed") == 1)

        broker.close_connections()  # also closes the test's own connection
        wait_for(lambda: not broker.connection.is_open or _closed(broker))
        after = Broker(broker.url, broker.server)
        try:
            after.publish(envelope(), "issue.reported")
            wait_for(lambda: outcome_count(service, "issue.reported", "processed") == 2)
        finally:
            after.close()

    assert note_count(db) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("not answering" in m for m in messages) == 1, messages
    assert sum("consuming issue.reported" in m for m in messages) == 2  # first start, reconnect


def _closed(broker: Broker) -> bool:
    try:
        broker.connection.process_data_events(time_limit=0)
    except pika.exceptions.AMQPConnectionError:
        return True
    return False


def test_two_consumers_apply_the_same_event_once(db: Database, broker: Broker, service: str):
    handler_calls: list[threading.Thread] = []

    def handle_issue_reported(session: Session, event: Envelope) -> None:
        handler_calls.append(threading.current_thread())
        session.execute(sa.insert(demo_notes).values(event_id=event.id, text=event.type))

    consumers = [
        make_consumer(db, broker, service, {"issue.reported": handle_issue_reported})
        for _ in range(2)
    ]
    consumers[0].declare()
    events = [envelope() for _ in range(30)]
    for event in events + events:  # every event delivered twice, to either copy
        broker.publish(event, "issue.reported")

    runs: list[Callable] = [c.run_forever for c in consumers]
    with running(runs[0]), running(runs[1]):
        wait_for(
            lambda: outcome_count(service, "issue.reported", "processed")
            + outcome_count(service, "issue.reported", "duplicate")
            == 60
        )

    assert outcome_count(service, "issue.reported", "processed") == 30
    assert note_count(db) == 30


# -- the worker: relay and consumer together -------------------------------------------------


def test_the_worker_relays_its_outbox_and_consumes_what_it_subscribed_to(
    db: Database, broker: Broker, service: str
) -> None:
    settings = ServiceSettings(
        service_name=service,
        rabbitmq_url=broker.url,
        relay_poll_seconds=0.05,
        consumer_retry_delays_ms=[50],
    )
    handler = Recorder()
    with db.transaction() as session:
        emit(session, "issue.reported", {"issue_id": str(uuid.uuid4())})

    def work(stop: threading.Event) -> None:
        run_worker(settings, db, {"issue.reported": handler}, stop=stop)

    with running(work):
        wait_for(lambda: outcome_count(service, "issue.reported", "processed") == 1)
    assert note_count(db) == 1
    assert pending_count(db) == 0


def test_the_worker_says_once_that_the_broker_is_down_and_stops_cleanly_on_sigterm(
    db: Database, rabbit_server: RabbitServer, tmp_path: Path
) -> None:
    with TcpProxy(rabbit_server.host, rabbit_server.port) as proxy:
        nowhere = proxy.rewrite(rabbit_server.url("/"))
    # The proxy is stopped: its port now refuses connections like a broker that is down.
    script = (
        "import sys\n"
        "from shared.db import Database\n"
        "from shared.logging import configure_logging\n"
        "from shared.settings import ServiceSettings\n"
        "from shared.tests.conftest import metadata\n"
        "from shared.worker import run_worker\n"
        "configure_logging('demo', 'DEBUG', 'text')\n"
        "settings = ServiceSettings(service_name='demo', rabbitmq_url=sys.argv[1])\n"
        "db = Database(sys.argv[2], metadata=metadata, producer='demo')\n"
        "run_worker(settings, db, {'issue.reported': lambda session, event: None})\n"
    )
    log_file = tmp_path / "worker.log"
    with log_file.open("w") as output:
        worker = subprocess.Popen(
            [sys.executable, "-c", script, nowhere, db.url],
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
            stdout=output,
            stderr=output,
        )
        try:
            # It keeps trying (debug lines, backoff 0.5 s, 1 s, ...) without crashing.
            wait_for(lambda: log_file.read_text().count("still not answering") >= 2, timeout=20)
            assert worker.poll() is None
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=15) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
    lines = log_file.read_text().splitlines()
    warnings = [line for line in lines if " WARNING " in line]
    assert len(warnings) == 1, lines  # one clear line for the whole outage
    assert "demo consumer: broker 127.0.0.1:" in warnings[0]
    assert "not answering" in warnings[0]
    assert not any("Traceback" in line or " ERROR " in line for line in lines), lines
    assert "demo worker: stopped" in lines[-1]


def test_dead_letters_replayed_after_the_fix_are_processed_once(
    db: Database, broker: Broker, service: str
) -> None:
    handler = Recorder(failures=2)  # "the database was down": two tries fail, then it is back
    consumer = make_consumer(
        db, broker, service, {"issue.reported": handler}, max_attempts=2, retry_delays_ms=(50,)
    )
    consumer.declare()
    event = envelope()
    broker.publish(event, "issue.reported")
    with running(consumer.run_forever):
        wait_for(lambda: outcome_count(service, "issue.reported", "dead_lettered") == 1)
    assert broker.depth(f"{service}.events.dlq") == 1

    assert consumer.replay_dead_letters() == 1

    assert broker.depth(f"{service}.events.dlq") == 0
    with running(consumer.run_forever):
        wait_for(lambda: outcome_count(service, "issue.reported", "processed") == 1)
    assert note_count(db) == 1
    assert consumer.replay_dead_letters() == 0
