"""The real-time badge: ``GET /api/v1/notifications/stream`` (server-sent events), served by a
process of its own, ``python -m notify stream``: gunicorn's ``gthread`` worker, one thread per
open stream instead of a process. The regular web (sync workers) does not serve this route.

One watcher thread per process asks the database every ``STREAM_POLL_SECONDS``, with one query
for all users, what arrived since its last look, and hands each new row to the open streams of
that row's user only. A stream holds no database connection while it waits. What a client reads
(https://html.spec.whatwg.org/multipage/server-sent-events.html)::

    retry: 5000
    id: 2026-05-01T02:00:00.123456+00:00/6c1f0e2a-...     (the newest message; only when fresh)
    event: unread
    data: {"unread": 3}

    id: 2026-05-01T02:00:07.000001+00:00/0b9d4c11-...
    event: notification
    data: {"id": "0b9d...", "kind": "assigned", "title": "...", "link": {"type": "issue",
           "id": "..."}, "created_at": "2026-05-01T10:00:07.000001+08:00", "unread": 4}

    : ping

The event id is the message's ``created_at``/``id``: a client that reconnects with
``Last-Event-ID`` first gets what arrived after it. A stream ends after ``STREAM_MAX_SECONDS``
(a little less, so that clients connected together do not all come back together).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, current_app, request
from flask_smorest import Blueprint
from prometheus_client import Gauge

from notify import services
from notify.app import account_check, make_database
from notify.models import Notification
from notify.settings import NotifySettings
from shared.auth import current_principal
from shared.cli import gunicorn_argv, web_concurrency
from shared.clock import SHANGHAI
from shared.db import Database
from shared.errors import ServiceUnavailable, domain_error_response
from shared.settings import load_settings
from shared.web import create_service_app

log = logging.getLogger(__name__)

SERVICE = "notify"
STREAM_APP_PATH = "notify.stream:create_stream_app()"
# A row may be committed a while after its created_at was stamped (a long handler transaction,
# another host's clock): each look reaches this far behind the newest row it has seen, and rows
# already handed out are skipped by id.
LATE_COMMIT_WINDOW = timedelta(seconds=10)
# Rows per query of one look; a burst larger than this is read page by page in the same look.
LOOK_PAGE = 1000
# On reconnect at most this many missed messages are replayed (the newest; the inbox has all).
RESUME_LIMIT = 100
RETRY_MILLISECONDS = 5000
# Threads of each worker kept free for /healthz, /readyz, /metrics and the "full" answer.
RESERVED_THREADS = 5
# gthread's main loop tells the master it is alive every second whatever its threads do, so a
# long stream never trips the worker timeout; it only catches a worker whose loop is stuck.
WORKER_TIMEOUT_SECONDS = 120
EXTRA_CONNECTIONS = 100

STREAM_CLIENTS = Gauge(
    "stream_clients",
    "Open server-sent event streams (the real-time badge)",
    ["service"],
    multiprocess_mode="livesum",
)

blp = Blueprint(
    "notify_stream",
    __name__,
    url_prefix="/api/v1",
    description="实时消息推送 Notify stream (server-sent events)",
)


@dataclass(frozen=True)
class Arrival:
    """A new inbox row as a stream sends it; ``unread`` is its user's count when handed out."""

    id: uuid.UUID
    user_id: uuid.UUID
    kind: str
    title: str
    link_type: str | None
    link_id: str | None
    created_at: datetime
    unread: int | None = None

    @property
    def event_id(self) -> str:
        return _event_id(self.created_at, self.id)

    def data(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "kind": self.kind,
            "title": self.title,
            "link": {"type": self.link_type, "id": self.link_id},
            "created_at": self.created_at.astimezone(SHANGHAI).isoformat(),
            "unread": self.unread,
        }


_COLUMNS = (
    Notification.id,
    Notification.user_id,
    Notification.kind,
    Notification.title,
    Notification.link_type,
    Notification.link_id,
    Notification.created_at,
)


def _arrival(row: Any) -> Arrival:
    return Arrival(
        row.id, row.user_id, row.kind, row.title, row.link_type, row.link_id, row.created_at
    )


class Listener:
    """One open stream: what the watcher hands it waits in its own queue (None: stop)."""

    def __init__(self, user_id: uuid.UUID) -> None:
        self.user_id = user_id
        self.inbox: queue.SimpleQueue[Arrival | None] = queue.SimpleQueue()


