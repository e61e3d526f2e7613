"""dispatch's PostgreSQL goes away for far longer than the whole retry ladder while residents keep
reporting; when it returns, every report is in dispatch once and nothing was dead-lettered.

Only dispatch's database goes: PostgreSQL refuses new connections to it (``ALTER DATABASE ...
ALLOW_CONNECTIONS false``) and ends the ones it had (``pg_terminate_backend``), as a failed
database host or a lost network path looks to the service; the server, the broker and every
other service's database keep running. Residents still get their 201 from intake, whose events
wait in ``dispatch.events``. An outage is not the event's fault: dispatch's consumer must step
back without spending the event's retries, or a short outage would empty the queue into the DLQ.
Meanwhile dispatch's ``/readyz`` says 503, naming the database.

The retry ladder is short here (three retries, 0.7 s in all) so that the outage outlasts it many
times over within a few seconds.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from shared.testing import PostgresServer, wait_for
from tests.e2e.harness import Harness, Township
from tests.faults.tally import CONSUMERS, RETRY_DELAYS_MS, SHORT_LADDER

# dispatch's ladder: tries 1-3 go to the 100, 200 and 400 ms retry queues, the 4th to the DLQ.
LADDER_SECONDS = sum(RETRY_DELAYS_MS) / 1000
# How long the database stays away once the reports wait for it: many ladders.
OUTAGE_SECONDS = 8 * LADDER_SECONDS
REPORTS = 12

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness(start_system) -> Iterator[Harness]:
    """The whole system as real processes, dispatch with the short retry ladder."""
    with start_system("faults-db", env={"dispatch": SHORT_LADDER}) as system:
        yield system


@contextlib.contextmanager
def database_away(server: PostgresServer, url: str) -> Iterator[None]:
    """The database of ``url`` refuses every connection and loses those it had, until the
    block ends; the server and its other databases keep answering."""
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(
        server.url("postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )

    def cut() -> bool:
        with admin.connect() as conn:
            left = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).scalar_one()
        return left == 0

    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        wait_for(cut, timeout=15, interval=0.1)
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def series(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus scrape (0 when it was never counted)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def consumed(harness: Harness, outcome: str) -> float:
    """dispatch's worker: reports it consumed with that outcome since it started."""
    return series(
        harness.metrics_text("dispatch", "worker"),
        "events_consumed_total",
        service="dispatch",
        type="issue.reported",
        outcome=outcome,
    )


def readyz(harness: Harness) -> requests.Response:
    return requests.get(harness.url("dispatch") + "/readyz", timeout=10)


def dead_letters(harness: Harness) -> dict[str, int]:
    """What waits in each service's DLQ and in dispatch's retry queues."""
    queues = [f"{service}.events.dlq" for service in CONSUMERS]
    queues += [f"dispatch.events.retry.{delay}ms" for delay in RETRY_DELAYS_MS]
    return {queue: harness.message_count(queue) for queue in queues}


def test_reports_made_while_dispatch_database_is_away_reach_the_queue_once_it_returns(
    township: Township, harness: Harness, postgres_server: PostgresServer
):
    """Longer than the ladder, the outage spends no retries; the backlog applies once after."""
    resident = township.resident(f"faults-db-{uuid.uuid4().hex[:8]}")
    reporter_id = resident.user["id"]
    # The resident's account reaches dispatch first, so that only the reports wait for it.
    wait_for(
        lambda: harness.scalar(
            "dispatch", "SELECT count(*) FROM staff WHERE id = :u", u=reporter_id
        ),
        timeout=20,
    )
    processed_before = consumed(harness, "processed")
    assert readyz(harness).status_code == 200

    created: list[str] = []
    with database_away(postgres_server, harness.database_url("dispatch")):

        def says_database_away() -> dict | None:
            answer = readyz(harness)
            body = answer.json()
            return body if answer.status_code == 503 else None

        body = wait_for(says_database_away, timeout=20, interval=0.2)
        assert body["status"] == "unavailable" and body["service"] == "dispatch"
        assert [p for p in body["problems"] if p.startswith("database:")], body
        assert not [p for p in body["problems"] if p.startswith("broker:")], body
        # The admin opening the queue meanwhile is told in Chinese that it is unavailable.
        refused = township.dispatch(township.admin).get("/api/v1/queue", expect=503)
        assert refused["error"]["code"] == "unavailable"
        assert refused["error"]["message"] == "服务暂时不可用，请稍后再试。"

        for n in range(REPORTS):
            answer = resident.post(
                "/api/v1/issues",
                {
                    "category": "water_power",
                    "description": f"第 {n + 1} 号反映：村东头自来水停了一整天。",
                    "village_id": township.village_id,
                },
                expect=201,
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
            created.append(answer["id"])

        # dispatch's consumer met the outage on the first report and stepped back: every
        # report waits in its queue, none was counted as a failure of its own.
        wait_for(
            lambda: harness.queue_state("dispatch.events") == (REPORTS, 0), timeout=30, interval=0.2
        )
        gone_at = time.monotonic()
        while time.monotonic() - gone_at < OUTAGE_SECONDS:
            # The outage lasting is the scenario; checked all along that nothing is spent.
            assert set(dead_letters(harness).values()) == {0}, dead_letters(harness)
            assert harness.queue_state("dispatch.events") == (REPORTS, 0)
            assert readyz(harness).status_code == 503
            time.sleep(0.5)
        assert consumed(harness, "retried") == 0
        assert consumed(harness, "dead_lettered") == 0

    # The database is back: dispatch is ready again and catches up by itself.
    wait_for(lambda: readyz(harness).status_code == 200, timeout=30, interval=0.2)

    def applied() -> int:
        return harness.scalar(
            "dispatch", "SELECT count(*) FROM issues WHERE reporter_id = :r", r=reporter_id
        )

    wait_for(lambda: applied() == REPORTS, timeout=60, interval=0.25)
    ids = [
        str(row.id)
        for row in harness.rows(
            "dispatch", "SELECT id FROM issues WHERE reporter_id = :r", r=reporter_id
        )
    ]
    assert sorted(ids) == sorted(created)
    steps = harness.rows(
        "dispatch",
        "SELECT h.issue_id, count(*) AS n FROM issue_history h JOIN issues i ON i.id = h.issue_id "
        "WHERE i.reporter_id = :r AND h.action = 'report' GROUP BY h.issue_id",
        r=reporter_id,
    )
    assert len(steps) == REPORTS and all(row.n == 1 for row in steps), steps
    claims = harness.scalar(
        "dispatch",
        "SELECT count(*) FROM processed_events WHERE event_type = 'issue.reported'",
    )
    assert claims == REPORTS

    wait_for(lambda: harness.queue_state("dispatch.events") == (0, 1), timeout=20)
    assert set(dead_letters(harness).values()) == {0}, dead_letters(harness)
    # Counted just after each batch's ack: waited for, then exact.
    wait_for(lambda: consumed(harness, "processed") - processed_before >= REPORTS, timeout=10)
    assert consumed(harness, "processed") - processed_before == REPORTS
    assert consumed(harness, "retried") == 0
    assert consumed(harness, "dead_lettered") == 0
    assert consumed(harness, "duplicate") == 0

    # The admin's queue lists them again over HTTP.
    queue = township.dispatch(township.admin).pages("/api/v1/queue")
    assert {i["id"] for i in queue if i["reporter_id"] == reporter_id} == set(created)
