"""A worker killed mid-stream (SIGKILL: no clean-up at all) loses nothing and doubles nothing.

Each of the five workers in turn: while a stream of the township's work flows (a resident's
reports; the admin assigning earlier reports, the grid worker starting and resolving them; new
accounts; monthly 红黑榜), the worker is killed and, a few steps later, started again. Every
service then holds each report, step, point, inbox message, account and board exactly once
(``Tally.assert_counted_once``).

- intake's worker relays intake's outbox (reports, accounts) and consumes dispatch's steps into
  the resident's timeline: killed, rows it had not marked sent go again (perhaps twice), and
  its unacked steps come back from the broker.
- dispatch's worker relays every step and consumes reports and accounts.
- scoring's worker consumes the steps into the points ledger and relays points.awarded and
  leaderboard.published: a point must not count twice, in the ledger or in the worker's inbox.
- notify's worker turns every event into inbox rows: each person is told of each thing once.
- feed's worker consumes accounts and the monthly boards: each month's 红黑榜 is posted once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from shared.testing import wait_for
from tests.e2e.harness import Township
from tests.faults.tally import CONSUMERS, Tally

STEPS = 24  # each step: one new report, and what the step numbers below add
KILL_AFTER = 8  # steps done before the kill
RESTART_AFTER = 18  # steps done before the restart: the steps in between run with no worker
PREPARED = STEPS // 2  # reports made before the stream; the j-th is worked at step 2j
ACCOUNT_STEPS = (3, 11, 15, 21)
BOARD_STEPS = (5, 13)


class Stream(threading.Thread):
    """Does the steps one after another from its own thread, while the test kills a worker.

    After ``pause_after`` steps it waits for ``resume`` (set once the worker is dead), so that
    the steps after it are certainly done while no worker runs, however fast this is.
    """

    def __init__(self, step: Callable[[int], None], count: int, pause_after: int) -> None:
        super().__init__(name="township-stream", daemon=True)
        self.step = step
        self.count = count
        self.pause_after = pause_after
        self.resume = threading.Event()
        self.done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n in range(self.count):
                if n == self.pause_after and not self.resume.wait(timeout=60):
                    raise AssertionError("the stream was never resumed")
                self.step(n)
                self.done += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            self.error = exc

    def reached(self, n: int) -> Callable[[], bool]:
        def check() -> bool:
            if self.error is not None:
                raise self.error
            assert self.is_alive() or self.done >= n, "the stream stopped early"
            return self.done >= n

        return check


@pytest.mark.slow
@pytest.mark.parametrize("service", CONSUMERS)
def test_a_worker_killed_mid_stream_loses_no_report_point_or_message_and_counts_none_twice(
    township: Township, service: str
):
    harness = township.harness
    tally = Tally.start(township, f"killed-{service}")
    # Months of their own for this test's boards (old ones: no real board is ever for them).
    year = 2001 + CONSUMERS.index(service)
    periods = {step: f"month:{year}-0{i + 1}" for i, step in enumerate(BOARD_STEPS)}

    # Before the stream: reports that the admin will assign during it, known to dispatch.
    prepared = [tally.report(n) for n in range(1, PREPARED + 1)]
    tally.wait_until_queued(prepared)
    points_before = tally.points_on_board()

    def step(n: int) -> None:
        tally.report(PREPARED + 1 + n)
        if n % 2 == 0:
            tally.work(prepared[n // 2], difficulty=n // 2 % 5 + 1)
        if n in ACCOUNT_STEPS:
            tally.add_account(n)
        if n in BOARD_STEPS:
            tally.publish_board(periods[n])

    stream = Stream(step, STEPS, pause_after=KILL_AFTER)
    stream.start()
    try:
        wait_for(stream.reached(KILL_AFTER), timeout=60)
        # What the first steps sent is still being relayed and consumed when the worker dies.
        harness.kill(service, "worker")
    finally:
        stream.resume.set()
    wait_for(stream.reached(RESTART_AFTER), timeout=60)
    harness.start(service, "worker")
    stream.join(timeout=60)
    assert not stream.is_alive(), "the stream did not finish"
    if stream.error is not None:
        raise stream.error
    assert len(tally.reports) == PREPARED + STEPS
    assert len(tally.worked) == PREPARED
    assert len(tally.accounts) == len(ACCOUNT_STEPS)
    assert tally.boards == list(periods.values())

    tally.assert_counted_once(points_before)