class StreamHub:
    """The process's open streams by user, and the one watcher thread that feeds them.

    The watcher starts with the first stream. While no stream is open it does not look at all;
    the next stream first takes a fresh bearing (the newest row), so nothing old is re-sent.
    """

    def __init__(self, db: Database, poll_seconds: float, *, capacity: int) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self.capacity = capacity
        self._listeners: dict[uuid.UUID, set[Listener]] = {}
        self._count = 0
        self._lock = threading.Lock()  # the listeners
        self._look_lock = threading.Lock()  # one look at a time; the bearing below
        self._stale = True
        self._high_water: datetime | None = None
        self._seen: dict[uuid.UUID, datetime] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def listen(self, user_id: uuid.UUID) -> Listener | None:
        """A new listener for ``user_id``, or None when the process is full or stopping."""
        with self._look_lock:
            with self._lock:
                if self.closed or self._count >= self.capacity:
                    return None
            if self._stale:
                self._take_bearing()
            listener = Listener(user_id)
            with self._lock:
                self._listeners.setdefault(user_id, set()).add(listener)
                self._count += 1
            self._start_watcher()
        STREAM_CLIENTS.labels(SERVICE).inc()
        return listener

    def leave(self, listener: Listener) -> None:
        """Forget ``listener`` (safe to call more than once)."""
        with self._lock:
            group = self._listeners.get(listener.user_id)
            if group is None or listener not in group:
                return
            group.discard(listener)
            if not group:
                del self._listeners[listener.user_id]
            self._count -= 1
        STREAM_CLIENTS.labels(SERVICE).dec()

    def close(self) -> None:
        """End every open stream now and stop the watcher (the worker is stopping)."""
        self._stop.set()
        with self._lock:
            for group in self._listeners.values():
                for listener in group:
                    listener.inbox.put(None)

    def _start_watcher(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._watch, name="notify-stream-watcher", daemon=True
            )
            self._thread.start()

    def _watch(self) -> None:
        failures = 0
        while not self._stop.wait(min(self.poll_seconds * 2**failures, 30.0)):
            try:
                self.look()
            except Exception:  # the watcher outlives a database outage
                failures = min(failures + 1, 10)
                if failures == 1:
                    log.exception("stream watcher: look failed; retrying with backoff")
                else:
                    log.warning("stream watcher: look failed again (%d in a row)", failures)
            else:
                if failures:
                    log.info("stream watcher: looking again after %d failures", failures)
                failures = 0

    def look(self) -> int:
        """One look for all users: hand new rows to their users' streams; returns how many."""
        with self._look_lock:
            with self._lock:
                waiting = set(self._listeners)
            if not waiting:
                self._stale = True
                return 0
            if self._stale:
                self._take_bearing()
                return 0
            with self.db.transaction() as session:
                mine = [a for a in self._new_rows(session) if a.user_id in waiting]
                counts = self._unread_counts(session, {a.user_id for a in mine}) if mine else {}
            # Handed out before the next listener joins (it waits for the look lock): what
            # this look found was committed before that listener counted, and is known to it.
            for arrival in mine:
                with self._lock:
                    listeners = list(self._listeners.get(arrival.user_id, ()))
                for listener in listeners:
                    listener.inbox.put(replace(arrival, unread=counts.get(arrival.user_id, 0)))
        return len(mine)

    def horizon(self) -> datetime | None:
        """Rows created at or before this are never handed out again (None: any may be)."""
        with self._look_lock:
            return self._high_water - LATE_COMMIT_WINDOW if self._high_water else None

    def _take_bearing(self) -> None:
        """Start from the newest row: what is already there is not news to anyone."""
        with self.db.transaction() as session:
            newest = session.scalar(sa.select(sa.func.max(Notification.created_at)))
            seen: dict[uuid.UUID, datetime] = {}
            if newest is not None:
                rows = session.execute(
                    sa.select(Notification.id, Notification.created_at).where(
                        Notification.created_at > newest - LATE_COMMIT_WINDOW
                    )
                )
                seen = {row.id: row.created_at for row in rows}
        self._high_water, self._seen, self._stale = newest, seen, False

    def _new_rows(self, session) -> list[Arrival]:
        """Rows not handed out yet, oldest first: everything since the newest row seen, less
        the late-commit window (read through ``ix_notifications_created``), minus seen ids."""
        since = self._high_water - LATE_COMMIT_WINDOW if self._high_water else None
        fresh: list[Arrival] = []
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            stmt = sa.select(*_COLUMNS).order_by(Notification.created_at, Notification.id)
            if since is not None:
                stmt = stmt.where(Notification.created_at > since)
            if after is not None:
                stmt = stmt.where(
                    Notification.created_at >= after[0],
                    sa.tuple_(Notification.created_at, Notification.id) > after,
                )
            rows = session.execute(stmt.limit(LOOK_PAGE)).all()
            for row in rows:
                if row.id not in self._seen:
                    self._seen[row.id] = row.created_at
                    fresh.append(_arrival(row))
                if self._high_water is None or row.created_at > self._high_water:
                    self._high_water = row.created_at
            if len(rows) < LOOK_PAGE:
                break
            after = (rows[-1].created_at, rows[-1].id)
        if self._high_water is not None:
            horizon = self._high_water - LATE_COMMIT_WINDOW
            self._seen = {key: at for key, at in self._seen.items() if at > horizon}
        return fresh

    @staticmethod
    def _unread_counts(session, users: set[uuid.UUID]) -> dict[uuid.UUID, int]:
        """Unread counts of ``users`` in one query (``ix_notifications_user_unread``)."""
        rows = session.execute(
            sa.select(Notification.user_id, sa.func.count())
            .where(Notification.user_id.in_(users), Notification.read_at.is_(None))
            .group_by(Notification.user_id)
        )
        return {user_id: count for user_id, count in rows}


