"""Totals that several consumers write at once add up."""

from __future__ import annotations

import threading
from datetime import timedelta

from scoring_helpers import Dispatch

from scoring.handlers import SUBSCRIPTIONS
from scoring.models import ScoreTotal
from shared.testing import at, envelope


def test_resolutions_applied_by_parallel_consumers_add_up_in_the_totals(db, person) -> None:
    worker = person("grid_worker")
    due = at("2026-11-10T04:00:00Z")
    errors: list[BaseException] = []

    def consume(count: int) -> None:
        try:
            for _ in range(count):
                issue = Dispatch()
                data = issue.resolved(
                    worker.id, resolved_at=due - timedelta(hours=1), due_at=due, difficulty=2
                )
                with db.transaction() as session:
                    SUBSCRIPTIONS["issue.resolved"](session, envelope("issue.resolved", data))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(10,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    with db.transaction() as session:
        for period in ("month:2026-11", "quarter:2026-Q4", "year:2026", "all"):
            row = session.get(ScoreTotal, (period, worker.id))
            assert (row.points, row.resolved_on_time, row.entries) == (120, 60, 60)
