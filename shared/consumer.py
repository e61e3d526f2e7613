"""Consumer loop: each event applied once, acked late, retried with growing delay, never dropped.

Topology a service gets from ``declare()`` (all durable; names from DESIGN.md):

* the topic exchange (``service365.events``), routing key = event type;
* ``<service>.events``: a quorum queue bound with each event type of the subscription table,
  with an explicit delivery limit and the DLQ as its dead-letter target (at-least-once), so a
  message that keeps crashing the consumer ends in the DLQ on RabbitMQ 3.13 and 4.x alike
  (4.x would otherwise drop it after 20 deliveries);
* ``<service>.events.retry.<delay>ms`` (one per entry of ``retry_delays_ms``): queues with that
  message TTL whose expired messages dead-letter back into ``<service>.events`` through the
  default exchange. The n-th failure of an event goes to the n-th retry queue (the last one for
  later failures), so the delay grows. The name carries the delay, so a new setting declares new
  queues instead of failing on the old ones (406 PRECONDITION_FAILED);
* ``<service>.events.dlq``: where events land that do not parse, that failed ``max_attempts``
  times or that hit the delivery limit, with the reason in headers (``x-service365-reason``,
  ``x-service365-error``).

A declaration the broker refuses (a queue that exists with other arguments) is a configuration
error: ``TopologyConflict`` names the queue and the broker's reason, the worker logs it at ERROR,
sets ``queue_declare_conflict`` and keeps retrying; ``/readyz`` says 503 with the reason.

A database that stops answering is not a handler failure: the delivery is not acked, the
consumer closes its connection (the broker requeues what it held), waits with backoff until the
database answers and consumes again, so no event burns its retries or lands in the DLQ.

Per batch: deliveries that are already waiting (up to ``batch_size``, or whatever came within
``batch_linger`` of the first, so a lone event is not held back) are applied in one
transaction. Each is parsed first (unparseable → DLQ; unknown type → acked as ``ignored``); one
statement inserts every ``(event_id, handler)`` of the batch into ``processed_events``, so a
redelivered event is a ``duplicate`` that changes nothing; each handler then runs in a SAVEPOINT
of its own, so one that fails rolls back only itself (and its claim). The batch commits once,
then its failures are republished (publisher-confirmed) to a retry queue or the DLQ, and only
then is the batch acked, with one ``multiple`` ack. A commit that fails acks nothing (the broker
redelivers; the inbox dedupes); one that fails for another reason than an outage is tried again
one event at a time, so only the event at fault is retried. Each outcome is counted in
``events_consumed_total{service,type,outcome}``.

Why batches: one commit (one WAL flush) and one ack per event cap a consumer at a few hundred
events a second; a hundred events per commit amortise both (``python -m shared.bench_consumer``).
A handler made with ``batched`` goes further: it gets each run of the batch's new events of its
type in one call and writes them with one statement per table (a failed run is applied again
one event per call). Each batch's statements are planned for their actual parameters
(``_plan_each_statement``).

Example::

    def handle_issue_reported(session: Session, event: Envelope) -> None:
        session.add(Ticket(issue_id=event.data["issue_id"]))

    consumer = Consumer(db, settings.rabbitmq_url, settings.events_exchange, service="dispatch",
                        subscriptions={"issue.reported": handle_issue_reported})
    consumer.run_forever(stop_event)   # blocks; reconnects with backoff; returns when stop is set
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import sqlalchemy as sa
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from shared.db import Database, Upsert, utcnow
from shared.events import Envelope, InvalidEnvelope, parse_envelope
from shared.logging import correlation_id
from shared.metrics import (
    BROKER_CONNECTED,
    CONSUMER_LAG,
    DLQ_MESSAGES,
    EVENT_HANDLER_DURATION,
    EVENTS_CONSUMED,
    QUEUE_DECLARE_CONFLICT,
    QUEUE_MESSAGES,
)
from shared.relay import EXCHANGE_TYPE, OutageLog, amqp_parameters, describe_broker

log = logging.getLogger("shared.consumer")

Handler = Callable[[Session, Envelope], None]
ApplyMany = Callable[[Session, list[Envelope]], None]


def batched(apply_many: ApplyMany) -> Handler:
    """Make a handler of a function that applies a run of events of one type together.

    Why: a handler called once per event costs its statements once per event (a look-up, an
    insert or two), and a hot event type then caps the consumer at a few hundred events a
    second; set-based statements for the whole run cost about as much as for one event. The
    consumer hands the run of the batch's new (not duplicate) events of that type to
    ``apply_many``; when it raises, the try is rolled back and the events are applied one at a
    time (``apply_many`` with a list of one), so only the one at fault is retried. Called
    directly, the handler applies one event. The name (recorded in ``processed_events``) is
    ``apply_many``'s.

    Example::

        @batched
        def handle_issue_reported(session: Session, events: list[Envelope]) -> None:
            services.receive_reports(session, [load_data(ReportedData, e.data) for e in events])
    """

    def handler(session: Session, event: Envelope) -> None:
        apply_many(session, [event])

    handler.__name__ = apply_many.__name__
    handler.__qualname__ = apply_many.__qualname__
    handler.__doc__ = apply_many.__doc__
    handler.apply_many = apply_many  # type: ignore[attr-defined]
    return handler


ATTEMPTS_HEADER = "x-service365-attempts"
REASON_HEADER = "x-service365-reason"
ERROR_HEADER = "x-service365-error"
ROUTING_KEY_HEADER = "x-service365-routing-key"
# Headers the broker owns; copying them into a republished message would only confuse it.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-")

PROCESSED, DUPLICATE, RETRIED, DEAD_LETTERED, INVALID, IGNORED = (
    "processed",
    "duplicate",
    "retried",
    "dead_lettered",
    "invalid",
    "ignored",
)


def queue_names(service: str, retry_delays_ms: Sequence[int]) -> dict[str, Any]:
    """The queue names of a service: ``main``, ``retry`` (list, first delay first) and ``dlq``."""
    main = f"{service}.events"
    return {
        "main": main,
        "retry": [f"{main}.retry.{int(delay)}ms" for delay in retry_delays_ms],
        "dlq": f"{main}.dlq",
    }


class TopologyConflict(Exception):
    """The broker refused a declaration: the queue exists with other arguments (406)."""

    def __init__(self, queue: str, reason: str) -> None:
        super().__init__(f"queue {queue}: {reason}")
        self.queue = queue
        self.reason = reason


class DatabaseUnavailable(Exception):
    """The service's database stopped answering while an event was being applied."""


