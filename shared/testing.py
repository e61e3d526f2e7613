"""Pytest fixtures for the real servers: local PostgreSQL/RabbitMQ when they answer, otherwise
testcontainers when Docker is there; neither means the run fails loudly (never a skip).

Every test database is new (``t_<service>_<hex>``, migrated with the service's Alembic history)
and every broker test gets its own vhost, so tests never see each other's rows or queues.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa


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

    def create_database(self, prefix: str) -> str:
        name = f"t_{prefix}_{uuid.uuid4().hex[:10]}"
        engine = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        self.created.append(name)
        return self.url(name)

    def drop_all(self) -> None:
        engine = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for name in self.created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
        self.created.clear()


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
        for name in self.created:
            self.ctl(["delete_vhost", name])
        self.created.clear()


def _local_rabbitmqctl(args: list[str]) -> None:
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    host = os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1")
    port = int(os.environ.get("TEST_POSTGRES_PORT", "5432"))
    if _answers(host, port):
        server = PostgresServer(host, port, os.environ.get("TEST_POSTGRES_USER", "postgres"),
                                os.environ.get("TEST_POSTGRES_PASSWORD", ""))
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
            rabbit.get_container_host_ip(), int(rabbit.get_exposed_port(5672)), "guest", "guest",
            ctl,
        )


@pytest.fixture
def amqp_url(rabbit_server: RabbitServer) -> str:
    """A fresh, empty vhost on the real broker for this test."""
    return rabbit_server.create_vhost()


@pytest.fixture
def fresh_database(postgres_server: PostgresServer) -> Callable[[str], str]:
    """``fresh_database("intake")``: a new PostgreSQL database migrated to the service's head."""
    from shared.migrations import upgrade

    def make(service: str) -> str:
        url = postgres_server.create_database(service)
        upgrade(service, url)
        return url

    return make