# --- the route ----------------------------------------------------------------------------------


def parse_event_id(value: str | None) -> tuple[datetime, uuid.UUID] | None:
    """``Last-Event-ID`` back into (created_at, id); None when absent or not ours."""
    if not value:
        return None
    moment, _, ident = value.strip().rpartition("/")
    try:
        at = datetime.fromisoformat(moment)
        return (at, uuid.UUID(ident)) if at.tzinfo is not None else None
    except ValueError:
        return None


def _event(name: str, data: dict[str, Any], event_id: str | None = None) -> str:
    lines = [f"id: {event_id}"] if event_id else []
    lines += [f"event: {name}", "data: " + json.dumps(data, ensure_ascii=False)]
    return "\n".join(lines) + "\n\n"


def _missed(session, user_id: uuid.UUID, after: tuple[datetime, uuid.UUID]) -> list[Arrival]:
    """The newest RESUME_LIMIT rows after the client's last event, oldest first."""
    rows = session.execute(
        sa.select(*_COLUMNS)
        .where(
            Notification.user_id == user_id,
            Notification.created_at >= after[0],
            sa.tuple_(Notification.created_at, Notification.id) > after,
        )
        .order_by(Notification.created_at.desc(), Notification.id.desc())
        .limit(RESUME_LIMIT)
    ).all()
    return [_arrival(row) for row in reversed(rows)]


def _recent_ids(session, user_id: uuid.UUID, horizon: datetime | None) -> set[uuid.UUID]:
    """The user's rows the watcher might still hand out (``ix_notifications_user_newest``)."""
    stmt = sa.select(Notification.id).where(Notification.user_id == user_id)
    if horizon is not None:
        stmt = stmt.where(Notification.created_at > horizon)
    return set(session.scalars(stmt))


def _newest_event_id(session, user_id: uuid.UUID) -> str | None:
    row = session.execute(
        sa.select(Notification.created_at, Notification.id)
        .where(Notification.user_id == user_id)
        .order_by(Notification.created_at.desc(), Notification.id.desc())
        .limit(1)
    ).first()
    return _event_id(row.created_at, row.id) if row else None


def _event_id(created_at: datetime, ident: uuid.UUID) -> str:
    return f"{created_at.astimezone(UTC).isoformat(timespec='microseconds')}/{ident}"


def _full() -> Response:
    response = domain_error_response(
        ServiceUnavailable("实时推送连接已满，请稍后重试。", code="stream_full")
    )
    response.headers["Retry-After"] = "5"
    return response


