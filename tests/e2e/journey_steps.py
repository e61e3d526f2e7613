"""Steps the journeys share: a resident's report with a photo, waiting for what a person sees,
and the exact tallies (messages in an inbox, points of one item) that prove nothing happened
twice although every worker and the scheduler run in two copies (``SYSTEM_COPIES``)."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from PIL import Image

from shared.clock import SHANGHAI
from shared.testing import wait_for
from tests.e2e.harness import Api, Township

# Two copies of every worker and of the scheduler: the duplicate effects these journeys count.
COPIES = 2
# Nine web processes, ten workers and two schedulers share two cores: effects take a while.
TIMEOUT = 40

T = TypeVar("T")


def this_month() -> str:
    """The leaderboard period of now: the month in Asia/Shanghai."""
    return datetime.now(SHANGHAI).strftime("month:%Y-%m")


def jpeg(colour: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def upload_photo(api: Api, name: str, colour: tuple[int, int, int] = (40, 120, 200)) -> str:
    """A photo uploaded to intake (who may see it is intake's rule), its media id."""
    photo = api.post(
        "/api/v1/media", files={"file": (name, jpeg(colour), "image/jpeg")}, expect=201
    )
    return photo["id"]


def report(
    township: Township,
    resident: Api,
    description: str,
    category: str = "water_power",
    photo_ids: list[str] | None = None,
    **extra: Any,
) -> dict:
    """A resident's report from the mini-program; 201 with its ticket number."""
    body = {
        "category": category,
        "description": description,
        "village_id": township.village_id,
        "address": "沙口集村东头",
        "photo_ids": photo_ids or [],
        **extra,
    }
    created = resident.post("/api/v1/issues", body, expect=201)
    assert created["status"] == "reported"
    return created


def settles(read: Callable[[], T], wanted: T, what: str, timeout: float = TIMEOUT) -> T:
    """Wait until ``read()`` equals ``wanted``; else fail showing what it was last."""
    last: list[T] = []

    def equal() -> bool:
        last[:] = [read()]
        return last[0] == wanted

    try:
        wait_for(equal, timeout=timeout, interval=0.25)
    except AssertionError:
        raise AssertionError(f"{what}: wanted {wanted!r}, last read {last!r}") from None
    return last[0]


def resident_sees(resident: Api, issue_id: str, status: str) -> dict:
    def seen():
        issue = resident.get(f"/api/v1/issues/{issue_id}")
        return issue if issue["status"] == status else None

    return wait_for(seen, timeout=TIMEOUT)


def dispatch_shows(staff: Api, issue_id: str, **wanted: Any) -> dict:
    """Wait until dispatch's view of the item has these fields (``state="closed"``...); a
    report its worker has not taken in yet is a 404 meanwhile."""
    last: list[dict] = []

    def shown():
        issue = staff.get(f"/api/v1/issues/{issue_id}", expect=(200, 404))
        last[:] = [issue]
        return issue if all(issue.get(k) == v for k, v in wanted.items()) else None

    try:
        return wait_for(shown, timeout=TIMEOUT)
    except AssertionError:
        raise AssertionError(f"dispatch shows {last}, wanted {wanted}") from None


def inbox(township: Township, who: Api) -> list[dict]:
    """Every message in ``who``'s inbox in notify, newest first, page by page."""
    return township.notify(who).pages("/api/v1/notifications", limit=100)


def about(township: Township, who: Api, issue_id: str) -> Counter:
    """How many messages of each kind ``who`` holds about one item."""
    link = {"type": "issue", "id": issue_id}
    return Counter(n["kind"] for n in inbox(township, who) if n["link"] == link)


def told(township: Township, who: Api, kind: str, issue_id: str) -> dict:
    """Wait until ``who``'s inbox holds a message of ``kind`` about the item; that message."""
    link = {"type": "issue", "id": issue_id}

    def arrived():
        return next(
            (n for n in inbox(township, who) if n["kind"] == kind and n["link"] == link), None
        )

    try:
        return wait_for(arrived, timeout=TIMEOUT)
    except AssertionError:
        raise AssertionError(f"{who.who} was not told '{kind}' of {issue_id}") from None


def points_for(township: Township, worker: Api, issue_id: str) -> list[tuple[str, int]]:
    """The worker's own ledger entries for one item, oldest first: (rule, points)."""
    mine = township.scoring(worker).pages("/api/v1/points/mine", limit=100)
    return [(e["rule"], e["points"]) for e in reversed(mine) if e["issue_id"] == issue_id]


def points_messages(township: Township, worker: Api, ticket_no: str) -> list[int]:
    """The points changes notify told the worker of for one item, oldest first. Their text
    does not name the item (they link to the board), so this reads notify's table."""
    rows = township.harness.rows(
        "notify",
        "SELECT variables FROM notifications WHERE user_id = :u AND kind = 'points' "
        "AND variables->>'ticket_no' = :t ORDER BY created_at, id",
        u=worker.user["id"],
        t=ticket_no,
    )
    return [int(variables["points"]) for (variables,) in rows]


def points_settle(
    township: Township, issue_id: str, ticket_no: str, wanted: list[tuple[str, int]]
) -> None:
    """The grid worker's ledger entries for the item are exactly ``wanted`` (rule, points),
    and notify told them of each change once."""
    worker = township.worker
    settles(lambda: points_for(township, worker, issue_id), wanted, "points")
    settles(
        lambda: sorted(points_messages(township, worker, ticket_no)),
        sorted(p for _rule, p in wanted),
        "points messages",
    )
