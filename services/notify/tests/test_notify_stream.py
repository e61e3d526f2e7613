"""The real-time badge (``GET /api/v1/notifications/stream``) in a real ``python -m notify stream``
process: gunicorn's gthread worker on a free port, a fresh PostgreSQL database, rows written
straight into the inbox table as notify's worker writes them. Every wait has a deadline."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from notify.models import Base, Notification
from notify.settings import NotifySettings
from notify.stream import LATE_COMMIT_WINDOW, StreamHub, parse_event_id, stream_argv
from shared.clock import SHANGHAI
from shared.db import Database
from shared.settings import PROJECT_ROOT
from shared.testing import wait_for

STREAM = "/api/v1/notifications/stream"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- a stream client --------------------------------------------------------------------------


@dataclass
class Event:
    name: str | None = None
    data: Any = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None


@dataclass
class StreamClient:
    """Reads one stream in a thread of its own and keeps its events, for waiting on."""

    response: requests.Response
    events: list[Event] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> StreamClient:
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        block = Event()
        try:
            for line in self.response.iter_lines(chunk_size=1024, decode_unicode=True):
                if line == "":
                    if block != Event():
                        self._keep(block)
                    block = Event()
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    block.comment = value
                elif name == "event":
                    block.name = value
                elif name == "data":
                    block.data = json.loads(value)
                elif name == "id":
                    block.id = value
                elif name == "retry":
                    block.retry = int(value)
        except BaseException as exc:  # noqa: BLE001 - closed by the test, or a read timeout
            self.error = exc
        finally:
            self.ended.set()
            with self._changed:
                self._changed.notify_all()

    def _keep(self, event: Event) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def named(self, name: str) -> list[Event]:
        with self._changed:
            return [e for e in self.events if e.name == name]

    def notifications(self) -> list[Event]:
        return self.named("notification")

    def pings(self) -> int:
        with self._changed:
            return sum(1 for e in self.events if e.comment == "ping")

    def wait(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        return wait_for(predicate, timeout=timeout, interval=0.02)

    def close(self) -> None:
        self.response.close()


def close_all(clients: list[StreamClient]) -> None:
    """Close streams side by side: a close waits for its reader's current read (a ping away)."""
    closers = [threading.Thread(target=client.close) for client in clients]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join(timeout=10)


@dataclass
class StreamServer:
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])

    def children(self, pid: int | None = None) -> list[int]:
        pid = pid or self.process.pid
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def open(self, token: str | None, last_event_id: str | None = None) -> requests.Response:
        headers = {"Accept": "text/event-stream"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        # The read timeout outlives several heartbeats: a stalled stream fails the test.
        return requests.get(self.base_url + STREAM, headers=headers, stream=True, timeout=(5, 15))

    def listen(self, token: str, last_event_id: str | None = None) -> StreamClient:
        response = self.open(token, last_event_id)
        assert response.status_code == 200, response.text
        client = StreamClient(response).start()
        client.wait(lambda: client.named("unread"))
        return client


@pytest.fixture(scope="module")
def stream_database(migrated_database) -> str:
    return migrated_database("notify", "notify_stream")


@pytest.fixture(scope="module")
def inbox_db(stream_database) -> Iterator[Database]:
    db = Database(stream_database, metadata=Base.metadata, producer="notify")
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def start_stream(stream_database, jwt_keys, tmp_path_factory) -> Iterator[Callable[..., Any]]:
    """``start_stream(STREAM_MAX_SECONDS="2")``: a ``python -m notify stream`` process."""
    started: list[StreamServer] = []

    def start(**env_overrides: str) -> StreamServer:
        folder = tmp_path_factory.mktemp("stream")
        port = _free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PROMETHEUS", "GUNICORN", "STREAM_", "WEB_CONCURRENCY"))
        } | {
            "APP_ENV": "test",
            "DATABASE_URL": stream_database,
            "JWT_PUBLIC_KEY_FILE": str(jwt_keys[1]),
            "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
            "LOG_FORMAT": "text",
            "SERVICE365_VAR_DIR": str(folder / "var"),
            "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
            "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{PROJECT_ROOT / 'services' / 'notify'}",
            "STREAM_PORT": str(port),
            "STREAM_THREADS": "60",
            "STREAM_HEARTBEAT_SECONDS": "0.5",
            "STREAM_POLL_SECONDS": "0.2",
            "STREAM_MAX_SECONDS": "120",
        }
        env |= env_overrides
        (folder / "metrics").mkdir()
        log_path = folder / "stream.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "notify", "stream"],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = StreamServer(process, f"http://127.0.0.1:{port}", log_path)
        started.append(server)

        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"stream process exited:\n{server.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                return requests.get(server.base_url + "/healthz", timeout=2).status_code == 200
            return False

        wait_for(healthy, timeout=30, interval=0.1)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.terminate()
    for server in started:
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="module")
def server(start_stream) -> StreamServer:
    """One stream process for the tests that need nothing special (60 threads, 0.5 s pings)."""
    return start_stream()