@blp.get("/notifications/stream")
@blp.doc(
    security=[{"bearerAuth": []}],
    responses={
        "200": {
            "description": "text/event-stream: event unread {unread}, then event notification "
            "{id, kind, title, link, created_at, unread} per new message; ': ping' comments",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        "503": {"description": "stream_full: this process holds as many streams as it can"},
    },
)
def stream():
    """实时角标：未读数和新消息（server-sent events）。断线后带 Last-Event-ID 重连可补发。"""
    principal = current_principal()
    assert principal is not None
    hub: StreamHub = current_app.extensions["notify_stream_hub"]
    settings: NotifySettings = current_app.extensions["settings"]
    db: Database = current_app.extensions["db"]
    resume = parse_event_id(request.headers.get("Last-Event-ID"))
    # Listen before counting: a row committed after the count still reaches this stream.
    listener = hub.listen(principal.id)
    if listener is None:
        return _full()
    try:
        horizon = hub.horizon()
        with db.transaction() as session:
            unread = services.unread_count(session, principal.id)
            # Rows counted now that the watcher has not looked at yet are not news to this
            # client: they would otherwise come again as events.
            known = _recent_ids(session, principal.id, horizon)
            missed = _missed(session, principal.id, resume) if resume else []
            newest = None if resume else _newest_event_id(session, principal.id)
    except BaseException:
        hub.leave(listener)
        raise
    opening = f"retry: {RETRY_MILLISECONDS}\n" + _event("unread", {"unread": unread}, newest)
    opening += "".join(
        _event("notification", replace(a, unread=unread).data(), a.event_id) for a in missed
    )
    lifetime = settings.stream_max_seconds * random.uniform(0.9, 1.0)
    body = _events(
        hub,
        listener,
        opening,
        sent=known | {a.id for a in missed},
        deadline=time.monotonic() + lifetime,
        heartbeat=settings.stream_heartbeat_seconds,
    )
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.call_on_close(lambda: hub.leave(listener))
    return response


def _events(
    hub: StreamHub,
    listener: Listener,
    opening: str,
    *,
    sent: set[uuid.UUID],
    deadline: float,
    heartbeat: float,
) -> Iterator[str]:
    """The body of one stream; runs in its gthread thread, outside any transaction."""
    try:
        yield opening
        next_ping = time.monotonic() + heartbeat
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            if now >= next_ping:
                next_ping = now + heartbeat
                yield ": ping\n\n"
                continue
            try:
                arrival = listener.inbox.get(timeout=min(deadline, next_ping) - now)
            except queue.Empty:
                continue
            if arrival is None:
                return
            if arrival.id in sent:
                continue
            sent.add(arrival.id)
            yield _event("notification", arrival.data(), arrival.event_id)
    finally:
        hub.leave(listener)


# --- the app and its process --------------------------------------------------------------------


def create_stream_app(settings: NotifySettings | None = None) -> Flask:
    """The stream process's app: shared plumbing (/healthz, /readyz, /metrics) and ``blp`` only."""
    settings = settings or load_settings(NotifySettings)
    db = make_database(settings)
    app, api = create_service_app(
        settings,
        db,
        title="Service365 notify stream 实时消息推送",
        account_check=account_check(db),
    )
    reserved = min(RESERVED_THREADS, settings.stream_threads // 10)
    hub = StreamHub(
        db, settings.stream_poll_seconds, capacity=max(settings.stream_threads - reserved, 1)
    )
    app.extensions["notify_stream_hub"] = hub
    _end_streams_on_stop(hub)
    api.register_blueprint(blp)
    return app


def _end_streams_on_stop(hub: StreamHub) -> None:
    """Under gunicorn, SIGTERM lets a worker finish its requests first: open streams would hold
    it for the whole graceful timeout. They end at once instead, and their clients reconnect to
    the next worker. (gunicorn loads the app after it sets its signal handlers, in the main
    thread; elsewhere, e.g. in a test's process, nothing is changed.)"""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    def stop(signum: int, frame: Any) -> None:
        hub.close()
        previous(signum, frame)

    signal.signal(signal.SIGTERM, stop)


def stream_argv(settings: NotifySettings) -> list[str]:
    """gunicorn's command line of ``notify stream``: gthread, STREAM_THREADS threads per worker,
    one worker unless WEB_CONCURRENCY says otherwise, STREAM_PORT, its own control socket."""
    workers = web_concurrency() if os.environ.get("WEB_CONCURRENCY", "").strip() else 1
    threads = settings.stream_threads
    return gunicorn_argv(
        SERVICE,
        settings,
        STREAM_APP_PATH,
        process="stream",
        port=settings.stream_port,
        workers=workers,
        extra=[
            "--worker-class",
            "gthread",
            "--threads",
            str(threads),
            # Connections a worker accepts; beyond its threads they would wait unanswered.
            "--worker-connections",
            str(threads + EXTRA_CONNECTIONS),
            "--timeout",
            str(WORKER_TIMEOUT_SECONDS),
        ],
    )


def run_stream(args: argparse.Namespace, settings: NotifySettings) -> int:
    """``python -m notify stream``: exec gunicorn (as ``web`` does) with the stream's argv."""
    argv = stream_argv(settings)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
    return 0  # not reached: exec replaces this process
