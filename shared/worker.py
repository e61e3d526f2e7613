"""The ``worker`` process of a service: the outbox relay and the retention purge in threads, the
consumer in the main one.

The relay starts at once and runs whatever the consumer's state (a broker that refuses the
consumer's queues, a database outage): an event this service sends before its own queue is bound
is returned as unroutable and stays pending until it can be routed. Each loop has its own broker
connection (pika connections are not thread-safe). SIGTERM or
SIGINT sets one stop event; both loops finish their current batch or message and close. When the
broker does not answer, each loop says so in one line and keeps retrying with backoff instead of
crashing, so ``docker compose up`` or ``make run`` may start workers before RabbitMQ is ready.
With ``METRICS_PORT`` set, the worker serves its own series (``events_consumed_total``,
``events_published_total``, ``dlq_messages``...) as Prometheus text on that port.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

from sqlalchemy.exc import SQLAlchemyError

from shared import retention
from shared.consumer import Consumer, Handler
from shared.db import Database
from shared.metrics import EVENTS_UNROUTED, RELAY_PUBLISH_FAILURES, serve_process_metrics
from shared.relay import OutageLog, OutboxRelay, describe_broker
from shared.settings import ServiceSettings

log = logging.getLogger("shared.worker")


@dataclass(frozen=True)
class PeriodicJob:
    """Work a service's worker does on a timer (e.g. scoring's monthly 红黑榜).

    ``run(db)`` must be idempotent: it runs at start and then every ``every_seconds``, and
    several worker copies may run it at once.
    """

    name: str
    every_seconds: float
    run: Callable[[Database], object]


def _run_periodically(job: PeriodicJob, db: Database, stop: threading.Event, service: str) -> None:
    """Run ``job`` until ``stop``; a database outage backs off, a bug is logged and retried."""
    outage = OutageLog(log, f"{service} {job.name}: database", initial=5.0, maximum=300.0)
    while not stop.is_set():
        try:
            job.run(db)
        except SQLAlchemyError as exc:
            stop.wait(outage.failed(exc))
            continue
        except Exception:  # a bug must not end the job for good; it is logged in full
            log.exception(
                "%s %s failed; trying again in %.0fs", service, job.name, job.every_seconds
            )
        else:
            outage.recovered()
        stop.wait(job.every_seconds)


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
        batch_size=settings.consumer_batch_size,
        batch_linger=settings.consumer_batch_linger_ms / 1000,
        max_attempts=settings.consumer_max_attempts,
        retry_delays_ms=settings.consumer_retry_delays_ms,
        delivery_limit=settings.consumer_delivery_limit,
    )


def relay_for(settings: ServiceSettings, db: Database) -> OutboxRelay:
    """The service's outbox relay, configured from its settings."""
    return OutboxRelay(
        db,
        settings.rabbitmq_url,
        settings.events_exchange,
        service=settings.service_name,
        batch_size=settings.relay_batch_size,
        poll_seconds=settings.relay_poll_seconds,
        unroutable_retry_initial=settings.relay_unroutable_retry_seconds,
        unroutable_retry_max=settings.relay_unroutable_retry_max_seconds,
    )


def retention_policy(settings: ServiceSettings) -> retention.RetentionPolicy:
    return retention.RetentionPolicy(
        outbox_days=settings.outbox_retention_days,
        inbox_days=settings.inbox_retention_days,
        batch_size=settings.retention_batch_size,
    )


def declare_queues(
    settings: ServiceSettings, db: Database, subscriptions: Mapping[str, Handler] | None
) -> None:
    """Create the service's queues and bindings now (before anyone publishes what it consumes);
    an empty main queue declared with older arguments is re-created with today's."""
    if subscriptions:
        consumer_for(settings, db, subscriptions).upgrade_main_queue()


def run_worker(
    settings: ServiceSettings,
    db: Database,
    subscriptions: Mapping[str, Handler] | None,
    *,
    relay: bool = True,
    stop: threading.Event | None = None,
    jobs: Sequence[PeriodicJob] = (),
) -> None:
    """Run the relay (thread) and the consumer (this thread) until SIGTERM/SIGINT or ``stop``.

    ``stop`` lets a test drive the worker from another thread; signal handlers are installed only
    when called from the main thread.
    """
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
    threads: list[threading.Thread] = []
    stop_metrics = serve_process_metrics(settings.metrics_port, settings.metrics_host)

    def start(name: str, target, *args, **kwargs) -> None:
        thread = threading.Thread(target=target, args=args, kwargs=kwargs, name=name)
        thread.start()
        threads.append(thread)

    if relay:
        # Counters that stay at 0 while all is well are shown from the start: a series that
        # appears only with the first failure cannot be watched with increase().
        EVENTS_UNROUTED.labels(service)
        RELAY_PUBLISH_FAILURES.labels(service)
    try:
        if relay:
            start(f"{service}-outbox-relay", relay_for(settings, db).run_forever, stop)
        start(
            f"{service}-retention",
            retention.run_forever,
            db,
            retention_policy(settings),
            stop,
            service=service,
            interval_seconds=settings.retention_interval_seconds,
        )
        for job in jobs:
            start(f"{service}-{job.name}", _run_periodically, job, db, stop, service)
        if subscriptions:
            consumer_for(settings, db, subscriptions).run_forever(stop)
        else:
            while not stop.wait(1.0):
                pass
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        if stop_metrics is not None:
            stop_metrics()
        log.info("%s worker: stopped", service)


def _stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info(
            "received %s; finishing the current work and stopping", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
