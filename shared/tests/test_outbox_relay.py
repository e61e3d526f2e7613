"""The transactional outbox and its relay, against the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import json
import logging

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from shared.db import Database
from shared.events import emit, parse_envelope
from shared.relay import BrokerUnavailable, OutboxRelay, pending_count
from shared.testing import RabbitServer, TcpProxy, wait_for
from shared.tests.conftest import EXCHANGE, Broker, demo_notes, outbox, running, write_events


def make_relay(db: Database, url: str, service: str = "demo", **options) -> OutboxRelay:
    options.setdefault("poll_seconds", 0.05)
    options.setdefault("backoff_initial", 0.05)
    options.setdefault("backoff_max", 0.5)
    return OutboxRelay(db, url, EXCHANGE, service=service, **options)


def outbox_rows(db: Database) -> list[sa.Row]:
    with db.engine.connect() as conn:
        return conn.execute(sa.select(outbox).order_by(outbox.c.created_at)).all()


def test_an_event_is_written_with_its_change_and_rolled_back_with_it(db: Database) -> None:
    with db.transaction() as session:
        session.execute(sa.insert(demo_notes).values(text="kept"))
        kept = emit(session, "demo.happened", {"n": 1})

    with pytest.raises(RuntimeError), db.transaction() as session:
        session.execute(sa.insert(demo_notes).values(text="undone"))
        emit(session, "demo.happened", {"n": 2})
        raise RuntimeError("the use case fails after emitting")

    rows = outbox_rows(db)
    assert [str(row.id) for row in rows] == [kept["id"]]
    assert rows[0].sent_at is None and rows[0].envelope == kept
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(demo_notes.c.text)).scalars().all() == ["kept"]


def test_run_once_publishes_pending_rows_with_confirms_and_marks_them_sent(
    db: Database, broker: Broker, service: str
) -> None:
    tap = broker.tap()
    ids = write_events(db, 5, "issue.reported")
    relay = make_relay(db, broker.url, service)
    try:
        assert relay.run_once() == 5
        assert relay.run_once() == 0
    finally:
        relay.close()

    assert all(row.sent_at is not None for row in outbox_rows(db))
    assert pending_count(db) == 0
    messages = broker.drain(tap)
    assert [props.message_id for props, _ in messages] == ids  # oldest first
    props, body = messages[0]
    envelope = parse_envelope(body)
    assert str(envelope.id) == ids[0] and envelope.type == "issue.reported"
    assert props.type == "issue.reported" and props.delivery_mode == 2
    assert props.content_type == "application/json"
    assert props.correlation_id == envelope.correlation_id
    published = REGISTRY.get_sample_value(
        "events_published_total", {"service": service, "type": "issue.reported"}
    )
    assert published == 5


def test_relay_sends_rows_written_while_the_broker_was_down(
    db: Database, broker: Broker, rabbit_server: RabbitServer, caplog: pytest.LogCaptureFixture
) -> None:
    tap = broker.tap()
    caplog.set_level(logging.WARNING, logger="shared.relay")
    with TcpProxy(rabbit_server.host, rabbit_server.port) as proxy:
        relay = make_relay(db, proxy.rewrite(broker.url))
        with running(relay.run_forever):
            before = write_events(db, 5)
            wait_for(lambda: broker.depth(tap) == 5)
            # Confirmed and marked sent, not only routed: a cut before the confirm arrives
            # would (rightly) send those rows again, at least once.
            wait_for(lambda: pending_count(db) == 0)

            proxy.stop()  # the broker goes away under a connected relay
            during = write_events(db, 40)
            wait_for(lambda: all(row.attempts >= 2 for row in outbox_rows(db) if not row.sent_at))
            assert pending_count(db) == 40

            proxy.start()  # and comes back
            wait_for(lambda: pending_count(db) == 0)
            wait_for(lambda: broker.depth(tap) == 45)

    delivered = [props.message_id for props, _ in broker.drain(tap)]
    assert sorted(delivered) == sorted(before + during)  # each exactly once
    failed_rows = [row for row in outbox_rows(db) if str(row.id) in during]
    assert all(row.last_error for row in failed_rows)
    outage_lines = [r.getMessage() for r in caplog.records if "not answering" in r.getMessage()]
    assert len(outage_lines) == 1, outage_lines  # one line per outage, not one per retry
    assert any("answering again" in r.getMessage() for r in caplog.records)


def test_run_once_raises_broker_unavailable_and_keeps_rows_pending_when_nobody_listens(
    db: Database, broker: Broker, rabbit_server: RabbitServer
) -> None:
    broker.tap()
    write_events(db, 3)
    with TcpProxy(rabbit_server.host, rabbit_server.port) as proxy:
        url = proxy.rewrite(broker.url)
        proxy.stop()
        relay = make_relay(db, url)
        with pytest.raises(BrokerUnavailable):
            relay.run_once()
        rows = outbox_rows(db)
        assert [row.attempts for row in rows] == [1, 1, 1]
        assert all(row.sent_at is None and row.last_error for row in rows)
        proxy.start()
        try:
            assert relay.run_once() == 3
        finally:
            relay.close()


def test_a_nacked_event_stays_pending_and_is_sent_again(
    db: Database, broker: Broker, service: str
) -> None:
    # A queue that refuses publishes beyond one message makes the broker nack the rest.
    broker.channel.queue_declare(
        "full", durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    broker.channel.queue_bind("full", EXCHANGE, routing_key="#")
    ids = write_events(db, 3)
    relay = make_relay(db, broker.url, service)
    try:
        assert relay.run_once() == 1
        rows = {str(row.id): row for row in outbox_rows(db)}
        assert rows[ids[0]].sent_at is not None
        assert all(rows[i].sent_at is None and rows[i].attempts == 1 for i in ids[1:])
        assert "nack" in rows[ids[1]].last_error
        failures = {"service": service}
        assert REGISTRY.get_sample_value("relay_publish_failures_total", failures) == 2

        broker.drain("full")
        assert relay.run_once() == 1  # room for one more
        broker.drain("full")
        assert relay.run_once() == 1
    finally:
        relay.close()
    assert pending_count(db) == 0


def test_a_second_relay_copy_does_not_resend_a_row_another_is_sending(
    db: Database, broker: Broker
) -> None:
    tap = broker.tap()
    ids = write_events(db, 600)
    relays = [make_relay(db, broker.url, batch_size=25) for _ in range(2)]
    with running(relays[0].run_forever), running(relays[1].run_forever):
        wait_for(lambda: pending_count(db) == 0, timeout=30)
        wait_for(lambda: broker.depth(tap) >= 600)

    delivered = [json.loads(body)["id"] for _, body in broker.drain(tap)]
    assert len(delivered) == 600
    assert sorted(delivered) == sorted(ids)  # exactly once each
    assert relays[0].sent_total > 0 and relays[1].sent_total > 0  # both really worked
    assert relays[0].sent_total + relays[1].sent_total == 600


# -- an event no queue is bound for --------------------------------------------------------------


def test_an_event_nobody_is_bound_to_stays_pending_with_its_reason_and_is_sent_once_bound(
    db: Database, broker: Broker, service: str
) -> None:
    [lonely] = write_events(db, 1, "issue.nobody_listens")
    routed = write_events(db, 2, "issue.reported")
    broker.tap("reports", routing_key="issue.reported")
    relay = make_relay(db, broker.url, service, unroutable_retry_initial=0.2)
    try:
        assert relay.run_once() == 2  # the routable ones go; the lonely one is not "sent"
        rows = {str(row.id): row for row in outbox_rows(db)}
        assert rows[lonely].sent_at is None
        assert "unroutable" in rows[lonely].last_error and "NO_ROUTE" in rows[lonely].last_error
        assert rows[lonely].next_attempt_at is not None
        assert all(rows[i].sent_at is not None for i in routed)
        assert pending_count(db) == 1
        unrouted = {"service": service}
        assert REGISTRY.get_sample_value("events_unrouted_total", unrouted) == 1
        assert relay.run_once() == 0  # not tried again before its next_attempt_at

        late = broker.tap("late", routing_key="issue.nobody_listens")  # a consumer comes
        wait_for(lambda: relay.run_once() == 1, timeout=5)
    finally:
        relay.close()
    assert pending_count(db) == 0
    [(props, _body)] = broker.drain(late)
    assert props.message_id == lonely
    assert broker.depth("reports") == 2


def test_a_batch_of_unroutable_rows_does_not_hold_up_the_rows_behind_it(
    db: Database, broker: Broker
) -> None:
    write_events(db, 5, "issue.nobody_listens")
    routed = write_events(db, 3, "issue.reported")
    tap = broker.tap("reports", routing_key="issue.reported")
    relay = make_relay(db, broker.url, batch_size=5, unroutable_retry_initial=60)
    try:
        assert relay.run_once() == 0  # the first batch is all unroutable
        assert relay.run_once() == 3  # the next one takes the rows behind it
    finally:
        relay.close()
    assert sorted(p.message_id for p, _ in broker.drain(tap)) == sorted(routed)
    assert pending_count(db) == 5


def test_the_oldest_pending_age_is_zero_when_nothing_waits_and_grows_with_a_waiting_row(
    db: Database,
) -> None:
    from shared.relay import oldest_pending_seconds

    assert oldest_pending_seconds(db) == 0.0
    write_events(db, 1)
    with db.transaction() as session:
        session.execute(
            sa.update(outbox).values(created_at=sa.func.now() - sa.text("'90 s'::interval"))
        )
    assert 89 <= oldest_pending_seconds(db) < 120
