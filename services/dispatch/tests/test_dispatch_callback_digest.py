"""The supervisors' daily digest of callbacks waiting (回头看, ``callbacks.pending``) on a real
PostgreSQL database and broker: once per Asia/Shanghai day from ``CALLBACK_DIGEST_HOUR`` on,
however often and in how many copies the scheduler runs; nothing on a day nothing waits."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, date, datetime, timedelta

import pika
import sqlalchemy as sa
from dispatch_helpers import assign, envelope, outbox, post, settings_with

from dispatch import scheduler
from dispatch.app import make_database
from dispatch.handlers import handle_issue_rated
from dispatch.models import DigestMark, Issue
from shared.relay import OutboxRelay
from shared.testing import wait_for

# 2026-12-10 09:00 in Asia/Shanghai (UTC+8), the default CALLBACK_DIGEST_HOUR.
NINE = datetime(2026, 12, 10, 1, 0, tzinfo=UTC)


def digests(db) -> list[dict]:
    return [e["data"] for e in outbox(db, "callbacks.pending")]


def waiting(db, issue_id, closed_at: datetime, ticket_no: str | None = None) -> None:
    """Make the item a closed one waiting for its callback, closed at ``closed_at``."""
    with db.transaction() as session:
        session.execute(
            sa.update(Issue)
            .where(Issue.id == issue_id)
            .values(
                state="closed", callback_status="pending", closed_at=closed_at, ticket_no=ticket_no
            )
        )


def closed_after_unsatisfied(client, db, town, issue_id) -> None:
    """The real way to the callback list: rated unsatisfied once, then closed satisfied."""
    assign(client, issue_id, town.admin, town.worker1)
    for rating in ("unsatisfied", "satisfied"):
        post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
        post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "已处理。"})
        data = {"issue_id": str(issue_id), "rating": rating}
        with db.transaction() as session:
            handle_issue_rated(session, envelope("issue.rated", data))


def test_one_digest_a_day_from_the_digest_hour_on(client, db, town, report, settings):
    rated = report()
    closed_after_unsatisfied(client, db, town, rated)
    with db.transaction() as session:
        row = session.get(Issue, rated)
        assert (row.state, row.callback_status) == ("closed", "pending")
        row.closed_at = NINE - timedelta(days=5)  # a fixed time, for the order below
    older = report(village_id=town.village2)
    waiting(db, older, NINE - timedelta(days=9), ticket_no="SKJ-20261201-0007")
    no_ticket = report()
    waiting(db, no_ticket, NINE - timedelta(days=3))
    passed = report()
    with db.transaction() as session:  # neither this one nor an open one waits for a callback
        session.execute(
            sa.update(Issue)
            .where(Issue.id == passed)
            .values(state="closed", callback_status="passed", closed_at=NINE - timedelta(days=20))
        )
    report()

    # 08:59 in Shanghai: not yet, however often the scheduler looks.
    assert scheduler.run_once(db, settings, NINE - timedelta(minutes=1)).digests == 0
    assert digests(db) == []

    assert scheduler.run_once(db, settings, NINE).digests == 1
    assert scheduler.run_once(db, settings, NINE).digests == 0
    assert scheduler.run_once(db, settings, NINE + timedelta(hours=14, minutes=59)).digests == 0
    [digest] = digests(db)
    assert digest == {
        "date": "2026-12-10",
        "count": 3,
        "oldest_closed_at": (NINE - timedelta(days=9)).isoformat(),
        "tickets": ["SKJ-20261201-0007", "SKJ-20260301-0001", str(no_ticket)],
        "issue_ids": [str(older), str(rated), str(no_ticket)],
        "village_counts": {str(town.village1): 2, str(town.village2): 1},
    }
    event = outbox(db, "callbacks.pending")[0]
    assert event["producer"] == "dispatch" and event["version"] == 1

    # Past midnight in Shanghai (16:30 UTC) it is the next day, but before its digest hour.
    assert scheduler.run_once(db, settings, NINE + timedelta(hours=15, minutes=30)).digests == 0
    # The next day's digest, once.
    next_day = NINE + timedelta(days=1, minutes=30)
    assert scheduler.run_once(db, settings, next_day).digests == 1
    assert scheduler.run_once(db, settings, next_day + timedelta(hours=2)).digests == 0
    assert [d["date"] for d in digests(db)] == ["2026-12-10", "2026-12-11"]
    assert digests(db)[1]["count"] == 3
    with db.transaction() as session:
        marks = session.scalars(sa.select(DigestMark.day).order_by(DigestMark.day))
        assert list(marks) == [date(2026, 12, 10), date(2026, 12, 11)]


def test_nothing_is_sent_on_a_day_no_callback_waits(client, db, town, report, settings):
    done = report()
    with db.transaction() as session:  # closed, its callback already recorded
        session.execute(
            sa.update(Issue)
            .where(Issue.id == done)
            .values(state="closed", callback_status="passed", closed_at=NINE - timedelta(days=1))
        )
    assert scheduler.run_once(db, settings, NINE).digests == 0
    assert scheduler.run_once(db, settings, NINE + timedelta(hours=5)).digests == 0
    assert digests(db) == []
    with db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(DigestMark)) == 0

    # Once an item waits later that day, that day's digest goes out (once).
    later = report()
    waiting(db, later, NINE + timedelta(hours=6), ticket_no="SKJ-20261210-0001")
    assert scheduler.run_once(db, settings, NINE + timedelta(hours=7)).digests == 1
    assert scheduler.run_once(db, settings, NINE + timedelta(hours=8)).digests == 0
    assert [(d["date"], d["count"], d["tickets"]) for d in digests(db)] == [
        ("2026-12-10", 1, ["SKJ-20261210-0001"])
    ]


def test_the_digest_names_the_ten_oldest_waiting_items(client, db, town, report, settings):
    ids = [report() for _ in range(12)]
    for n, issue_id in enumerate(ids):  # ids[11] closed first, ids[0] last
        waiting(db, issue_id, NINE - timedelta(hours=n + 1), ticket_no=f"SKJ-20261201-{n:04d}")
    assert scheduler.run_once(db, settings, NINE).digests == 1
    [digest] = digests(db)
    assert digest["count"] == 12
    assert digest["tickets"] == [f"SKJ-20261201-{n:04d}" for n in range(11, 1, -1)]
    assert digest["issue_ids"] == [str(i) for i in reversed(ids[2:])]
    assert digest["oldest_closed_at"] == (NINE - timedelta(hours=12)).isoformat()
    assert digest["village_counts"] == {str(town.village1): 12}


def test_the_digest_day_and_hour_are_shanghais(client, db, town, report, database_url, jwt_keys):
    settings = settings_with(database_url, jwt_keys, callback_digest_hour=0)
    waiting(db, report(), NINE - timedelta(days=1))
    # 2026-12-10 15:59 UTC is 23:59 of the 10th in Shanghai; 16:00 UTC is 00:00 of the 11th.
    assert scheduler.run_once(db, settings, NINE + timedelta(hours=14, minutes=59)).digests == 1
    assert scheduler.run_once(db, settings, NINE + timedelta(hours=15)).digests == 1
    assert [d["date"] for d in digests(db)] == ["2026-12-10", "2026-12-11"]


def test_two_schedulers_at_once_send_one_digest(client, db, town, report, settings):
    for n in range(3):
        waiting(db, report(), NINE - timedelta(days=n + 1))
    barrier = threading.Barrier(2)
    reports: list[scheduler.SchedulerReport] = []

    def copy() -> None:
        own_db = make_database(settings)  # a separate process would have its own engine
        barrier.wait()
        reports.append(scheduler.run_once(own_db, settings, NINE))
        own_db.dispose()

    threads = [threading.Thread(target=copy) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.digests for r in reports) == [0, 1]
    assert [d["count"] for d in digests(db)] == [3]


def test_the_digest_reaches_the_broker_through_the_outbox_relay(
    client, db, town, report, settings, amqp_url
):
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.exchange_declare(settings.events_exchange, exchange_type="topic", durable=True)
    notify = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(notify, settings.events_exchange, routing_key="callbacks.pending")
    relay = OutboxRelay(db, amqp_url, settings.events_exchange, service="dispatch")
    issue_id = report()
    waiting(db, issue_id, NINE - timedelta(days=2), ticket_no="SKJ-20261208-0003")
    assert scheduler.run_once(db, settings, NINE).digests == 1
    try:
        assert relay.run_once() == 1

        def received() -> dict | None:
            method, _props, body = channel.basic_get(notify, auto_ack=True)
            return json.loads(body) if method else None

        message = wait_for(received, timeout=15)
    finally:
        relay.close()
        connection.close()
    assert message["type"] == "callbacks.pending" and message["producer"] == "dispatch"
    assert message["data"]["tickets"] == ["SKJ-20261208-0003"]
    assert message["data"]["issue_ids"] == [str(issue_id)]
    assert uuid.UUID(message["id"]) == uuid.UUID(outbox(db, "callbacks.pending")[0]["id"])
