"""A worker killed mid-stream (SIGKILL: no clean-up at all) loses nothing and doubles nothing.

A resident sends 50 reports in a stream; while they flow, one worker is killed and, a few reports
later, started again. Afterwards dispatch holds each of the 50 exactly once: in the admin's
queue (read page by page), in its ``issues`` table, and with one ``report`` step each.

- intake's worker relays intake's outbox: killed, the rows it had not marked sent go again
  (perhaps twice), and dispatch's inbox must swallow the repeats.
- dispatch's worker consumes: killed, its unacked messages come back from the broker.
- notify's worker consumes too: killed, the admin is still told of each report exactly once.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from shared.testing import wait_for
from tests.e2e.harness import Api, Township

REPORTS = 50
KILL_AFTER = 10  # reports created before the kill
RESTART_AFTER = 30  # reports created before the restart
PAGE = 7  # small pages, so the count goes through the queue's cursor many times


class Stream(threading.Thread):
    """Sends the reports one after another from its own thread, while the test kills a worker.

    After ``pause_after`` reports it waits for ``resume`` (set once the worker is dead), so
    that the reports after it are certainly sent while no worker runs, however fast this is.
    """

    def __init__(self, resident: Api, village_id: str, count: int, pause_after: int) -> None:
        super().__init__(name="report-stream", daemon=True)
        self.resident = resident
        self.village_id = village_id
        self.count = count
        self.pause_after = pause_after
        self.resume = threading.Event()
        self.created: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n in range(self.count):
                if n == self.pause_after and not self.resume.wait(timeout=60):
                    raise AssertionError("the stream was never resumed")
                answer = self.resident.post(
                    "/api/v1/issues",
                    {
                        "category": "road_traffic",
                        "description": f"第 {n + 1} 号反映：村口路灯不亮，晚上看不清路。",
                        "village_id": self.village_id,
                    },
                    expect=201,
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                self.created.append(answer["id"])
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            self.error = exc

    def reached(self, n: int):
        def check() -> bool:
            if self.error is not None:
                raise self.error
            assert self.is_alive() or len(self.created) >= n, "the stream stopped early"
            return len(self.created) >= n

        return check


@pytest.mark.parametrize("service", ["dispatch", "intake", "notify"])
def test_fifty_reports_reach_dispatch_exactly_once_when_a_worker_is_killed_mid_stream(
    township: Township, service: str
):
    harness = township.harness
    admin = township.dispatch(township.admin)
    resident = township.resident(f"e2e-stream-{service}-{uuid.uuid4().hex[:8]}")
    reporter_id = resident.user["id"]

    stream = Stream(resident, township.village_id, REPORTS, pause_after=KILL_AFTER)
    stream.start()
    try:
        wait_for(stream.reached(KILL_AFTER), timeout=30)
        # The first reports are still being relayed and consumed when the worker dies.
        harness.kill(service, "worker")
    finally:
        stream.resume.set()
    wait_for(stream.reached(RESTART_AFTER), timeout=30)
    harness.start(service, "worker")
    stream.join(timeout=60)
    assert not stream.is_alive(), "the resident's stream did not finish"
    if stream.error is not None:
        raise stream.error
    assert len(set(stream.created)) == REPORTS

    # The admin's queue, page by page, holds each report once.
    def queued() -> list[str]:
        items = admin.pages("/api/v1/queue", limit=PAGE)
        return [i["id"] for i in items if i["reporter_id"] == reporter_id]

    def all_queued():
        ids = queued()
        return ids if len(set(ids)) >= REPORTS else None

    try:
        ids = wait_for(all_queued, timeout=45, interval=0.25)
    except AssertionError:
        raise AssertionError(
            f"{len(set(queued()))} of {REPORTS} reports reached dispatch's queue"
        ) from None
    assert len(ids) == REPORTS, f"the queue lists some report twice: {len(ids)} rows"
    assert set(ids) == set(stream.created)

    # dispatch's own tables agree: 50 issues, one "report" step each.
    issues = harness.scalar(
        "dispatch", "SELECT count(*) FROM issues WHERE reporter_id = :r", r=reporter_id
    )
    assert issues == REPORTS
    doubled = harness.rows(
        "dispatch",
        "SELECT h.issue_id, count(*) FROM issue_history h JOIN issues i ON i.id = h.issue_id "
        "WHERE i.reporter_id = :r AND h.action = 'report' GROUP BY h.issue_id",
        r=reporter_id,
    )
    assert len(doubled) == REPORTS
    assert all(count == 1 for _issue, count in doubled), doubled

    # Nothing waits in intake's outbox, nothing went to dispatch's dead letters.
    wait_for(
        lambda: harness.scalar("intake", "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0,
        timeout=30,
    )
    assert harness.message_count("dispatch.events.dlq") == 0

    # notify told the admin of each report exactly once (an inbox row per event and person).
    admin_id = township.admin.user["id"]

    def told_of_all():
        rows = harness.rows(
            "notify",
            "SELECT link_id, count(*) FROM notifications WHERE user_id = :u AND kind = 'reported' "
            "GROUP BY link_id",
            u=admin_id,
        )
        mine = {link: n for link, n in rows if link in set(stream.created)}
        return mine if len(mine) == REPORTS else None

    told = wait_for(told_of_all, timeout=45, interval=0.25)
    assert all(n == 1 for n in told.values()), told
    assert harness.message_count("notify.events.dlq") == 0
