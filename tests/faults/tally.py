"""What the fault tests share: ``Tally`` does the township's work over HTTP (a resident's reports,
the admin's assignments, the worker's starts and resolutions, new accounts, monthly boards) and
remembers each thing it did; ``Tally.assert_counted_once`` then waits until every service has
caught up and compares what each one holds, in its database and over its API, with exactly what
was done: nothing missing, nothing twice.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.testing import wait_for
from tests.e2e.harness import Api, Harness, Township

CONSUMERS = ("intake", "dispatch", "scoring", "notify", "feed")
# A short retry ladder for a service under test: tries 1-3 go to the 100, 200 and 400 ms retry
# queues, the 4th failure to the DLQ, so that a fault outlasts the ladder in seconds.
RETRY_DELAYS_MS = [100, 200, 400]
MAX_ATTEMPTS = 4
SHORT_LADDER = {
    "CONSUMER_RETRY_DELAYS_MS": json.dumps(RETRY_DELAYS_MS),
    "CONSUMER_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
}
# Steps a worked item leaves in intake's timeline, each made by intake's consumer from an event.
WORK_STEPS = ("issue.assigned", "issue.started", "issue.resolved")
CATCH_UP = 120  # seconds for every service to catch up (a broker outage's backoff is up to 30 s)


def settle(what: str, count: Callable[[], int], expected: int, timeout: float = CATCH_UP) -> None:
    """Wait until ``count()`` reaches ``expected``, then require exactly that many."""
    seen: list[int] = []

    def reached() -> bool:
        seen.append(count())
        return seen[-1] >= expected

    try:
        wait_for(reached, timeout=timeout, interval=0.25)
    except AssertionError:
        raise AssertionError(f"{what}: {seen[-1]} of {expected} after {timeout}s") from None
    final = count()
    assert final == expected, f"{what}: {final} rows, {expected} wanted (something counted twice)"


def drained(harness: Harness, service: str, timeout: float = CATCH_UP) -> None:
    """Wait until the service's relay has sent every outbox row."""

    def pending() -> int:
        return harness.scalar(service, "SELECT count(*) FROM outbox WHERE sent_at IS NULL")

    try:
        wait_for(lambda: pending() == 0, timeout=timeout, interval=0.25)
    except AssertionError:
        raise AssertionError(
            f"{service}: {pending()} outbox rows unsent after {timeout}s"
        ) from None


