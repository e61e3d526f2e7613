"""RabbitMQ stopped for a minute (``rabbitmqctl stop_app``) under a stream of the township's work.

The residents keep reporting, the admin keeps assigning and the grid worker keeps resolving,
each with its answer at once: the changes wait in each service's outbox (DESIGN.md:
"no change without its event, even if the broker is down for minutes"), and every web process
says on ``/readyz`` that the broker does not answer. Once the broker is back, every relay and
consumer reconnects by itself, and every service holds each report, step, point, inbox
message, account and board exactly once (``Tally.assert_counted_once``).

The broker is the test run's own (the ``rabbit_server`` fixture's ``ctl``: the local node, or
the container's): this module must not run beside other tests on the same broker.
"""

from __future__ import annotations

import re
import time

import pika
import pytest
import requests

from shared.testing import RabbitServer, wait_for
from tests.e2e.harness import Harness, Township
from tests.faults.tally import CATCH_UP, CONSUMERS, Tally

OUTAGE_SECONDS = 60
PREPARED = 10  # reports made before the outage; the admin and worker handle them during it
DURING = 40  # reports made while the broker is stopped, spread over the minute
WORK_EVERY = 4  # every 4th report of the outage, one prepared report is assigned and resolved
ACCOUNT_AT = (10, 30)  # the admin opens an account with these reports
BOARD_AT = 20  # scoring announces a month's 红黑榜 with this report
BOARD = "month:2000-01"  # a month of its own: no real board is ever for it
CHECK_AT = 5  # what the services say during the outage is checked after this report


def pending(harness: Harness, service: str) -> int:
    return harness.scalar(service, "SELECT count(*) FROM outbox WHERE sent_at IS NULL")


def readyz(harness: Harness, service: str) -> tuple[int, dict]:
    answer = requests.get(f"{harness.url(service)}/readyz", timeout=10)
    return answer.status_code, answer.json()


def outbox_metric(harness: Harness, service: str) -> float:
    """``outbox_pending{service=...}`` as Prometheus scrapes it from the web process."""
    text = harness.metrics_text(service)
    found = re.search(rf'^outbox_pending\{{service="{service}"\}} (\S+)$', text, re.M)
    assert found, f"{service} /metrics has no outbox_pending"
    return float(found.group(1))


def broker_answers(amqp_url: str) -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters(amqp_url)).close()
    except pika.exceptions.AMQPError:
        return False
    return True


def check_while_down(harness: Harness) -> dict[str, int]:
    """Every web says it is not ready because of the broker (not its database), yet lives."""
    for service in CONSUMERS:
        code, body = wait_for(
            lambda s=service: (answer := readyz(harness, s))[0] == 503 and answer,
            timeout=20,
            interval=0.5,
        )
        assert body["status"] == "unavailable", body
        assert body["problems"], body
        assert all(p.startswith("broker") for p in body["problems"]), body
        health = requests.get(f"{harness.url(service)}/healthz", timeout=10)
        assert health.status_code == 200, f"{service} /healthz: {health.status_code}"
    # The reports so far wait in intake's outbox, and the gauge says how many.
    waiting = pending(harness, "intake")
    assert waiting >= CHECK_AT + 1, waiting
    assert outbox_metric(harness, "intake") == waiting
    return {service: pending(harness, service) for service in ("intake", "dispatch")}


@pytest.mark.slow
def test_reports_made_while_the_broker_is_stopped_for_a_minute_reach_every_service_once(
    township: Township, rabbit_server: RabbitServer
):
    harness = township.harness
    tally = Tally.start(township, "outage")
    prepared = [tally.report(n) for n in range(1, PREPARED + 1)]
    tally.wait_until_queued(prepared)
    points_before = tally.points_on_board()
    for service in CONSUMERS:
        assert readyz(harness, service)[0] == 200, service

    rabbit_server.ctl(["stop_app"])
    try:
        stopped_at = time.monotonic()
        early: dict[str, int] = {}
        for n in range(DURING):
            tally.report(PREPARED + 1 + n)
            if n % WORK_EVERY == 0:
                tally.work(prepared[n // WORK_EVERY], difficulty=n // WORK_EVERY % 5 + 1)
            if n in ACCOUNT_AT:
                tally.add_account(n)
            if n == BOARD_AT:
                tally.publish_board(BOARD)
            if n == CHECK_AT:
                early = check_while_down(harness)
            # The outage is the scenario: the reports are spread over its minute.
            time.sleep(max(0.0, stopped_at + (n + 1) * OUTAGE_SECONDS / DURING - time.monotonic()))
        # Everything made during the outage still waits: one row per report and account in
        # intake, three per worked report (assign, start, resolve) in dispatch, the board.
        assert pending(harness, "intake") >= DURING + len(ACCOUNT_AT) > early["intake"]
        assert pending(harness, "dispatch") >= 3 * len(tally.worked) > early["dispatch"]
        assert pending(harness, "scoring") >= 1
        harness.assert_alive()
    finally:
        rabbit_server.ctl(["start_app"])
        rabbit_server.ctl(["await_startup"])
        wait_for(lambda: broker_answers(harness.amqp_url), timeout=60, interval=0.5)

    assert len(tally.reports) == PREPARED + DURING
    assert len(tally.worked) == PREPARED
    # Every worker consumes again and every web is ready, without anyone restarting them.
    for service in CONSUMERS:
        wait_for(lambda s=service: harness.consumers(f"{s}.events") >= 1, timeout=CATCH_UP)
        wait_for(lambda s=service: readyz(harness, s)[0] == 200, timeout=CATCH_UP, interval=0.5)
    tally.assert_counted_once(points_before)