@pytest.fixture
def add(inbox_db) -> Callable[..., list[Notification]]:
    """``add(user_id, ...)``: inbox rows committed in one transaction, as notify's worker does."""

    def make(
        *user_ids: uuid.UUID,
        read: bool = False,
        created_at: datetime | None = None,
        title: str = "您有一件新的事项",
    ) -> list[Notification]:
        rows = [
            Notification(
                user_id=user_id,
                event_id=uuid.uuid4(),
                event_type="issue.assigned",
                kind="assigned",
                title=title,
                body="请及时处理。",
                link_type="issue",
                link_id=str(uuid.uuid4()),
                variables={},
                created_at=created_at or datetime.now(UTC),
                read_at=datetime.now(UTC) if read else None,
            )
            for user_id in user_ids
        ]
        with inbox_db.transaction() as session:
            session.add_all(rows)
        return rows

    return make


@pytest.fixture
def token(issuer) -> Callable[[uuid.UUID], str]:
    return lambda user_id: issuer.issue(user_id, ["resident"], "张三")[0]


# --- the tests ----------------------------------------------------------------------------------


def test_the_stream_refuses_a_missing_or_tampered_token_with_a_json_401(server, token):
    missing = server.open(None)
    head, payload, signature = token(uuid.uuid4()).split(".")
    tampered = server.open(f"{head}.{payload}.{signature[:-4]}AAAA")

    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert tampered.status_code == 401
    assert tampered.json()["error"]["code"] == "invalid_token"


def test_the_stream_opens_with_a_retry_line_and_the_callers_unread_count(server, token, add):
    me, someone_else = uuid.uuid4(), uuid.uuid4()
    add(me, me)
    add(me, read=True)
    newest = add(me)[0]
    add(someone_else)

    response = server.open(token(me))
    client = StreamClient(response).start()
    first = client.wait(lambda: client.events[:1])[0]

    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert first.retry == 5000
    assert (first.name, first.data) == ("unread", {"unread": 3})
    # A fresh stream's id is its user's newest message: a reconnect resumes from there.
    assert parse_event_id(first.id) == (newest.created_at, newest.id)
    client.close()


def test_a_new_message_reaches_its_users_stream_within_seconds_and_no_one_elses(server, token, add):
    me, neighbour = uuid.uuid4(), uuid.uuid4()
    add(me)
    mine = server.listen(token(me))
    theirs = server.listen(token(neighbour))

    sent = time.monotonic()
    row = add(me, title="事项已指派给您")[0]
    (event,) = mine.wait(mine.notifications, timeout=5)
    latency = time.monotonic() - sent
    # The neighbour's stream is in order: its own message after mine would come after mine.
    own = add(neighbour)[0]
    theirs.wait(theirs.notifications, timeout=5)

    assert latency < 3
    assert event.id == f"{row.created_at.isoformat(timespec='microseconds')}/{row.id}"
    assert event.data == {
        "id": str(row.id),
        "kind": "assigned",
        "title": "事项已指派给您",
        "link": {"type": "issue", "id": row.link_id},
        "created_at": row.created_at.astimezone(SHANGHAI).isoformat(),
        "unread": 2,
    }
    assert [e.data["id"] for e in theirs.notifications()] == [str(own.id)]
    assert [e.data["id"] for e in mine.notifications()] == [str(row.id)]
    mine.close()
    theirs.close()


def test_heartbeat_comments_keep_a_quiet_stream_alive(server, token):
    client = server.listen(token(uuid.uuid4()))

    client.wait(lambda: client.pings() >= 3, timeout=5)

    assert client.notifications() == []
    client.close()


def test_fifty_clients_on_one_gthread_worker_each_get_their_own_message(server, token, add):
    users = [uuid.uuid4() for _ in range(50)]
    clients: dict[uuid.UUID, StreamClient] = {}
    openers = [
        threading.Thread(target=lambda u=u: clients.__setitem__(u, server.listen(token(u))))
        for u in users
    ]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join(timeout=30)
    assert len(clients) == 50
    (worker,) = server.children()

    rows = {row.user_id: row for row in add(*users)}
    wait_for(lambda: all(c.notifications() for c in clients.values()), timeout=10)

    for user, client in clients.items():
        assert [e.data["id"] for e in client.notifications()] == [str(rows[user].id)]
    # One master and one worker the whole time: the streams are threads, not processes.
    assert server.children() == [worker]
    assert server.children(worker) == []
    threads = int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{worker}/status").read_text().splitlines()
            if line.startswith("Threads:")
        )
    )
    assert threads >= 50
    close_all(list(clients.values()))


