"""Pytest fixtures for the real servers: local PostgreSQL/RabbitMQ when they answer, otherwise
testcontainers when Docker is there; neither means the run fails loudly (never a skip).

Every test database is new (``t_<service>_<hex>``, migrated with the service's Alembic history)
and every broker test gets its own vhost, so tests never see each other's rows or queues.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import sqlalchemy as sa

T = TypeVar("T")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy and return it; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def at(text: str) -> datetime:
    """``at("2026-11-30T15:59:59Z")``: an aware UTC time, for tests that pin the clock."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def envelope(
    event_type: str,
    data: dict[str, Any],
    *,
    occurred_at: datetime | None = None,
    event_id: uuid.UUID | None = None,
    producer: str = "dispatch",
):
    """An event as the consumer hands it to a handler (``shared.events.Envelope``)."""
    from shared.events import Envelope

    return Envelope(
        id=event_id or uuid.uuid4(),
        type=event_type,
        version=1,
        occurred_at=occurred_at or datetime.now(UTC),
        producer=producer,
        correlation_id=str(uuid.uuid4()),
        data=data,
    )


def settings_for_test(cls: type[T], database_url: str, jwt_keys, **overrides: Any) -> T:
    """A service's settings for an in-process test: its database, the local broker, the test
    key pair, plain-text logs; ``overrides`` by field name."""
    values: dict[str, Any] = {
        "app_env": "test",
        "database_url": database_url,
        "rabbitmq_url": "amqp://guest:guest@127.0.0.1:5672/%2F",
        "jwt_public_key_file": jwt_keys[1],
        "log_format": "text",
    }
    values.update(overrides)
    return cls(**values)


@dataclass
class PostgresServer:
    """A PostgreSQL server the tests may create databases on."""

    host: str
    port: int
    user: str
    password: str = ""
    created: list[str] = field(default_factory=list)

    def url(self, database: str) -> str:
        auth = self.user + (f":{quote(self.password)}" if self.password else "")
        return f"postgresql+psycopg://{auth}@{self.host}:{self.port}/{database}"

    def create_database(self, prefix: str, template: str | None = None) -> str:
        name = f"t_{prefix}_{uuid.uuid4().hex[:10]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        engine = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"{clause}'))
        engine.dispose()
        self.created.append(name)
        return self.url(name)

    def drop(self, names: list[str]) -> None:
        """Drop these test databases now (``WITH (FORCE)``: a process the test left running may
        still be connected)."""
        if not names:
            return
        engine = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
        self.created = [n for n in self.created if n not in set(names)]

    def drop_all(self) -> None:
        self.drop(list(self.created))


