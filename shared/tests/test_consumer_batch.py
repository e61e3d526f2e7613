"""The consumer applies what is waiting in batches (one transaction, a savepoint per event), on
the real PostgreSQL and RabbitMQ: a failure stays its own, hooks and acks wait for the commit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from shared.consumer import batched
from shared.db import Database, after_commit
from shared.events import Envelope
from shared.testing import PostgresServer, TcpProxy, wait_for
from shared.tests.conftest import Broker, demo_notes, metadata, running
from shared.tests.test_consumer import Recorder, envelope, make_consumer, note_count, outcome_count


def _noted(db: Database, event_id: uuid.UUID) -> bool:
    """Whether another connection sees the event's note (that is: it was committed)."""
    with db.engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(demo_notes)
        return conn.execute(query.where(demo_notes.c.event_id == event_id)).scalar_one() == 1


class FailsFor:
    """Writes a note per event, and fails (after writing it) for the events it is given once."""

    __name__ = "handle_issue_reported"

    def __init__(self, db: Database, failing: set[str]) -> None:
        self.db = db
        self.failing = set(failing)
        self.calls: list[str] = []
        self.hooks: dict[str, bool] = {}

    def __call__(self, session: Session, event: Envelope) -> None:
        self.calls.append(str(event.id))
        session.execute(sa.insert(demo_notes).values(event_id=event.id, text=event.type))
        after_commit(
            session, lambda: self.hooks.setdefault(str(event.id), _noted(self.db, event.id))
        )
        if str(event.id) in self.failing:
            self.failing.discard(str(event.id))
            raise RuntimeError("this one fails once")


def test_a_failing_handler_in_a_batch_rolls_back_only_itself_and_only_it_is_retried(
    db: Database, broker: Broker, service: str
) -> None:
    events = [envelope() for _ in range(20)]
    bad = events[7]["id"]
    handler = FailsFor(db, {bad})
    consumer = make_consumer(db, broker, service, {"issue.reported": handler}, batch_size=100)
    consumer.declare()
    for item in events:  # all waiting before the consumer starts: one batch
        broker.publish(item, "issue.reported")

    with running(consumer.run_forever):
        wait_for(lambda: outcome_count(service, "issue.reported", "processed") == 20)

    assert outcome_count(service, "issue.reported", "retried") == 1
    assert note_count(db) == 20  # one note per event: the failed try's notes were rolled back
    assert handler.calls.count(bad) == 2  # the failed try, then its retry: never run twice at once
    # The batch's try without savepoints was rolled back when the bad one failed: the events
    # before it ran in that try and once more (their first run left nothing); the rest once.
    position = [item["id"] for item in events].index(bad)
    assert all(handler.calls.count(item["id"]) == 2 for item in events[:position])
    assert all(handler.calls.count(item["id"]) == 1 for item in events[position + 1 :])
    assert broker.depth(f"{service}.events.dlq") == 0


def test_after_commit_hooks_run_once_the_batch_committed_and_never_for_a_failed_handler(
    db: Database, broker: Broker, service: str
) -> None:
    events = [envelope() for _ in range(10)]
    bad = events[3]["id"]
    handler = FailsFor(db, {bad})
    consumer = make_consumer(
        db, broker, service, {"issue.reported": handler}, max_attempts=1, batch_size=100
    )
    consumer.declare()
    for item in events:
        broker.publish(item, "issue.reported")

    with running(consumer.run_forever):
        wait_for(lambda: outcome_count(service, "issue.reported", "dead_lettered") == 1)
        wait_for(lambda: outcome_count(service, "issue.reported", "processed") == 9)

    # Each hook ran once, and saw its event's note committed (not merely released).
    assert handler.hooks == {item["id"]: True for item in events if item["id"] != bad}


@pytest.fixture
def fail_the_next_commit() -> Iterator[list]:
    """Stop the given proxy right before the next (outermost) commit: the commit fails."""
    armed: list[TcpProxy] = []

    def before_commit(session: Session) -> None:
        if armed and not session.in_nested_transaction():
            armed.pop().stop()

    event.listen(Session, "before_commit", before_commit)
    yield armed
    event.remove(Session, "before_commit", before_commit)


def test_a_batch_whose_commit_fails_is_not_acked_and_is_applied_once_after(
    db: Database,
    broker: Broker,
    service: str,
    postgres_server: PostgresServer,
    fail_the_next_commit: list,
) -> None:
    handler = Recorder()
    with TcpProxy(postgres_server.host, postgres_server.port) as proxy:
        via_proxy = Database(proxy.rewrite(db.url), metadata=metadata, producer="demo")
        consumer = make_consumer(
            via_proxy, broker, service, {"issue.reported": handler}, backoff_max=0.3
        )
        consumer.declare()
        for _ in range(30):
            broker.publish(envelope(), "issue.reported")
        fail_the_next_commit.append(proxy)

        with running(consumer.run_forever):
            wait_for(lambda: handler.calls and not fail_the_next_commit)  # the commit failed
            # Nothing was committed and nothing acked: all 30 are back in the queue.
            wait_for(lambda: broker.depth(f"{service}.events") == 30, timeout=20)
            assert note_count(db) == 0
            proxy.start()
            wait_for(lambda: note_count(db) == 30, timeout=30)
            wait_for(lambda: broker.depth(f"{service}.events") == 0)
        via_proxy.dispose()

    assert outcome_count(service, "issue.reported", "processed") == 30
    assert outcome_count(service, "issue.reported", "retried") == 0
    assert broker.depth(f"{service}.events.dlq") == 0


