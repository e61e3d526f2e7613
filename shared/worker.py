"""The ``worker`` process of a service: the outbox relay in a thread, the consumer in the main one.

Each loop has its own broker connection (pika connections are not thread-safe). SIGTERM or
SIGINT sets one stop event; both loops finish their current batch or message and close. When the
broker does not answer, each loop says so in one line and keeps retrying with backoff instead of
crashing, so ``docker compose up`` or ``make run`` may start workers before RabbitMQ is ready.

Example (``services/dispatch/dispatch/worker.py``)::

    def main() -> None:
        settings = load_settings(DispatchSettings)
        configure_logging(settings.service_name, settings.log_level, settings.log_format)
        run_worker(settings, make_database(settings), SUBSCRIPTIONS)
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from types import FrameType

from shared.consumer import Consumer, Handler
from shared.db import Database
from shared.metrics import clean_stale_files
from shared.relay import OutboxRelay, describe_broker
from shared.settings import ServiceSettings

log = logging.getLogger("shared.worker")


def consumer_for(
    settings: ServiceSettings, db: Database, subscriptions: Mapping[str, Handler]
) -> Consumer:
    """The service's consumer, configured from its settings."""
    return Consumer(
        db,
        settings.rabbitmq_url,
        settings.events_exchange,
        service=settings.service_name,
        subscriptions=subscriptions,
        prefetch=settings.consumer_prefetch,
        max_attempts=settings.consumer_max_attempts,
        retry_delays_ms=settings.consumer_retry_delays_ms,
    )


def declare_queues(
    settings: ServiceSettings, db: Database, subscriptions: Mapping[str, Handler] | None
) -> None:
    """Create the service's queues and bindings now (before anyone publishes what it consumes):
    the broker drops a message that matches no queue."""
    if subscriptions:
        consumer_for(settings, db, subscriptions).declare()


def run_worker(
    settings: ServiceSettings,
    db: Database,
    subscriptions: Mapping[str, Handler] | None,
    *,
    relay: bool = True,
    stop: threading.Event | None = None,
) -> None:
    """Run the relay (thread) and the consumer (this thread) until SIGTERM/SIGINT or ``stop``.

    ``stop`` lets a test drive the worker from another thread; signal handlers are installed only
    when called from the main thread.
    """
    clean_stale_files()
    # pika logs every failed connection attempt at ERROR, with tracebacks; our loops log one line
    # per outage instead, so its own lines would only repeat them.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        _stop_on_signals(stop)
    service = settings.service_name
    subscriptions = dict(subscriptions or {})
    log.info(
        "%s worker: exchange %s on %s; consuming %s; outbox relay %s",
        service,
        settings.events_exchange,
        describe_broker(settings.rabbitmq_url),
        ", ".join(sorted(subscriptions)) or "nothing",
        "on" if relay else "off",
    )
    relay_thread: threading.Thread | None = None

    def start_relay() -> None:
        # Started once the consumer's queue is bound, so that on a first start the events this
        # service sends to itself are not published before their queue exists.
        nonlocal relay_thread
        if not relay or relay_thread is not None:
            return
        outbox_relay = OutboxRelay(
            db,
            settings.rabbitmq_url,
            settings.events_exchange,
            service=service,
            batch_size=settings.relay_batch_size,
            poll_seconds=settings.relay_poll_seconds,
        )
        relay_thread = threading.Thread(
            target=outbox_relay.run_forever, args=(stop,), name=f"{service}-outbox-relay"
        )
        relay_thread.start()

    try:
        if subscriptions:
            consumer_for(settings, db, subscriptions).run_forever(stop, on_connected=start_relay)
        else:
            start_relay()
            while not stop.wait(1.0):
                pass
    finally:
        stop.set()
        if relay_thread is not None:
            relay_thread.join(timeout=60)
        log.info("%s worker: stopped", service)


def _stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info(
            "received %s; finishing the current work and stopping", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
