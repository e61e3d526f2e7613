"""What the consumer and the worker do when things go wrong, against the real PostgreSQL and
RabbitMQ: a database outage, a message that keeps crashing the consumer, queues the broker holds
with other arguments, a changed retry setting."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from shared.consumer import Consumer
from shared.db import Database
from shared.events import emit
from shared.settings import ServiceSettings
from shared.testing import PostgresServer, TcpProxy, wait_for
from shared.tests.conftest import EXCHANGE, Broker, metadata, running
from shared.tests.test_consumer import Recorder, envelope, make_consumer, note_count, outcome_count
from shared.web import create_service_app
from shared.worker import run_worker


def test_a_database_outage_longer_than_the_retry_ladder_dead_letters_nothing(
    db: Database, broker: Broker, service: str, postgres_server: PostgresServer
) -> None:
    handler = Recorder()
    with TcpProxy(postgres_server.host, postgres_server.port) as proxy:
        via_proxy = Database(proxy.rewrite(db.url), metadata=metadata, producer="demo")
        # The whole ladder: three tries, 50 ms and 100 ms apart.
        consumer = make_consumer(
            via_proxy, broker, service, {"issue.reported": handler}, backoff_max=0.3
        )
        consumer.declare()
        before = [envelope() for _ in range(5)]
        during = [envelope() for _ in range(20)]
        with running(consumer.run_forever):
            for event in before:
                broker.publish(event, "issue.reported")
            wait_for(lambda: note_count(db) == 5)

            proxy.stop()  # the consumer's database goes away
            for event in during:
                broker.publish(event, "issue.reported")
            gone_at = time.monotonic()
            # Many ladders' worth of time: each event would have been dead-lettered by now.
            wait_for(
                lambda: time.monotonic() - gone_at > 3 and broker.depth(f"{service}.events") == 20,
                timeout=20,
            )
            assert broker.depth(f"{service}.events.dlq") == 0
            assert outcome_count(service, "issue.reported", "retried") == 0

            proxy.start()  # and it comes back
            wait_for(lambda: note_count(db) == 25, timeout=30)
            wait_for(lambda: broker.depth(f"{service}.events") == 0)
        via_proxy.dispose()

    assert broker.depth(f"{service}.events.dlq") == 0
    assert outcome_count(service, "issue.reported", "processed") == 25
    assert outcome_count(service, "issue.reported", "dead_lettered") == 0


def test_a_message_that_keeps_coming_back_ends_in_the_dlq_at_the_delivery_limit(
    db: Database, broker: Broker, service: str
) -> None:
    consumer = make_consumer(db, broker, service, {"issue.reported": Recorder()}, delivery_limit=2)
    consumer.declare()
    event = envelope()
    broker.publish(event, "issue.reported")
    queue = f"{service}.events"

    # As if a consumer crashed on it again and again: each delivery goes back unacked.
    for _ in range(10):
        method, _props, _body = broker.channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        broker.channel.basic_nack(method.delivery_tag, requeue=True)

    wait_for(lambda: broker.depth(f"{service}.events.dlq") == 1)
    [(properties, body)] = broker.drain(f"{service}.events.dlq")
    assert event["id"].encode() in body
    assert properties.headers["x-death"][0]["reason"] == "delivery_limit"
    assert broker.depth(queue) == 0


def test_a_changed_retry_setting_declares_new_retry_queues_instead_of_failing(
    db: Database, broker: Broker, service: str
) -> None:
    make_consumer(db, broker, service, {"issue.reported": Recorder()}).declare()
    changed = make_consumer(
        db, broker, service, {"issue.reported": Recorder()}, retry_delays_ms=(70, 100, 400)
    )

    assert changed.check_topology() is None
    assert changed.retry_queues == [
        f"{service}.events.retry.70ms",
        f"{service}.events.retry.100ms",
        f"{service}.events.retry.400ms",
    ]
    for name in changed.retry_queues:
        assert broker.depth(name) == 0


def _conflicting_main_queue(broker: Broker, service: str) -> None:
    """The service's queue as an older release declared it: a classic queue."""
    broker.channel.queue_declare(f"{service}.events", durable=True)


