"""Outbox relay: publishes the rows ``emit`` wrote, with publisher confirms, then marks them sent.

Why a relay: a service never publishes straight after its commit (a crash in between loses the
event). ``emit`` writes the envelope into the ``outbox`` table in the caller's transaction; this
relay takes the pending rows oldest first, publishes them to the durable topic exchange
(routing key = event type) and marks them ``sent_at`` only once the broker has confirmed them.

How it stays correct and fast:

* Rows are taken with ``SELECT ... FOR UPDATE SKIP LOCKED`` inside a transaction held while the
  batch is in flight, so several relay copies never send the same row at the same time (SQLite
  ignores the clause; it is the single-process embedded default).
* A whole batch is published, then the relay waits for the broker's confirms (``Basic.Ack`` with
  ``multiple`` honoured) instead of one blocking round-trip per message, which is about ten times
  slower (https://www.rabbitmq.com/tutorials/tutorial-seven-java, "publishing messages in
  batches"). pika's ``SelectConnection`` is driven synchronously from the relay's own thread.
* A nack or an unconfirmed message leaves its row pending (``attempts`` + 1, ``last_error``) so it
  is sent again; the consumers' inbox table makes that harmless. Delivery is at-least-once.
* When the broker is unreachable, ``run_forever`` logs one line per outage, backs off
  (0.5 s doubling to 30 s) and logs one more line when the broker answers again.

Example::

    relay = OutboxRelay(db, settings.rabbitmq_url, settings.events_exchange, service="intake")
    relay.run_once()                 # -> number of events confirmed and marked sent
    relay.run_forever(stop_event)    # what ``shared.worker.run_worker`` runs in a thread

The helpers ``amqp_parameters``, ``describe_broker`` and ``OutageLog`` are shared with
``shared.consumer``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.exceptions
import sqlalchemy as sa
from pika.spec import Basic
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared.db import Database, among
from shared.metrics import (
    BROKER_CONNECTED,
    EVENTS_PUBLISHED,
    EVENTS_UNROUTED,
    RELAY_PUBLISH_FAILURES,
)

log = logging.getLogger("shared.relay")

EXCHANGE_TYPE = "topic"


class BrokerUnavailable(ConnectionError):
    """The broker could not be reached or the connection was lost before all confirms came."""


def amqp_parameters(url: str, connection_name: str) -> pika.URLParameters:
    """Connection parameters that fail fast (one attempt, short timeouts) and name the client."""
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.retry_delay = 0
    params.socket_timeout = 5
    params.stack_timeout = 10
    params.blocked_connection_timeout = 30
    params.client_properties = {"connection_name": connection_name}
    return params


def describe_broker(url: str) -> str:
    """``host:port/vhost`` of an AMQP URL, without the password, for log lines."""
    parts = urlsplit(url)
    vhost = parts.path[1:] or "/"
    return f"{parts.hostname}:{parts.port or 5672}/{vhost}"


class OutageLog:
    """One log line when a dependency stops answering, one when it is back; growing backoff.

    Why: a broker restart must not fill the log with a traceback per retry. ``failed`` returns the
    delay to wait before the next try (``initial`` doubling up to ``maximum``).
    """

    def __init__(
        self, logger: logging.Logger, what: str, *, initial: float = 0.5, maximum: float = 30.0
    ) -> None:
        self.logger = logger
        self.what = what
        self.initial = initial
        self.maximum = maximum
        self.down_since: float | None = None
        self.failures = 0
        self._delay = initial

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def failed(self, error: BaseException | str) -> float:
        """Note a failed try; log only the first of an outage; return the seconds to wait."""
        reason = _short_reason(error)
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.failures = 0
            self._delay = self.initial
            self.logger.warning(
                "%s is not answering (%s); retrying with backoff up to %.0fs",
                self.what,
                reason,
                self.maximum,
            )
        else:
            self.logger.debug("%s still not answering (%s)", self.what, reason)
        self.failures += 1
        delay = self._delay
        self._delay = min(self._delay * 2, self.maximum)
        return delay

    def recovered(self) -> None:
        """Log the end of an outage, if there was one, and reset the backoff."""
        if self.down_since is None:
            return
        self.logger.warning(
            "%s is answering again after %.1fs (%d failed tries)",
            self.what,
            time.monotonic() - self.down_since,
            self.failures,
        )
        self.down_since = None
        self.failures = 0
        self._delay = self.initial


def _short_reason(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"[:300]


@dataclass(frozen=True)
class PublishResult:
    """What became of a published batch: per message confirmed, returned (index → reason)."""

    confirmed: list[bool]
    returned: dict[int, str]
    error: str | None


@dataclass(frozen=True)
class OutgoingMessage:
    """One outbox row ready to publish."""

    event_type: str
    body: bytes
    properties: pika.BasicProperties


class ConfirmingPublisher:
    """A ``SelectConnection`` with one confirm-mode channel, driven synchronously by its owner.

    Why not ``BlockingConnection``: its confirm mode waits for each message's ack before the next
    publish. Here ``publish`` sends a whole batch, then runs the I/O loop until every delivery tag
    is acked or nacked (``multiple=True`` covers all tags up to it), the connection drops, or the
    timeout passes. Only the thread that created it may use it (pika is not thread-safe).
    """

    def __init__(
        self,
        url: str,
        exchange: str,
        *,
        connection_name: str,
        open_timeout: float = 10.0,
        confirm_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.exchange = exchange
        self.connection_name = connection_name
        self.open_timeout = open_timeout
        self.confirm_timeout = confirm_timeout
        self._connection: pika.SelectConnection | None = None
        self._channel: Any = None
        self._ready = False
        self._error: str | None = None
        self._next_tag = 0
        self._unconfirmed: set[int] = set()
        self._nacked: set[int] = set()
        self._returned: dict[str, str] = {}

    @property
    def is_open(self) -> bool:
        return (
            self._ready
            and self._connection is not None
            and self._connection.is_open
            and self._channel is not None
            and self._channel.is_open
        )

    def open(self) -> None:
        """Connect, open a channel, declare the exchange and turn on confirms; or raise."""
        self.close()
        self._ready = False
        self._error = None
        self._next_tag = 0
        self._connection = pika.SelectConnection(
            amqp_parameters(self.url, self.connection_name),
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_open_error,
            on_close_callback=self._on_connection_closed,
        )
        self._pump_until(lambda: self._ready or self._error is not None, self.open_timeout)
        if not self._ready:
            reason = self._error or f"no answer within {self.open_timeout}s"
            self.close()
            raise BrokerUnavailable(reason)

    def publish(self, messages: Sequence[OutgoingMessage]) -> PublishResult:
        """Publish a batch (``mandatory``) and wait for its confirms.

        A message that matches no queue is returned by the broker (``Basic.Return``, always
        before its ``Basic.Ack``): it is confirmed but not delivered, so it is reported in
        ``returned`` (by message id) and never counted as sent.
        """
        if not self.is_open:
            raise BrokerUnavailable(self._error or "publisher is not connected")
        first_tag = self._next_tag + 1
        self._unconfirmed = set()
        self._nacked = set()
        self._returned = {}
        try:
            for message in messages:
                self._channel.basic_publish(
                    exchange=self.exchange,
                    routing_key=message.event_type,
                    body=message.body,
                    properties=message.properties,
                    mandatory=True,
                )
                self._next_tag += 1
                self._unconfirmed.add(self._next_tag)
        except pika.exceptions.AMQPError as exc:
            self._error = _short_reason(exc)
        self._pump_until(lambda: not self._unconfirmed or not self.is_open, self.confirm_timeout)
        confirmed = []
        for offset in range(len(messages)):
            tag = first_tag + offset
            confirmed.append(
                tag <= self._next_tag and tag not in self._unconfirmed and tag not in self._nacked
            )
        error: str | None = None
        if self._unconfirmed:
            error = self._error or f"no confirm within {self.confirm_timeout}s"
            # The channel's tag count can no longer be trusted: start over on a new connection.
            self.close()
        elif self._nacked:
            error = f"broker nacked {len(self._nacked)} of {len(messages)} messages"
        elif not all(confirmed):
            error = self._error or "the channel closed before the batch was published"
            self.close()
        returned = {
            index: self._returned[message.properties.message_id]
            for index, message in enumerate(messages)
            if message.properties.message_id in self._returned
        }
        return PublishResult(confirmed, returned, error)

    def pump(self, seconds: float) -> None:
        """Run the I/O loop for a while (heartbeats, a close from the broker) while idle."""
        if self._connection is not None and not self._connection.is_closed:
            self._pump_until(lambda: not self.is_open, seconds)

    def close(self) -> None:
        """Close the connection (waiting briefly for the broker's answer) and free the loop."""
        connection, self._connection = self._connection, None
        self._channel = None
        self._ready = False
        if connection is None:
            return
        try:
            if not (connection.is_closed or connection.is_closing):
                connection.close()
            deadline = time.monotonic() + 2.0
            while not connection.is_closed and time.monotonic() < deadline:
                timer = connection.ioloop.call_later(0.1, connection.ioloop.stop)
                connection.ioloop.start()
                connection.ioloop.remove_timeout(timer)
        except pika.exceptions.AMQPError as exc:
            log.debug("closing the relay's connection: %s", _short_reason(exc))
        finally:
            connection.ioloop.close()

    # -- I/O loop plumbing -----------------------------------------------------------------

    def _pump_until(self, done: Callable[[], bool], timeout: float) -> bool:
        connection = self._connection
        if connection is None:
            return done()
        ioloop = connection.ioloop
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            timer = ioloop.call_later(remaining, ioloop.stop)
            ioloop.start()
            ioloop.remove_timeout(timer)
        return True

    def _wake(self) -> None:
        if self._connection is not None:
            self._connection.ioloop.stop()

    def _on_connection_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_open_error(self, _connection: Any, error: BaseException | str) -> None:
        self._error = _short_reason(error)
        self._wake()

    def _on_connection_closed(self, _connection: Any, reason: BaseException) -> None:
        self._ready = False
        self._error = self._error or _short_reason(reason)
        self._wake()

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.exchange_declare(
            exchange=self.exchange,
            exchange_type=EXCHANGE_TYPE,
            durable=True,
            callback=lambda _frame: channel.confirm_delivery(
                self._on_confirm, callback=self._on_confirm_select_ok
            ),
        )

    def _on_confirm_select_ok(self, _frame: Any) -> None:
        self._ready = True
        self._wake()

    def _on_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        self._ready = False
        self._error = _short_reason(reason)
        if self._connection is not None and self._connection.is_open:
            self._connection.close()
        self._wake()

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        self._returned[properties.message_id] = (
            f"unroutable: {method.reply_code} {method.reply_text} "
            f"(no queue is bound for {method.routing_key!r})"
        )

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        settled = (
            {t for t in self._unconfirmed if t <= tag} if method.multiple else {tag}
        ) & self._unconfirmed
        self._unconfirmed -= settled
        if isinstance(method, Basic.Nack):
            self._nacked |= settled
        if not self._unconfirmed:
            self._wake()


class OutboxRelay:
    """Publishes pending outbox rows in batches with publisher confirms; see the module doc."""

    def __init__(
        self,
        db: Database,
        amqp_url: str,
        exchange: str,
        *,
        service: str,
        batch_size: int = 200,
        poll_seconds: float = 0.5,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        confirm_timeout: float = 30.0,
        unroutable_retry_initial: float = 5.0,
        unroutable_retry_max: float = 300.0,
    ) -> None:
        outbox = db.metadata.tables.get("outbox")
        if outbox is None:
            raise ValueError("the database's metadata has no outbox table (plumbing_tables)")
        self.db = db
        self.outbox: sa.Table = outbox
        self.amqp_url = amqp_url
        self.exchange = exchange
        self.service = service
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.unroutable_retry_initial = unroutable_retry_initial
        self.unroutable_retry_max = unroutable_retry_max
        self.sent_total = 0
        self._publisher = ConfirmingPublisher(
            amqp_url,
            exchange,
            connection_name=f"{service}-outbox-relay",
            confirm_timeout=confirm_timeout,
        )

    def run_once(self) -> int:
        """Publish one batch of pending rows; return how many were confirmed and marked sent.

        A row the broker returns as unroutable (no queue bound for its type yet) stays pending
        with the reason in ``last_error`` and is tried again after a growing delay
        (``next_attempt_at``), so it reaches a consumer whose queue is declared later.

        Raises ``BrokerUnavailable`` when the broker cannot be reached or the connection drops
        before every confirm came (the confirmed part is still marked sent).
        """
        outbox = self.outbox
        failure: BrokerUnavailable | None = None
        sent_types: list[str] = []
        now = datetime.now(UTC)
        with self.db.transaction() as session:
            rows = session.execute(
                sa.select(outbox.c.id, outbox.c.event_type, outbox.c.envelope, outbox.c.attempts)
                .where(
                    outbox.c.sent_at.is_(None),
                    sa.or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now),
                )
                .order_by(outbox.c.created_at, outbox.c.id)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return 0
            messages = [self._message(row.event_type, row.envelope) for row in rows]
            try:
                if not self._publisher.is_open:
                    self._publisher.open()
                result = self._publisher.publish(messages)
            except BrokerUnavailable as exc:
                result, failure = PublishResult([False] * len(rows), {}, str(exc)), exc
            sent, unsent, returned = [], [], []
            for index, (row, ok) in enumerate(zip(rows, result.confirmed, strict=True)):
                if index in result.returned:
                    returned.append((row, result.returned[index]))
                elif ok:
                    sent.append(row)
                else:
                    unsent.append(row)
            if sent:
                session.execute(
                    sa.update(outbox)
                    .where(among(session, outbox.c.id, [row.id for row in sent]))
                    .values(sent_at=datetime.now(UTC), next_attempt_at=None)
                )
                sent_types = [row.event_type for row in sent]
            if returned:
                self._keep_unroutable(session, returned, now)
            if unsent:
                RELAY_PUBLISH_FAILURES.labels(self.service).inc(len(unsent))
                error = result.error
                session.execute(
                    sa.update(outbox)
                    .where(among(session, outbox.c.id, [row.id for row in unsent]))
                    .values(attempts=outbox.c.attempts + 1, last_error=(error or "")[:2000])
                )
                if failure is None and not self._publisher.is_open:
                    failure = BrokerUnavailable(error or "connection lost")
                elif failure is None:
                    log.warning(
                        "broker refused %d of %d events; they stay pending: %s",
                        len(unsent),
                        len(rows),
                        error,
                    )
        for event_type, count in Counter(sent_types).items():
            EVENTS_PUBLISHED.labels(self.service, event_type).inc(count)
        self.sent_total += len(sent_types)
        if failure is not None:
            raise failure
        return len(sent_types)

    def _keep_unroutable(self, session: Session, returned: list[tuple[Any, str]], now: datetime):
        """Leave returned rows pending, each with its reason and the time of its next try."""
        outbox = self.outbox
        EVENTS_UNROUTED.labels(self.service).inc(len(returned))
        for row, reason in returned:
            delay = min(
                self.unroutable_retry_initial * 2 ** min(row.attempts, 16),
                self.unroutable_retry_max,
            )
            session.execute(
                sa.update(outbox)
                .where(outbox.c.id == row.id)
                .values(
                    attempts=outbox.c.attempts + 1,
                    last_error=reason[:2000],
                    next_attempt_at=now + timedelta(seconds=delay),
                )
            )
            # The first return of an event says so at WARNING; its later tries only at DEBUG.
            log.log(
                logging.WARNING if row.attempts == 0 else logging.DEBUG,
                "outbox relay: %s %s is unroutable (no queue bound); kept pending, "
                "next try in %.0fs",
                row.event_type,
                row.id,
                delay,
            )

    def run_forever(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set, surviving broker and database outages with backoff."""
        broker = OutageLog(
            log,
            f"outbox relay: broker {describe_broker(self.amqp_url)}",
            initial=self.backoff_initial,
            maximum=self.backoff_max,
        )
        database = OutageLog(
            log, "outbox relay: database", initial=self.backoff_initial, maximum=self.backoff_max
        )
        unexpected = OutageLog(
            log, "outbox relay", initial=self.backoff_initial, maximum=self.backoff_max
        )
        connected = BROKER_CONNECTED.labels(self.service, "relay")
        try:
            while not stop.is_set():
                try:
                    count = self.run_once()
                except BrokerUnavailable as exc:
                    connected.set(0)
                    stop.wait(broker.failed(exc))
                    continue
                except SQLAlchemyError as exc:
                    self._publisher.close()
                    stop.wait(database.failed(exc))
                    continue
                except Exception as exc:  # a bug must not end the relay thread for good
                    if not unexpected.is_down:
                        log.exception("outbox relay: unexpected error; retrying with backoff")
                    self._publisher.close()
                    stop.wait(unexpected.failed(exc))
                    continue
                unexpected.recovered()
                database.recovered()
                if self._publisher.is_open:
                    broker.recovered()
                    connected.set(1)
                if count < self.batch_size:
                    self._idle(stop)
        finally:
            connected.set(0)
            self._publisher.close()

    def close(self) -> None:
        """Close the broker connection (``run_forever`` does it when it stops)."""
        self._publisher.close()

    def _idle(self, stop: threading.Event) -> None:
        # Keep servicing the connection while idle so heartbeats flow and a close is noticed.
        if self._publisher.is_open:
            self._publisher.pump(self.poll_seconds)
        else:
            stop.wait(self.poll_seconds)

    def _message(self, event_type: str, envelope: dict[str, Any] | str) -> OutgoingMessage:
        if isinstance(envelope, str):  # some drivers hand JSON columns back as text
            envelope = json.loads(envelope)
        return OutgoingMessage(
            event_type=event_type,
            body=json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode(),
            properties=pika.BasicProperties(
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=str(envelope["id"]),
                correlation_id=str(envelope.get("correlation_id") or ""),
                type=event_type,
                app_id=self.service,
            ),
        )


def pending_count(db: Database) -> int:
    """Rows waiting in the outbox (the ``outbox_pending`` gauge reads it at scrape time)."""
    outbox = db.metadata.tables["outbox"]
    with db.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
            ).scalar_one()
        )


def oldest_pending_seconds(db: Database) -> float:
    """Age of the oldest row not yet sent, 0 when none waits (``outbox_oldest_pending_seconds``).

    Why: a pending count alone does not tell a steady trickle from a row stuck for an hour
    (an unroutable event, a broker that nacks)."""
    outbox = db.metadata.tables["outbox"]
    with db.engine.connect() as conn:
        oldest = conn.execute(
            sa.select(sa.func.min(outbox.c.created_at)).where(outbox.c.sent_at.is_(None))
        ).scalar_one()
    if oldest is None:
        return 0.0
    if isinstance(oldest, str):  # SQLite hands an aggregate back as text
        oldest = datetime.fromisoformat(oldest)
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - oldest).total_seconds())
