"""Cross-service fixtures.

- ``intake`` / ``listener``: intake's app with its worker threads on a fresh vhost, and a queue of
  the test's own that sees what crossed the broker.
- ``harness`` / ``township`` (tests/e2e, tests/faults, tests/security): every service of
  ``tests.e2e.harness.SERVICES`` as real processes (fresh databases, one fresh vhost), once per
  test module, and an admin, a village with its area leader and a grid with its leader and worker,
  all made the way an operator makes them. When a test fails, the tail of every process's output
  is added to its report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Callable, Iterator, Mapping

import pika
import pytest

from intake.app import create_app as create_intake
from intake.handlers import SUBSCRIPTIONS as INTAKE_SUBSCRIPTIONS
from intake.settings import IntakeSettings
from shared.auth import TokenIssuer
from shared.consumer import Consumer
from shared.events import make_envelope
from shared.relay import OutboxRelay
from shared.testing import RabbitServer, wait_for
from tests.e2e.harness import SERVICES, Harness, Township, build_township


class Running:
    """Threads running a service's relay and consumer until the test ends."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, target, name: str) -> None:
        thread = threading.Thread(target=target, args=(self.stop,), name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)


@pytest.fixture
def intake(fresh_database, amqp_url, jwt_keys, tmp_path) -> Iterator[dict]:
    """Intake's web app plus its worker (relay and consumer threads) on a fresh vhost."""
    private, public = jwt_keys
    settings = IntakeSettings(
        app_env="test",
        database_url=fresh_database("intake"),
        rabbitmq_url=amqp_url,
        jwt_private_key_file=private,
        jwt_public_key_file=public,
        wechat_mode="dev",
        media_dir=tmp_path / "media",
        log_format="text",
        consumer_retry_delays_ms=[50, 100],
    )
    app = create_intake(settings)
    db = app.extensions["db"]
    consumer = Consumer(
        db,
        amqp_url,
        settings.events_exchange,
        service="intake",
        subscriptions=INTAKE_SUBSCRIPTIONS,
        retry_delays_ms=settings.consumer_retry_delays_ms,
    )
    consumer.declare()
    relay = OutboxRelay(db, amqp_url, settings.events_exchange, service="intake", poll_seconds=0.05)
    running = Running()
    running.start(relay.run_forever, "intake-relay")
    running.start(consumer.run_forever, "intake-consumer")
    issuer: TokenIssuer = app.extensions["token_issuer"]
    yield {
        "app": app,
        "client": app.test_client(),
        "db": db,
        "issuer": issuer,
        "settings": settings,
        "consumer": consumer,
    }
    running.close()
    relay.close()
    db.dispose()


class Listener:
    """A queue of the test's own, bound to the exchange: what crossed the broker."""

    def __init__(self, amqp_url: str, exchange: str, keys: list[str]) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        for key in keys:
            self.channel.queue_bind(self.queue, exchange, routing_key=key)
        self.exchange = exchange
        self.seen: list[dict] = []

    def _drain(self) -> None:
        while True:
            method, _props, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                return
            self.seen.append(json.loads(body))

    def wait_for(self, event_type: str, **data) -> dict:
        def found():
            self._drain()
            for envelope in self.seen:
                if envelope["type"] == event_type and all(
                    envelope["data"].get(k) == v for k, v in data.items()
                ):
                    return envelope
            return None

        return wait_for(found, timeout=15)

    def publish(self, event_type: str, data: dict, producer: str = "dispatch") -> dict:
        envelope = make_envelope(event_type, data, producer=producer)
        self.publish_envelope(envelope)
        return envelope

    def publish_envelope(self, envelope: dict) -> None:
        self.channel.basic_publish(
            self.exchange,
            envelope["type"],
            json.dumps(envelope).encode(),
            pika.BasicProperties(delivery_mode=2, content_type="application/json"),
        )

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def listener(amqp_url) -> Iterator[Listener]:
    listener = Listener(amqp_url, "service365.events", ["#"])
    yield listener
    listener.close()


# --- the whole system as real processes ---------------------------------------------------------

# The systems running now, so that a failed test (or fixture) can show their processes' output.
RUNNING: list[Harness] = []


@pytest.fixture(scope="session")
def start_system(
    tmp_path_factory: pytest.TempPathFactory,
    rabbit_server: RabbitServer,
    migrated_database: Callable[..., str],
    jwt_keys,
) -> Callable[..., contextlib.AbstractContextManager[Harness]]:
    """``with start_system("faults-db", env={"dispatch": {...}}, copies=2) as harness:`` the
    whole system as real processes (fresh databases, a fresh vhost) until the block ends, with
    ``env``'s settings added to some services'; a failed test shows the last lines of every
    process of the systems running then."""

    @contextlib.contextmanager
    def start(
        tag: str = "e2e", *, env: Mapping[str, Mapping[str, str]] | None = None, copies: int = 1
    ) -> Iterator[Harness]:
        prefix = tag.replace("-", "_")
        extra = env or {}
        specs = [dataclasses.replace(s, env={**s.env, **extra.get(s.name, {})}) for s in SERVICES]
        system = Harness(
            tmp_path_factory.mktemp(tag),
            lambda service: migrated_database(service, prefix=f"{prefix}_{service}"),
            rabbit_server.create_vhost(tag),
            jwt_keys,
            specs=specs,
            copies=copies,
        )
        RUNNING.append(system)
        try:
            system.start_all()
            yield system
        finally:
            RUNNING.remove(system)
            system.stop_all()

    return start


@pytest.fixture(scope="module")
def harness(request: pytest.FixtureRequest, start_system) -> Iterator[Harness]:
    """Every service's web, worker (and scheduler) as real processes until the module ends;
    a module's ``SYSTEM_COPIES = 2`` runs every worker and scheduler twice."""
    with start_system(copies=getattr(request.module, "SYSTEM_COPIES", 1)) as system:
        yield system


@pytest.fixture(scope="module")
def township(harness: Harness) -> Township:
    return build_township(harness)


@pytest.fixture(autouse=True)
def _processes_stay_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, every process must still run (a test restarts what it kills)."""
    yield
    if "harness" in request.fixturenames:
        request.getfixturevalue("harness").assert_alive()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test (or setup) shows what each process of the systems running then printed
    last (whatever fixture started them through ``start_system``)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for system in RUNNING:
            report.sections.append(("e2e processes (last lines)", system.report()))