def test_a_queue_conflict_is_a_logged_configuration_error_and_the_relay_still_publishes(
    db: Database, broker: Broker, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    _conflicting_main_queue(broker, service)
    tap = broker.tap("reports", routing_key="issue.reported")
    settings = ServiceSettings(
        service_name=service,
        rabbitmq_url=broker.url,
        relay_poll_seconds=0.05,
        consumer_retry_delays_ms=[50],
    )
    with db.transaction() as session:
        emit(session, "issue.reported", {"issue_id": str(uuid.uuid4())})

    def work(stop: threading.Event) -> None:
        run_worker(settings, db, {"issue.reported": Recorder()}, stop=stop)

    conflict = {"service": service}
    with running(work):
        wait_for(lambda: broker.depth(tap) == 1)  # the outbox is not silenced
        wait_for(lambda: REGISTRY.get_sample_value("queue_declare_conflict", conflict) == 1)
        relay = {"service": service, "process": "relay"}
        assert REGISTRY.get_sample_value("broker_connected", relay) == 1
        consumer = {"service": service, "process": "consumer"}
        assert REGISTRY.get_sample_value("broker_connected", consumer) == 0

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        "configuration error" in m
        and f"queue {service}.events:" in m
        and "inequivalent arg 'x-" in m
        for m in errors
    ), errors
    assert REGISTRY.get_sample_value("queue_declare_conflict", conflict) == 1


def test_readyz_answers_503_naming_the_queue_that_conflicts(
    db: Database, broker: Broker, service: str, jwt_keys
) -> None:
    settings = ServiceSettings(
        service_name=service,
        app_env="test",
        database_url=db.url,
        rabbitmq_url=broker.url,
        jwt_public_key_file=jwt_keys[1],
        log_format="text",
    )
    app, _api = create_service_app(
        settings, db, title="demo", subscriptions={"issue.reported": Recorder()}
    )
    client = app.test_client()
    assert client.get("/readyz").status_code == 200

    broker.channel.queue_delete(f"{service}.events")
    _conflicting_main_queue(broker, service)
    app.extensions["broker_probe"].cache_seconds = 0

    answer = client.get("/readyz")
    assert answer.status_code == 503
    [problem] = answer.get_json()["problems"]
    assert problem.startswith("broker: configuration error: queue " + f"{service}.events")
    assert "inequivalent arg 'x-" in problem  # the broker names the argument
    assert answer.get_json()["message"] == "服务未就绪：消息队列的队列设置与现有的不一致。"


def test_declare_re_creates_an_empty_main_queue_left_by_an_older_release(
    db: Database, broker: Broker, service: str
) -> None:
    _conflicting_main_queue(broker, service)
    consumer = make_consumer(db, broker, service, {"issue.reported": Recorder()})
    assert consumer.check_topology() is not None

    assert consumer.upgrade_main_queue() is True

    assert consumer.check_topology() is None
    broker.publish(envelope(), "issue.reported")  # bound again
    wait_for(lambda: broker.depth(f"{service}.events") == 1)


def test_declare_refuses_to_re_create_a_main_queue_that_still_holds_events(
    db: Database, broker: Broker, service: str
) -> None:
    from shared.consumer import TopologyConflict

    _conflicting_main_queue(broker, service)
    broker.channel.queue_bind(f"{service}.events", EXCHANGE, routing_key="issue.reported")
    broker.publish(envelope(), "issue.reported")
    consumer: Consumer = make_consumer(db, broker, service, {"issue.reported": Recorder()})

    with pytest.raises(TopologyConflict, match="holds 1 message"):
        consumer.upgrade_main_queue()
    assert broker.depth(f"{service}.events") == 1


def test_the_consumer_records_lag_handler_time_queue_depths_and_its_broker_connection(
    db: Database, broker: Broker, service: str
) -> None:
    consumer = make_consumer(db, broker, service, {"issue.reported": Recorder()})
    consumer.declare()
    connected = {"service": service, "process": "consumer"}
    with running(consumer.run_forever):
        broker.publish(envelope(), "issue.reported")
        wait_for(lambda: outcome_count(service, "issue.reported", "processed") == 1)
        assert REGISTRY.get_sample_value("broker_connected", connected) == 1
        consumer_labels = {"service": service, "type": "issue.reported"}
        assert REGISTRY.get_sample_value("consumer_lag_seconds_count", consumer_labels) == 1
        assert (
            REGISTRY.get_sample_value("event_handler_duration_seconds_count", consumer_labels) == 1
        )
        depth = REGISTRY.get_sample_value("queue_messages", {"queue": f"{service}.events.dlq"})
        assert depth == 0
    assert REGISTRY.get_sample_value("broker_connected", connected) == 0