@dataclass
class Tally:
    """One resident's stream of work through the township, and what it must leave behind."""

    township: Township
    resident: Api
    reports: dict[str, str] = field(default_factory=dict)  # issue id → ticket number
    worked: dict[str, int] = field(default_factory=dict)  # issue id → difficulty, resolved
    accounts: list[str] = field(default_factory=list)
    boards: list[str] = field(default_factory=list)  # leaderboard periods published

    @classmethod
    def start(cls, township: Township, tag: str) -> Tally:
        return cls(township, township.resident(f"faults-{tag}-{uuid.uuid4().hex[:8]}"))

    @property
    def harness(self) -> Harness:
        return self.township.harness

    def report(self, n: int) -> str:
        """The resident reports a broken street light; every report must get its 201."""
        answer = self.resident.post(
            "/api/v1/issues",
            {
                "category": "road_traffic",
                "description": f"第 {n} 号反映：村口路灯不亮，晚上看不清路。",
                "village_id": self.township.village_id,
            },
            expect=201,
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        self.reports[answer["id"]] = answer["ticket_no"]
        return answer["id"]

    def wait_until_queued(self, ids: list[str], timeout: float = 45) -> None:
        """Reports reach the admin's queue in dispatch before the admin can assign them."""
        admin = self.township.dispatch(self.township.admin)
        wanted = set(ids)
        wait_for(
            lambda: wanted <= {i["id"] for i in admin.pages("/api/v1/queue", limit=100)},
            timeout=timeout,
            interval=0.25,
        )

    def work(self, issue_id: str, difficulty: int) -> None:
        """The admin assigns it (due in 24 h), the grid worker starts and resolves it on time:
        events for intake's timeline, scoring's ledger and notify's inboxes."""
        admin = self.township.dispatch(self.township.admin)
        worker = self.township.dispatch(self.township.worker)
        admin.post(
            f"/api/v1/issues/{issue_id}/assign",
            {
                "assignee_id": self.township.worker.user["id"],
                "difficulty": difficulty,
                "due_in_hours": 24,
            },
        )
        worker.post(f"/api/v1/issues/{issue_id}/start", {})
        worker.post(f"/api/v1/issues/{issue_id}/resolve", {"note": "已更换灯泡，路灯已亮。"})
        self.worked[issue_id] = difficulty

    def add_account(self, n: int) -> str:
        """The admin opens a publicist's account (no village, so it changes no recipients)."""
        answer = self.township.admin.post(
            "/api/v1/accounts",
            {
                "username": f"faults-pub-{uuid.uuid4().hex[:10]}",
                "name": f"宣传员{n}号",
                "roles": ["publicist"],
                "password": "Faults-Pass-365",
            },
            expect=201,
        )
        self.accounts.append(answer["id"])
        return answer["id"]

    def publish_board(self, period: str) -> None:
        """scoring announces a month's 红黑榜 (its outbox; its worker's relay sends it)."""
        self.harness.command("scoring", "publish-board", "--period", period)
        self.boards.append(period)

    def points_on_board(self) -> int:
        """The grid worker's all-time points, as the public leaderboard shows them."""
        board = self.township.scoring(self.resident)
        rows = board.pages("/api/v1/leaderboard", limit=100, period="all")
        worker_id = self.township.worker.user["id"]
        return next((r["points"] for r in rows if r["id"] == worker_id), 0)

    # --- after the fault: every service holds each thing once -----------------------------------

    def assert_counted_once(self, points_before: int) -> None:
        """Every outbox drained, every consumer caught up, each effect exactly once, no DLQ."""
        h = self.harness
        for service in CONSUMERS:
            drained(h, service)
        self._dispatch()
        self._intake()
        self._scoring(points_before)
        self._notify()
        self._feed()
        for service in CONSUMERS:
            assert h.message_count(f"{service}.events.dlq") == 0, f"{service}: dead letters"

    def _dispatch(self) -> None:
        h, reports = self.harness, list(self.reports)
        settle(
            "dispatch: the resident's reports",
            lambda: h.scalar(
                "dispatch",
                "SELECT count(*) FROM issues WHERE reporter_id = :r",
                r=self.resident.user["id"],
            ),
            len(self.reports),
        )
        steps = h.rows(
            "dispatch",
            "SELECT action, count(*) FROM issue_history WHERE issue_id::text = ANY(:ids) "
            "GROUP BY action",
            ids=reports,
        )
        n = len(self.worked)
        assert dict(steps) == {
            "report": len(self.reports),
            **({"assign": n, "start": n, "resolve": n} if n else {}),
        }, steps
        # The admin's queue, read page by page, lists each report not yet worked once.
        admin = self.township.dispatch(self.township.admin)
        queued = [i["id"] for i in admin.pages("/api/v1/queue", limit=7) if i["id"] in self.reports]
        assert Counter(queued) == Counter(set(self.reports) - set(self.worked)), queued

    def _intake(self) -> None:
        h, worked = self.harness, list(self.worked)

        def steps() -> list:
            return h.rows(
                "intake",
                "SELECT issue_id, kind, count(*) FROM issue_steps "
                "WHERE issue_id::text = ANY(:ids) AND kind = ANY(:kinds) GROUP BY issue_id, kind",
                ids=worked,
                kinds=list(WORK_STEPS),
            )

        settle(
            "intake: timeline steps of the worked reports", lambda: len(steps()), 3 * len(worked)
        )
        doubled = [row for row in steps() if row[2] != 1]
        assert not doubled, f"intake shows a step twice: {doubled}"
        for issue_id in worked:
            assert self.resident.get(f"/api/v1/issues/{issue_id}")["status"] == "resolved"

    def _scoring(self, points_before: int) -> None:
        h, worked = self.harness, list(self.worked)
        settle(
            "scoring: ledger entries of the worked reports",
            lambda: h.scalar(
                "scoring",
                "SELECT count(*) FROM points_ledger WHERE issue_id::text = ANY(:ids)",
                ids=worked,
            ),
            len(worked),
        )
        entries = h.rows(
            "scoring",
            "SELECT issue_id, user_id, rule_code, points FROM points_ledger "
            "WHERE issue_id::text = ANY(:ids)",
            ids=worked,
        )
        assert {str(i): p for i, _u, _r, p in entries} == self.worked, entries
        worker_id = self.township.worker.user["id"]
        assert {(str(u), r) for _i, u, r, _p in entries} == {(worker_id, "resolved_on_time")}
        assigned = h.scalar(
            "scoring",
            "SELECT count(*) FROM assignments WHERE issue_id::text = ANY(:ids)",
            ids=worked,
        )
        assert assigned == len(worked)
        settle(
            "scoring: ticket numbers of the reports",
            lambda: h.scalar(
                "scoring",
                "SELECT count(*) FROM issues WHERE id::text = ANY(:ids) AND ticket_no IS NOT NULL",
                ids=list(self.reports),
            ),
            len(self.reports),
        )
        # The board shows the points once; the totals agree with the ledger (exit 1 otherwise).
        expected = points_before + sum(self.worked.values())
        settle("scoring: the worker's points on the board", self.points_on_board, expected)
        h.command("scoring", "rebuild", "--check")

    def _notify(self) -> None:
        h, t = self.harness, self.township
        admin_id, worker_id = t.admin.user["id"], t.worker.user["id"]
        leader_id, resident_id = t.grid_leader.user["id"], self.resident.user["id"]
        # scoring's points.awarded events for the worked reports: one per ledger entry.
        awarded = dict(
            h.rows(
                "scoring",
                "SELECT envelope->>'id', envelope->'data'->>'issue_id' FROM outbox "
                "WHERE event_type = 'points.awarded' AND envelope->'data'->>'issue_id' = ANY(:ids)",
                ids=list(self.worked),
            )
        )
        assert Counter(awarded.values()) == Counter(list(self.worked)), awarded
        wanted: Counter = Counter()
        for issue_id in self.reports:
            for user in (admin_id, worker_id, leader_id):
                wanted[("reported", issue_id, user)] += 1
        for issue_id in self.worked:
            wanted[("assigned", issue_id, worker_id)] += 1
            wanted[("assigned", issue_id, leader_id)] += 1
            wanted[("resolved", issue_id, resident_id)] += 1
            wanted[("points", issue_id, worker_id)] += 1
        for period in self.boards:
            wanted[("leaderboard", period, worker_id)] += 1
            wanted[("leaderboard", period, leader_id)] += 1

        def inbox() -> Counter:
            rows = h.rows(
                "notify",
                "SELECT kind, link_id, event_id::text, user_id::text FROM notifications "
                "WHERE link_id = ANY(:links) OR event_id::text = ANY(:events)",
                links=[*self.reports, *self.boards],
                events=list(awarded),
            )
            return Counter(
                (kind, awarded[event] if kind == "points" else link, user)
                for kind, link, event, user in rows
            )

        settle("notify: inbox rows", lambda: sum(inbox().values()), sum(wanted.values()))
        got = inbox()
        assert got == wanted, {"missing": wanted - got, "extra or twice": got - wanted}
        # The resident's inbox, as the mini-program reads it: each resolution told once.
        told = [
            n["link"]["id"]
            for n in t.notify(self.resident).pages("/api/v1/notifications", limit=20)
            if n["kind"] == "resolved"
        ]
        assert Counter(told) == Counter(list(self.worked)), told

    def _feed(self) -> None:
        h = self.harness
        settle(
            "feed: the new accounts",
            lambda: h.scalar(
                "feed",
                "SELECT count(*) FROM people WHERE id::text = ANY(:ids) AND account_known",
                ids=self.accounts,
            ),
            len(self.accounts),
        )
        settle(
            "feed: the 红黑榜 posts",
            lambda: h.scalar(
                "feed", "SELECT count(*) FROM posts WHERE board_period = ANY(:p)", p=self.boards
            ),
            len(self.boards),
        )
        # Each board post was announced once (post.published, written with the post).
        announced = h.scalar(
            "feed",
            "SELECT count(*) FROM outbox o JOIN posts p ON p.id::text = o.envelope->'data'->>'id' "
            "WHERE o.event_type = 'post.published' AND p.board_period = ANY(:p)",
            p=self.boards,
        )
        assert announced == len(self.boards), announced
        posts = self.township.feed(self.township.worker).pages(
            "/api/v1/posts", limit=20, tag="honor_board"
        )
        shown = [
            p["board"]["period"]
            for p in posts
            if (p.get("board") or {}).get("period") in self.boards
        ]
        assert Counter(shown) == Counter(self.boards), shown