def test_reconnecting_with_last_event_id_replays_what_was_missed_without_duplicates(
    server, token, add
):
    me = uuid.uuid4()
    # Another user's open stream keeps the watcher looking while mine is gone.
    bystander = server.listen(token(uuid.uuid4()))
    first = server.listen(token(me))
    seen = add(me)[0]
    (event,) = first.wait(first.notifications)
    first.close()
    missed = add(me) + add(me)

    again = server.listen(token(me), last_event_id=event.id)
    again.wait(lambda: len(again.notifications()) >= 2)
    # The watcher may hand the missed rows over as well: let a few of its looks pass.
    pings = bystander.pings()
    wait_for(lambda: bystander.pings() >= pings + 2, timeout=5)
    live = add(me)[0]
    again.wait(lambda: len(again.notifications()) >= 3)

    ids = [e.data["id"] for e in again.notifications()]
    assert ids == [str(r.id) for r in [*missed, live]]
    assert str(seen.id) not in ids
    assert again.named("unread")[0].data == {"unread": 3}
    again.close()
    bystander.close()


def test_a_stream_ends_after_stream_max_seconds_so_the_client_reconnects(start_stream, token):
    short = start_stream(STREAM_MAX_SECONDS="2")
    opened = time.monotonic()
    client = short.listen(token(uuid.uuid4()))

    assert client.ended.wait(timeout=10)
    lasted = time.monotonic() - opened

    assert client.error is None
    assert 1.7 <= lasted < 5
    assert client.pings() >= 2


def test_a_full_worker_answers_503_with_retry_after_and_keeps_serving_health(start_stream, token):
    small = start_stream(STREAM_THREADS="12")  # one thread kept free: 11 streams
    clients = [small.listen(token(uuid.uuid4())) for _ in range(11)]

    refused = small.open(token(uuid.uuid4()))

    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "stream_full"
    assert refused.headers["Retry-After"] == "5"
    assert requests.get(small.base_url + "/healthz", timeout=5).status_code == 200
    clients.pop().close()  # the server notices at its next ping

    def admitted() -> bool:
        with small.open(token(uuid.uuid4())) as response:
            return response.status_code == 200

    wait_for(admitted, timeout=10)
    close_all(clients)


def test_sigterm_ends_open_streams_at_once_instead_of_after_the_graceful_timeout(
    start_stream, token
):
    doomed = start_stream()
    client = doomed.listen(token(uuid.uuid4()))

    stopped = time.monotonic()
    doomed.process.send_signal(signal.SIGTERM)

    assert client.ended.wait(timeout=5)
    assert doomed.process.wait(timeout=15) == 0
    assert time.monotonic() - stopped < 15  # the graceful timeout is 20 s


def test_the_watcher_hands_a_late_committed_row_over_once_and_only_to_its_user(inbox_db, add):
    hub = StreamHub(inbox_db, poll_seconds=60, capacity=10)
    me, other = uuid.uuid4(), uuid.uuid4()
    listener = hub.listen(me)
    now = datetime.now(UTC)
    on_time = add(me, created_at=now)[0]
    add(other, created_at=now)
    assert hub.look() == 1
    # Stamped before the row already handed out, committed only now.
    late = add(me, created_at=now - LATE_COMMIT_WINDOW / 2)[0]

    assert hub.look() == 1
    assert hub.look() == 0
    handed = [listener.inbox.get_nowait(), listener.inbox.get_nowait()]
    assert listener.inbox.empty()
    assert [a.id for a in handed] == [on_time.id, late.id]
    assert [a.unread for a in handed] == [1, 2]
    hub.leave(listener)
    assert hub.look() == 0  # nobody listens: no query at all
    hub.close()


def test_the_watcher_reads_a_burst_larger_than_one_page_in_one_look(inbox_db, add, monkeypatch):
    import notify.stream

    monkeypatch.setattr(notify.stream, "LOOK_PAGE", 7)
    hub = StreamHub(inbox_db, poll_seconds=60, capacity=10)
    me = uuid.uuid4()
    listener = hub.listen(me)
    start = datetime.now(UTC)
    rows = add(*[me] * 20, created_at=start)  # the same created_at: the page key is (at, id)

    assert hub.look() == 20
    assert sorted(listener.inbox.get_nowait().id for _ in range(20)) == sorted(r.id for r in rows)
    hub.close()


def test_a_stale_or_foreign_last_event_id_is_ignored():
    assert parse_event_id(None) is None
    assert parse_event_id("not-ours") is None
    assert parse_event_id("2026-05-01T02:00:00/" + str(uuid.uuid4())) is None  # no zone
    moment = datetime(2026, 5, 1, 2, tzinfo=UTC) + timedelta(microseconds=5)
    ident = uuid.uuid4()
    assert parse_event_id(f"{moment.isoformat()}/{ident}") == (moment, ident)


def test_the_stream_command_runs_one_gthread_worker_on_its_own_port_and_socket(monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    argv = stream_argv(NotifySettings(stream_port=8115, stream_threads=150))

    def option(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert option("--worker-class") == "gthread"
    assert option("--threads") == "150"
    assert option("--workers") == "1"
    assert option("--bind") == "0.0.0.0:8115"
    assert option("--name") == "notify-stream"
    assert option("--control-socket").endswith("notify-stream.ctl")
    assert int(option("--timeout")) >= 60
    assert argv[-1] == "notify.stream:create_stream_app()"
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert stream_argv(NotifySettings())[argv.index("--workers") + 1] == "3"