def is_database_outage(db: Database, exc: BaseException) -> bool:
    """A connection-level error and the database does not answer a ping: an outage, not a bug.

    Why the ping: psycopg raises ``OperationalError`` for a lost server and for a lock timeout
    alike; only the first must pause consuming instead of counting as a handler failure.
    """
    if not isinstance(exc, OperationalError | InterfaceError | DisconnectionError) and not (
        getattr(exc, "connection_invalidated", False)
    ):
        return False
    try:
        db.ping()
    except SQLAlchemyError:
        return True
    return False


def handler_name(event_type: str, handler: Handler) -> str:
    """The name recorded in ``processed_events``: the function's name, stable across deploys."""
    return (getattr(handler, "__name__", None) or f"handle_{event_type}")[:120]


class Consumer:
    """Consumes a service's queue on one connection in the calling thread; see the module doc."""

    def __init__(
        self,
        db: Database,
        amqp_url: str,
        exchange: str,
        *,
        service: str,
        subscriptions: Mapping[str, Handler],
        prefetch: int = 200,
        batch_size: int = 100,
        batch_linger: float = 0.005,
        max_attempts: int = 5,
        retry_delays_ms: Sequence[int] = (1000, 5000, 30000, 120000),
        delivery_limit: int = 20,
        dlq_refresh_seconds: float = 15.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        if not retry_delays_ms:
            raise ValueError("retry_delays_ms needs at least one delay")
        if db.metadata.tables.get("processed_events") is None:
            raise ValueError("the database's metadata has no processed_events table")
        self.db = db
        self.amqp_url = amqp_url
        self.exchange = exchange
        self.service = service
        self.subscriptions = dict(subscriptions)
        self.prefetch = prefetch
        # A batch never waits for more deliveries than the broker may hand out unacked.
        self.batch_size = max(1, min(batch_size, prefetch))
        self.batch_linger = batch_linger
        self.max_attempts = max_attempts
        self.retry_delays_ms = list(retry_delays_ms)
        self.delivery_limit = delivery_limit
        self.dlq_refresh_seconds = dlq_refresh_seconds
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        names = queue_names(service, self.retry_delays_ms)
        self.queue: str = names["main"]
        self.retry_queues: list[str] = names["retry"]
        self.dlq: str = names["dlq"]
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._publish_channel: Any = None
        self._dlq_checked_at = 0.0
        self._waiting: list[_Delivery] = []
        self._waiting_since = 0.0
        self._claims = Upsert(
            db.metadata.tables["processed_events"],
            conflict=("event_id", "handler"),
            columns=("event_id", "handler", "event_type", "processed_at"),
            returning=("event_id", "handler"),
        )

    # -- topology ------------------------------------------------------------------------

    def declare(self) -> None:
        """Create the exchange, queues and bindings on their own short-lived connection."""
        connection = pika.BlockingConnection(
            amqp_parameters(self.amqp_url, f"{self.service}-declare")
        )
        try:
            self._declare(connection.channel())
        finally:
            connection.close()

    def main_queue_arguments(self) -> dict[str, Any]:
        """The main queue's arguments: quorum, delivery limit, DLQ as dead-letter target."""
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": int(self.delivery_limit),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.dlq,
            # at-least-once dead-lettering needs reject-publish; no length limit is set
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def _declare(self, channel: Any) -> None:
        """Declare everything; a 406 becomes ``TopologyConflict`` naming the queue."""
        channel.exchange_declare(self.exchange, exchange_type=EXCHANGE_TYPE, durable=True)
        _declare_queue(channel, self.dlq, {})
        _declare_queue(channel, self.queue, self.main_queue_arguments())
        for event_type in self.subscriptions:
            channel.queue_bind(self.queue, self.exchange, routing_key=event_type)
        for name, delay in zip(self.retry_queues, self.retry_delays_ms, strict=True):
            _declare_queue(
                channel,
                name,
                {
                    "x-message-ttl": int(delay),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.queue,
                },
            )

    def check_topology(self) -> str | None:
        """Declare the topology now; the conflict's text, or None when all is as configured.

        ``/readyz`` calls it so a configuration error shows as 503 with its reason."""
        try:
            self.declare()
        except TopologyConflict as exc:
            return str(exc)
        return None

    def upgrade_main_queue(self) -> bool:
        """Re-create the main queue with today's arguments when it conflicts and is empty.

        For ``<service> declare`` after an upgrade that changed the main queue's arguments:
        an empty queue with no consumer is deleted and declared again (events published in
        between are returned as unroutable and stay in the producer's outbox). Returns True
        when it re-created the queue; raises ``TopologyConflict`` when it may not.
        """
        try:
            self.declare()
            return False
        except TopologyConflict as exc:
            if exc.queue != self.queue:
                raise
            conflict = exc
        connection = pika.BlockingConnection(
            amqp_parameters(self.amqp_url, f"{self.service}-declare")
        )
        try:
            channel = connection.channel()
            frame = channel.queue_declare(self.queue, passive=True)
            if frame.method.message_count or frame.method.consumer_count:
                raise TopologyConflict(
                    self.queue,
                    f"{conflict.reason}; it holds {frame.method.message_count} message(s) and "
                    f"{frame.method.consumer_count} consumer(s): stop the worker and let it "
                    "drain (or move them) before it can be re-created",
                )
            channel.queue_delete(self.queue, if_unused=True, if_empty=True)
        finally:
            connection.close()
        self.declare()
        log.warning("%s: queue %s re-created with %s", self.service, self.queue, conflict.reason)
        return True

    def replay_dead_letters(self, limit: int | None = None) -> int:
        """Move what waits in the DLQ back into the service's queue, with a fresh count of tries.

        For after the cause is fixed (a database outage, a bug). Each message is copied with a
        publisher confirm before it leaves the DLQ, so nothing is lost if this stops halfway.
        Returns how many were moved; at most what was there when it started (or ``limit``).
        """
        connection = pika.BlockingConnection(
            amqp_parameters(self.amqp_url, f"{self.service}-replay")
        )
        try:
            channel = connection.channel()
            self._declare(channel)
            channel.confirm_delivery()
            waiting = int(channel.queue_declare(self.dlq, passive=True).method.message_count)
            todo = waiting if limit is None else min(waiting, limit)
            moved = 0
            while moved < todo:
                method, properties, body = channel.basic_get(self.dlq, auto_ack=False)
                if method is None:
                    break
                headers = {
                    key: value
                    for key, value in (properties.headers or {}).items()
                    if key not in (ATTEMPTS_HEADER, ERROR_HEADER, REASON_HEADER)
                    and not key.startswith(_BROKER_HEADERS)
                }
                headers["x-service365-replayed"] = int(headers.get("x-service365-replayed", 0)) + 1
                channel.basic_publish(
                    exchange="",
                    routing_key=self.queue,
                    body=body,
                    properties=pika.BasicProperties(
                        content_type=properties.content_type or "application/json",
                        delivery_mode=2,
                        message_id=properties.message_id,
                        correlation_id=properties.correlation_id,
                        type=properties.type,
                        headers=headers,
                    ),
                    mandatory=True,
                )
                channel.basic_ack(method.delivery_tag)
                moved += 1
            log.info(
                "%s: %d message(s) moved from %s back to %s",
                self.service,
                moved,
                self.dlq,
                self.queue,
            )
            return moved
        finally:
            connection.close()

    # -- the loop ------------------------------------------------------------------------

    def run_forever(
        self, stop: threading.Event, on_connected: Callable[[], None] | None = None
    ) -> None:
        """Consume until ``stop`` is set; reconnect with growing backoff when the broker goes.

        ``on_connected`` runs after each (re)connection, once the queues exist and are bound.
        A configuration conflict and a database outage pause consuming (see the module doc).
        """
        outage = OutageLog(
            log,
            f"{self.service} consumer: broker {describe_broker(self.amqp_url)}",
            initial=self.backoff_initial,
            maximum=self.backoff_max,
        )
        trouble = OutageLog(
            log, f"{self.service} consumer", initial=self.backoff_initial, maximum=self.backoff_max
        )
        database = OutageLog(
            log,
            f"{self.service} consumer: database",
            initial=self.backoff_initial,
            maximum=self.backoff_max,
        )
        conflict_seen: str | None = None
        conflict_gauge = QUEUE_DECLARE_CONFLICT.labels(self.service)
        connected = BROKER_CONNECTED.labels(self.service, "consumer")
        connected_at = time.monotonic()
        while not stop.is_set():
            try:
                connected_at = time.monotonic()
                self._connect()
                outage.recovered()
                if conflict_seen is not None:
                    log.warning("%s consumer: queues declared as configured now", self.service)
                    conflict_seen = None
                conflict_gauge.set(0)
                connected.set(1)
                if on_connected is not None:
                    on_connected()
                while not stop.is_set():
                    self._consume_once()
                    if time.monotonic() - self._dlq_checked_at >= self.dlq_refresh_seconds:
                        self.refresh_queue_gauges()
            except TopologyConflict as exc:
                connected.set(0)
                conflict_gauge.set(1)
                if str(exc) != conflict_seen:
                    conflict_seen = str(exc)
                    log.error(
                        "%s consumer: configuration error, not consuming: %s. Restore the "
                        "setting, or drain the queue and run `declare` to re-create it "
                        "(README: changing queue settings)",
                        self.service,
                        exc,
                    )
                self._close()
                stop.wait(self.backoff_max)
            except DatabaseUnavailable as exc:
                # Close first: the broker requeues what this consumer held, unacked.
                connected.set(0)
                self._close()
                self._wait_for_database(stop, database, exc)
            except pika.exceptions.AMQPError as exc:
                connected.set(0)
                self._close()
                stop.wait(outage.failed(exc))
            except Exception as exc:  # a bug must not end the consumer for good; unacked
                # messages go back to the queue when the connection closes
                connected.set(0)
                if time.monotonic() - connected_at > self.backoff_max:
                    trouble.recovered()  # a rare error after a long healthy run: log it again
                if not trouble.is_down:
                    log.exception("%s consumer: unexpected error; reconnecting", self.service)
                self._close()
                stop.wait(trouble.failed(exc))
            finally:
                self._close()
        connected.set(0)

    def _wait_for_database(
        self, stop: threading.Event, database: OutageLog, error: BaseException
    ) -> None:
        """Back off until the database answers again (one log line for the whole outage)."""
        cause = error.__cause__ or error
        while not stop.wait(database.failed(cause)):
            try:
                self.db.ping()
            except SQLAlchemyError as exc:
                cause = exc
                continue
            database.recovered()
            return

    def refresh_queue_gauges(self) -> int:
        """Read the depth of the main, retry and dead-letter queues (passive declares) into
        ``queue_messages`` and ``dlq_messages``; return the DLQ depth."""
        depth = 0
        for name in (self.queue, *self.retry_queues, self.dlq):
            frame = self._channel.queue_declare(name, passive=True)
            depth = int(frame.method.message_count)
            QUEUE_MESSAGES.labels(name).set(depth)
        DLQ_MESSAGES.labels(self.service).set(depth)
        self._dlq_checked_at = time.monotonic()
        return depth

    refresh_dlq_gauge = refresh_queue_gauges

    def _connect(self) -> None:
        self._connection = pika.BlockingConnection(
            amqp_parameters(self.amqp_url, f"{self.service}-consumer")
        )
        self._channel = self._connection.channel()
        self._declare(self._channel)
        # Retries and dead letters go out on a channel of their own, in confirm mode, so that
        # the original is acked only once its copy is safe.
        self._publish_channel = self._connection.channel()
        self._publish_channel.confirm_delivery()
        self._channel.basic_qos(prefetch_count=self.prefetch)
        self._channel.basic_consume(self.queue, on_message_callback=self._hold)
        self.refresh_queue_gauges()
        log.info(
            "%s consumer: consuming %s from exchange %s into queue %s",
            self.service,
            ", ".join(sorted(self.subscriptions)) or "nothing",
            self.exchange,
            self.queue,
        )

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = self._publish_channel = None
        self._waiting = []  # unacked: the broker requeues them when the connection closes
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError as exc:
                log.debug("closing the consumer's connection: %s", exc)

    # -- batches -------------------------------------------------------------------------

    def _hold(
        self, channel: Any, method: Any, properties: pika.BasicProperties, body: bytes
    ) -> None:
        """pika's delivery callback: keep the delivery for the next batch (applied by the loop,
        never from inside a pika callback)."""
        if not self._waiting:
            self._waiting_since = time.monotonic()
        self._waiting.append(_Delivery(method, properties, body))

    def _consume_once(self) -> None:
        """Read from the broker for a moment; apply a batch once it is full or its first
        delivery has waited ``batch_linger``."""
        assert self._connection is not None
        wait = self._waiting_since + self.batch_linger - time.monotonic() if self._waiting else 0.2
        if len(self._waiting) < self.batch_size and wait > 0:
            self._connection.process_data_events(time_limit=wait)
        if self._waiting and (
            len(self._waiting) >= self.batch_size
            or time.monotonic() >= self._waiting_since + self.batch_linger
        ):
            batch = self._waiting[: self.batch_size]
            self._waiting = self._waiting[self.batch_size :]
            self._waiting_since = time.monotonic()
            self.apply_batch(self._channel, batch)

    def apply_batch(self, channel: Any, batch: list[_Delivery]) -> None:
        """Apply deliveries in one transaction, route the failed ones, then ack them all.

        Raises ``DatabaseUnavailable`` (nothing acked) when the database stops answering.
        """
        for delivery in batch:
            self._parse(delivery)
        self._apply([d for d in batch if d.handler is not None])
        for delivery in batch:
            delivery.run_after_commit()
            if delivery.outcome == PROCESSED:
                self._observe(delivery)
            elif delivery.error is not None:
                self._route(delivery)
        channel.basic_ack(batch[-1].method.delivery_tag, multiple=True)
        for delivery in batch:
            EVENTS_CONSUMED.labels(self.service, delivery.event_type, delivery.outcome).inc()

    def _parse(self, delivery: _Delivery) -> None:
        try:
            delivery.envelope = parse_envelope(delivery.body)
        except InvalidEnvelope as exc:
            delivery.event_type, delivery.outcome, delivery.error = "unknown", INVALID, exc
            return
        delivery.event_type = delivery.envelope.type
        delivery.handler = self.subscriptions.get(delivery.envelope.type)
        if delivery.handler is None:
            delivery.outcome = IGNORED

    def _apply(
        self, deliveries: list[_Delivery], *, guarded: bool = False, together: bool = True
    ) -> None:
        """One transaction for ``deliveries`` (each with a handler); a failed commit that is no
        outage is tried again event by event, so that the one at fault alone is retried.

        The first try runs the handlers without savepoints (a SAVEPOINT and its RELEASE are two
        round trips per event, about half of a light handler's cost), and hands each run of
        new events of one ``batched`` handler to it in one call (``together``). When a run
        fails, the try is rolled back and applied again one event per call; when one event's
        handler fails, the try is rolled back, that event goes to its retry (it is not run
        twice) and the rest is applied again. ``guarded`` (a batch re-applied event by event
        after a failed commit) runs each handler in its own savepoint instead."""
        if not deliveries:
            return
        together = together and not guarded
        try:
            with self.db.transaction() as session:
                _plan_each_statement(session)
                claimed = self._claim(session, deliveries)
                if together:
                    self._apply_runs(session, deliveries, claimed)
                else:
                    for delivery in deliveries:
                        if self._is_new(delivery, claimed):
                            self._apply_one(session, delivery, guarded=guarded)
        except _RunFailed as failed:
            for delivery in deliveries:
                delivery.reset()
            log.info(
                "%s consumer: %d %s events failed together (%s); applying them one at a time",
                self.service,
                failed.size,
                failed.event_type,
                failed.error,
            )
            self._apply(deliveries, guarded=guarded, together=False)
        except _HandlerFailed as failed:
            # The try is rolled back: the one at fault is routed (retry or DLQ) without being
            # run again, the others are applied once more without it.
            for delivery in deliveries:
                delivery.reset()
            failed.delivery.fail(failed.error)
            self._apply([d for d in deliveries if d is not failed.delivery], guarded=guarded)
        except SQLAlchemyError as exc:
            first = deliveries[0].envelope
            if is_database_outage(self.db, exc):
                raise DatabaseUnavailable(f"while applying {first.type} {first.id}") from exc
            for delivery in deliveries:
                delivery.reset()
            if len(deliveries) == 1:
                deliveries[0].fail(exc)
                return
            log.warning(
                "%s consumer: a batch of %d events failed to commit (%s); applying them one by one",
                self.service,
                len(deliveries),
                exc,
            )
            for delivery in deliveries:
                self._apply([delivery], guarded=True)

    @staticmethod
    def _is_new(delivery: _Delivery, claimed: set[tuple]) -> bool:
        """Whether the batch's claim found the event new; else it is marked a duplicate."""
        envelope = delivery.envelope
        key = (envelope.id, handler_name(envelope.type, delivery.handler))
        if key not in claimed:
            delivery.outcome = DUPLICATE
            return False
        claimed.discard(key)  # the same event twice in one batch: the second is a duplicate
        return True

    def _apply_runs(
        self, session: Session, deliveries: list[_Delivery], claimed: set[tuple]
    ) -> None:
        """Apply the batch in order, each run of consecutive new events of one ``batched``
        handler in one call; raises ``_RunFailed`` when such a call fails."""
        run: list[_Delivery] = []
        for delivery in deliveries:
            if run and delivery.handler is not run[0].handler:
                self._apply_run(session, run)
                run = []
            if not self._is_new(delivery, claimed):
                continue
            if getattr(delivery.handler, "apply_many", None) is None:
                self._apply_one(session, delivery, guarded=False)
            else:
                run.append(delivery)
        if run:
            self._apply_run(session, run)

    def _apply_run(self, session: Session, run: list[_Delivery]) -> None:
        if len(run) == 1:
            self._apply_one(session, run[0], guarded=False)
            return
        first = run[0].envelope
        token = correlation_id.set(first.correlation_id)
        started = time.perf_counter()
        try:
            run[0].handler.apply_many(session, [delivery.envelope for delivery in run])
        except Exception as exc:  # applied again one at a time: the one at fault is retried
            if isinstance(exc, SQLAlchemyError) and is_database_outage(self.db, exc):
                raise DatabaseUnavailable(f"while applying {first.type} {first.id}") from exc
            raise _RunFailed(first.type, len(run), exc) from exc
        finally:
            correlation_id.reset(token)
        seconds = (time.perf_counter() - started) / len(run)
        for delivery in run:
            delivery.outcome, delivery.seconds = PROCESSED, seconds
        run[0].after_commit = _take_after_commit(session)

    def _apply_one(self, session: Session, delivery: _Delivery, *, guarded: bool) -> None:
        """Run one handler; ``guarded``, in its own SAVEPOINT, so that a failure rolls back it
        and its claim only; unguarded, a failure raises ``_HandlerFailed`` (the caller rolls
        the whole try back and applies the batch again guarded)."""
        envelope, handler = delivery.envelope, delivery.handler
        token = correlation_id.set(envelope.correlation_id)
        started = time.perf_counter()
        try:
            if guarded:
                with session.begin_nested():
                    handler(session, envelope)
                    delivery.after_commit = _take_after_commit(session)
            else:
                handler(session, envelope)
                delivery.after_commit = _take_after_commit(session)
        except Exception as exc:  # a failed handler goes to retry or the DLQ
            if isinstance(exc, SQLAlchemyError) and is_database_outage(self.db, exc):
                raise DatabaseUnavailable(f"while applying {envelope.type} {envelope.id}") from exc
            if not guarded:
                raise _HandlerFailed(delivery, exc) from exc
            session.execute(
                sa.delete(self._processed_events)
                .where(self._processed_events.c.event_id == envelope.id)
                .where(self._processed_events.c.handler == handler_name(envelope.type, handler))
            )
            delivery.fail(exc)
            return
        finally:
            correlation_id.reset(token)
        delivery.outcome = PROCESSED
        delivery.seconds = time.perf_counter() - started

    def _claim(self, session: Session, deliveries: list[_Delivery]) -> set[tuple]:
        """Record every ``(event id, handler)`` of the batch in one statement; return those
        that were new (the others were applied before: redeliveries).

        Rows go in sorted order so that two consumers claiming overlapping batches wait for
        each other instead of deadlocking."""
        now = utcnow()
        rows = {
            (d.envelope.id, handler_name(d.envelope.type, d.handler)): d.envelope.type
            for d in deliveries
        }
        # RETURNING says what was new (rowcount is not reliable: -1 under psycopg 3)
        inserted = self._claims.execute(
            session,
            [
                {"event_id": key[0], "handler": key[1], "event_type": kind, "processed_at": now}
                for key, kind in sorted(rows.items())
            ],
        )
        return {(row.event_id, row.handler) for row in inserted}

    @property
    def _processed_events(self) -> sa.Table:
        return self.db.metadata.tables["processed_events"]

    def _observe(self, delivery: _Delivery) -> None:
        envelope = delivery.envelope
        EVENT_HANDLER_DURATION.labels(self.service, envelope.type).observe(delivery.seconds)
        CONSUMER_LAG.labels(self.service, envelope.type).observe(
            max(0.0, (utcnow() - envelope.occurred_at).total_seconds())
        )

    def _route(self, delivery: _Delivery) -> None:
        """After the commit: a failed event to its retry queue or the DLQ (confirmed)."""
        if delivery.envelope is None:
            log.warning(
                "%s consumer: unparseable message %s sent to %s: %s",
                self.service,
                delivery.properties.message_id,
                self.dlq,
                delivery.error,
            )
            self._republish(
                self.dlq,
                delivery.body,
                delivery.properties,
                delivery.method,
                reason="invalid",
                error=str(delivery.error),
            )
            return
        token = correlation_id.set(delivery.envelope.correlation_id)
        try:
            delivery.outcome = self._fail(
                delivery.envelope,
                delivery.error,
                self._channel,
                delivery.method,
                delivery.properties,
                delivery.body,
            )
        finally:
            correlation_id.reset(token)

    def _fail(
        self,
        envelope: Envelope,
        exc: Exception,
        channel: Any,
        method: Any,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> str:
        attempts = _attempts(properties) + 1
        error = f"{type(exc).__name__}: {exc}"[:1000]
        if attempts >= self.max_attempts:
            log.error(
                "%s consumer: %s %s failed %d times, sent to %s",
                self.service,
                envelope.type,
                envelope.id,
                attempts,
                self.dlq,
                exc_info=exc,
            )
            self._republish(
                self.dlq,
                body,
                properties,
                method,
                reason="max_attempts",
                error=error,
                attempts=attempts,
            )
            return DEAD_LETTERED
        level = min(attempts, len(self.retry_queues))
        log.warning(
            "%s consumer: %s %s failed (attempt %d of %d), retrying in %d ms",
            self.service,
            envelope.type,
            envelope.id,
            attempts,
            self.max_attempts,
            self.retry_delays_ms[level - 1],
            exc_info=exc,
        )
        self._republish(
            self.retry_queues[level - 1], body, properties, method, error=error, attempts=attempts
        )
        return RETRIED

    def _republish(
        self,
        queue: str,
        body: bytes,
        properties: pika.BasicProperties,
        method: Any,
        *,
        error: str,
        reason: str | None = None,
        attempts: int | None = None,
    ) -> None:
        """Copy a message to a queue of ours and wait for the broker's confirm (raises if not)."""
        headers = {
            key: value
            for key, value in (properties.headers or {}).items()
            if not key.startswith(_BROKER_HEADERS)
        }
        headers.setdefault(ROUTING_KEY_HEADER, method.routing_key)
        headers[ERROR_HEADER] = error
        if reason is not None:
            headers[REASON_HEADER] = reason
        if attempts is not None:
            headers[ATTEMPTS_HEADER] = attempts
        self._publish_channel.basic_publish(
            exchange="",
            routing_key=queue,
            body=body,
            properties=pika.BasicProperties(
                content_type=properties.content_type or "application/json",
                content_encoding=properties.content_encoding,
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=properties.message_id,
                correlation_id=properties.correlation_id,
                type=properties.type,
                app_id=properties.app_id,
                headers=headers,
            ),
            mandatory=True,
        )


@dataclass(eq=False)
class _Delivery:
    """One message of a batch and what became of it."""

    method: Any
    properties: pika.BasicProperties
    body: bytes
    envelope: Envelope | None = None
    handler: Handler | None = None
    event_type: str = "unknown"
    outcome: str | None = None
    error: Exception | None = None
    seconds: float = 0.0
    after_commit: list[Callable[[], None]] = field(default_factory=list)

    def fail(self, exc: Exception) -> None:
        self.outcome, self.error, self.after_commit = None, exc, []

    def reset(self) -> None:
        """Forget a try whose transaction was rolled back."""
        self.outcome, self.error, self.after_commit = None, None, []

    def run_after_commit(self) -> None:
        callbacks, self.after_commit = self.after_commit, []
        for callback in callbacks:
            callback()


class _RunFailed(Exception):
    """A ``batched`` handler failed on a run of events: which one is at fault is unknown, so
    the try is rolled back and applied again one event per call."""

    def __init__(self, event_type: str, size: int, error: Exception) -> None:
        super().__init__(str(error))
        self.event_type, self.size, self.error = event_type, size, error


class _HandlerFailed(Exception):
    """A handler failed in a try without savepoints: the try is rolled back, the delivery at
    fault is routed and the rest of the batch applied again."""

    def __init__(self, delivery: _Delivery, error: Exception) -> None:
        super().__init__(str(error))
        self.delivery, self.error = delivery, error


def _plan_each_statement(session: Session) -> None:
    """PostgreSQL: plan this transaction's statements for their actual parameters.

    Why: psycopg prepares a statement run five times, and PostgreSQL may then keep one generic
    plan for it, made for the table as it was: a batch look-up planned while ``issues`` was
    nearly empty stays a sequential scan as a backlog fills it (dispatch's ``issue.reported``
    runs fell from 6,900 to 3,000 events/s over 60 k reports). Planning costs a fraction of a
    millisecond per statement, and a batch runs only a handful."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))


def _take_after_commit(session: Session) -> list[Callable[[], None]]:
    """Take the callbacks a handler gave ``shared.db.after_commit``, before its SAVEPOINT is
    released: SQLAlchemy fires ``after_commit`` at a release too, and they must wait for the
    batch's commit (and be dropped with the handler's work when it fails)."""
    callbacks = session.info.get("after_commit") or []
    session.info["after_commit"] = []
    return list(callbacks)


def _declare_queue(channel: Any, name: str, arguments: dict[str, Any]) -> None:
    try:
        channel.queue_declare(name, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:
            raise TopologyConflict(name, exc.reply_text) from None
        raise


def _attempts(properties: pika.BasicProperties) -> int:
    value = (properties.headers or {}).get(ATTEMPTS_HEADER, 0)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