@dataclass
class RabbitServer:
    """A RabbitMQ server; each test gets a vhost of its own."""

    host: str
    port: int
    user: str
    password: str
    ctl: Callable[[list[str]], None]
    created: list[str] = field(default_factory=list)

    def url(self, vhost: str) -> str:
        return f"amqp://{self.user}:{self.password}@{self.host}:{self.port}/{quote(vhost, safe='')}"

    def create_vhost(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.ctl(["add_vhost", name])
        self.ctl(["set_permissions", "-p", name, self.user, ".*", ".*", ".*"])
        self.created.append(name)
        return self.url(name)

    def delete_all(self) -> None:
        """Delete every vhost of the run in one ``rabbitmqctl eval`` (one call each is slow)."""
        if not self.created:
            return
        names = ", ".join(f'<<"{name}">>' for name in self.created)
        try:
            self.ctl(
                [
                    "eval",
                    f'lists:foreach(fun(V) -> rabbit_vhost:delete(V, <<"tests">>) end, [{names}]).',
                ]
            )
        except RuntimeError:
            for name in self.created:
                self.ctl(["delete_vhost", name])
        self.created.clear()


def _local_rabbitmqctl(args: list[str]) -> None:
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")


@contextlib.contextmanager
def throwaway_backends(metadata: sa.MetaData, producer: str = "bench") -> Iterator[tuple[str, Any]]:
    """A new vhost on the local RabbitMQ and a new database on the local PostgreSQL with
    ``metadata``'s tables, removed afterwards: ``(amqp_url, Database)``, for benchmark scripts."""
    from shared.db import Database

    postgres = PostgresServer("127.0.0.1", 5432, "postgres")
    rabbit = RabbitServer("127.0.0.1", 5672, "guest", "guest", _local_rabbitmqctl)
    amqp_url = rabbit.create_vhost(producer)
    db = Database(postgres.create_database(producer), metadata=metadata, producer=producer)
    try:
        metadata.create_all(db.engine)
        yield amqp_url, db
    finally:
        db.dispose()
        postgres.drop_all()
        rabbit.delete_all()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    host = os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1")
    port = int(os.environ.get("TEST_POSTGRES_PORT", "5432"))
    if _answers(host, port):
        server = PostgresServer(
            host,
            port,
            os.environ.get("TEST_POSTGRES_USER", "postgres"),
            os.environ.get("TEST_POSTGRES_PASSWORD", ""),
        )
        yield server
        server.drop_all()
        return
    if not _docker_available():
        pytest.fail(
            f"No PostgreSQL answers at {host}:{port} and Docker is not available: "
            "start PostgreSQL (see README) or Docker; these tests need a real database.",
            pytrace=False,
        )
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine", username="postgres", password="postgres") as pg:
        yield PostgresServer(
            pg.get_container_host_ip(), int(pg.get_exposed_port(5432)), "postgres", "postgres"
        )


@pytest.fixture(scope="session")
def rabbit_server() -> Iterator[RabbitServer]:
    host = os.environ.get("TEST_RABBITMQ_HOST", "127.0.0.1")
    port = int(os.environ.get("TEST_RABBITMQ_PORT", "5672"))
    if _answers(host, port) and shutil.which("rabbitmqctl"):
        server = RabbitServer(host, port, "guest", "guest", _local_rabbitmqctl)
        yield server
        server.delete_all()
        return
    if not _docker_available():
        pytest.fail(
            f"No RabbitMQ answers at {host}:{port} (with rabbitmqctl) and Docker is not "
            "available: start RabbitMQ (see README) or Docker; these tests need a real broker.",
            pytrace=False,
        )
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer("rabbitmq:3.13-management-alpine") as rabbit:

        def ctl(args: list[str]) -> None:
            code, output = rabbit.get_wrapped_container().exec_run(["rabbitmqctl", *args])
            if code != 0:
                raise RuntimeError(f"rabbitmqctl {args} failed: {output!r}")

        yield RabbitServer(
            rabbit.get_container_host_ip(),
            int(rabbit.get_exposed_port(5672)),
            "guest",
            "guest",
            ctl,
        )


@pytest.fixture
def amqp_url(rabbit_server: RabbitServer) -> str:
    """A fresh, empty vhost on the real broker for this test."""
    return rabbit_server.create_vhost()


@pytest.fixture(scope="session")
def session_amqp_url(rabbit_server: RabbitServer) -> str:
    """One vhost for the whole run: for apps that need a broker URL but publish nothing."""
    return rabbit_server.create_vhost("session")


@pytest.fixture(scope="session")
def _migrated_templates(postgres_server: PostgresServer) -> dict[str, str]:
    return {}


@pytest.fixture(scope="session")
def migrated_database(
    postgres_server: PostgresServer, _migrated_templates: dict[str, str]
) -> Callable[..., str]:
    """``migrated_database("intake")``: a new PostgreSQL database at the service's Alembic head,
    usable from a fixture of any scope (the end-to-end harness keeps one per test module).

    The migrations run once per service and run into a template database; each call then gets
    a copy (``CREATE DATABASE ... TEMPLATE``), which is much faster than migrating every time.
    """
    from shared.migrations import upgrade

    def make(service: str, prefix: str | None = None) -> str:
        template = _migrated_templates.get(service)
        if template is None:
            url = postgres_server.create_database(f"{service}_template")
            upgrade(service, url)
            template = url.rsplit("/", 1)[1]
            _migrated_templates[service] = template
        return postgres_server.create_database(prefix or service, template=template)

    return make


@pytest.fixture
def fresh_database(
    migrated_database: Callable[..., str], postgres_server: PostgresServer
) -> Iterator[Callable[[str], str]]:
    """``fresh_database("intake")``: a new database at the service's head for this test,
    dropped when the test ends (so the session does not end with hundreds left to drop)."""
    made: list[str] = []

    def make(service: str, prefix: str | None = None) -> str:
        url = migrated_database(service, prefix)
        made.append(url.rsplit("/", 1)[1])
        return url

    yield make
    postgres_server.drop(made)


class TcpProxy:
    """A real TCP forwarder between a client and a server that a test stops and starts.

    Why: to show that the relay and the consumer survive the broker going away, without stopping
    the shared RabbitMQ that other tests use. ``stop()`` refuses new connections and cuts the
    open ones (both ends see the connection drop); ``start()`` listens again on the same port.

    Example::

        with TcpProxy("127.0.0.1", 5672) as proxy:
            relay = OutboxRelay(db, proxy.rewrite(amqp_url), ...)
            proxy.stop()     # broker "down"
            proxy.start()    # broker "back"
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._running = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def rewrite(self, url: str) -> str:
        """The same URL pointing at the proxy's port on 127.0.0.1."""
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._running.set()
        self._spawn(self._accept_loop, listener)
        return self

    def stop(self) -> None:
        self._running.clear()
        with self._lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._running.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            self._spawn(self._pipe, client, upstream)

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        for sock in peers:
            sock.settimeout(10)
        try:
            while self._running.is_set():
                readable, _, _ = select.select(list(peers), [], [], 0.05)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):  # ValueError: stop() closed the socket under select()
            return
        finally:
            for sock in peers:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                with self._lock:
                    self._sockets.discard(sock)


@pytest.fixture(scope="session")
def jwt_keys(tmp_path_factory) -> tuple[Path, Path]:
    """A throwaway Ed25519 pair (private, public) for the whole run."""
    from shared.auth import ensure_keypair

    folder = tmp_path_factory.mktemp("keys")
    private, public = folder / "private.pem", folder / "public.pem"
    ensure_keypair(private, public)
    return private, public


@pytest.fixture(scope="session")
def issuer(jwt_keys):
    """Signs tokens as intake would, for tests of any service."""
    from shared.auth import TokenIssuer

    return TokenIssuer(
        jwt_keys[0].read_bytes(),
        issuer="service365-intake",
        audience="service365",
        ttl_seconds=3600,
    )