def test_a_batch_that_cannot_commit_is_applied_one_by_one_and_only_the_culprit_retried(
    db: Database, broker: Broker, service: str
) -> None:
    with db.engine.begin() as conn:  # a rule PostgreSQL checks only at COMMIT
        conn.execute(
            sa.text(
                "CREATE TABLE tags (tag text, CONSTRAINT one_tag UNIQUE (tag) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    events = [envelope(tag=f"tag-{n}") for n in range(10)]
    events[6] = envelope(tag="tag-2")  # clashes with the third event, at commit only
    calls: list[str] = []

    def handle_issue_reported(session: Session, event: Envelope) -> None:
        calls.append(str(event.id))
        session.execute(sa.insert(demo_notes).values(event_id=event.id, text=event.type))
        session.execute(sa.text("INSERT INTO tags VALUES (:tag)"), {"tag": event.data["tag"]})

    consumer = make_consumer(
        db, broker, service, {"issue.reported": handle_issue_reported}, max_attempts=2
    )
    consumer.declare()
    for item in events:
        broker.publish(item, "issue.reported")

    with running(consumer.run_forever):
        wait_for(lambda: outcome_count(service, "issue.reported", "dead_lettered") == 1)
        wait_for(lambda: outcome_count(service, "issue.reported", "processed") == 9)

    assert outcome_count(service, "issue.reported", "retried") == 1
    assert note_count(db) == 9
    assert not _noted(db, uuid.UUID(events[6]["id"]))
    assert calls.count(events[6]["id"]) == 3  # in the batch, alone, and its one retry


def test_a_lone_event_is_applied_without_waiting_for_a_full_batch(
    db: Database, broker: Broker, service: str
) -> None:
    handler = Recorder()
    consumer = make_consumer(
        db, broker, service, {"issue.reported": handler}, batch_size=100, batch_linger=0.005
    )
    consumer.declare()

    with running(consumer.run_forever):
        wait_for(lambda: _consumers(broker, f"{service}.events") == 1)
        published = time.monotonic()
        broker.publish(envelope(), "issue.reported")
        wait_for(lambda: note_count(db) == 1, timeout=5)
        applied = time.monotonic()

    assert outcome_count(service, "issue.reported", "processed") == 1
    assert handler.calls[0] - published < 1.0  # not held back for 99 more
    assert applied - published < 5


def _consumers(broker: Broker, queue: str) -> int:
    return int(broker.channel.queue_declare(queue, passive=True).method.consumer_count)


class NotesTogether:
    """A ``batched`` handler: one multi-row insert of notes per call; fails (after writing)
    any call that holds an event of ``failing``, each such event only for its first N calls
    alone (``alone_failures``)."""

    def __init__(self, failing: set[str] = frozenset(), alone_failures: int = 0) -> None:
        self.failing = set(failing)
        self.alone_failures = alone_failures
        self.calls: list[list[str]] = []
        self.handler = batched(self.handle_issue_reported)

    def handle_issue_reported(self, session: Session, events: list[Envelope]) -> None:
        ids = [str(event.id) for event in events]
        self.calls.append(ids)
        session.execute(sa.insert(demo_notes), [{"event_id": e.id, "text": e.type} for e in events])
        bad = self.failing.intersection(ids)
        if bad and len(ids) > 1:
            raise RuntimeError("one of these is bad")
        if bad and sum(call == ids for call in self.calls) <= self.alone_failures:
            raise RuntimeError("this one fails alone too")


def test_a_batched_handler_gets_the_new_events_of_a_batch_in_one_call(
    db: Database, broker: Broker, service: str
) -> None:
    events = [envelope() for _ in range(30)]
    together = NotesTogether()
    consumer = make_consumer(
        db, broker, service, {"issue.reported": together.handler}, batch_size=100
    )
    consumer.declare()
    with running(consumer.run_forever):  # the first five, applied before the rest is there
        for item in events[:5]:
            broker.publish(item, "issue.reported")
        wait_for(lambda: outcome_count(service, "issue.reported", "processed") == 5)
    for item in events:  # all 30 waiting, five of them again (redeliveries): one batch
        broker.publish(item, "issue.reported")

    with running(consumer.run_forever):
        wait_for(lambda: outcome_count(service, "issue.reported", "processed") == 30)
        wait_for(lambda: outcome_count(service, "issue.reported", "duplicate") == 5)

    assert note_count(db) == 30
    assert together.calls[-1] == [item["id"] for item in events[5:]]  # the 25 new, in order
    assert together.handler.__name__ == "handle_issue_reported"  # what processed_events keeps


def test_a_failed_run_is_applied_one_event_at_a_time_and_only_the_culprit_retried(
    db: Database, broker: Broker, service: str
) -> None:
    events = [envelope() for _ in range(12)]
    bad = events[4]["id"]
    together = NotesTogether({bad}, alone_failures=1)
    consumer = make_consumer(
        db, broker, service, {"issue.reported": together.handler}, batch_size=100
    )
    consumer.declare()
    for item in events:
        broker.publish(item, "issue.reported")

    with running(consumer.run_forever):
        wait_for(lambda: outcome_count(service, "issue.reported", "processed") == 12)

    assert outcome_count(service, "issue.reported", "retried") == 1
    assert note_count(db) == 12  # the failed calls' notes were rolled back
    assert together.calls[0] == [item["id"] for item in events]  # the run, which failed
    # Then one at a time up to the culprit, which failed alone and went to its retry; the
    # try was rolled back and the others applied together again, and the culprit once retried.
    assert together.calls[1:6] == [[item["id"]] for item in events[:5]]
    assert together.calls[6] == [item["id"] for item in events if item["id"] != bad]
    assert together.calls[7:] == [[bad]]
    assert broker.depth(f"{service}.events.dlq") == 0
