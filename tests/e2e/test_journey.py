"""A real journey across intake, dispatch, scoring and notify, over HTTP only, with every process
running.

A resident reports with a photo; the admin assigns it; the grid worker starts and resolves it;
the resident is unsatisfied, so it is reopened with the village's area leader following; the
worker resolves it again; the resident is satisfied and it closes in both services. The
resident's timeline in intake and dispatch's history then tell the same story, step by step,
and the worker's points for it stand on this month's leaderboard in scoring. notify tells each
person their part: the admins and the grid's staff of the report, the worker of the assignment,
the resident of the resolution, the area leader of the reopen.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta

from PIL import Image

from shared.clock import SHANGHAI
from shared.testing import wait_for
from tests.e2e.harness import Api, Township

# Each service names the steps its own way; the journey compares them in these common words.
# intake's timeline: the event type that made the step.
INTAKE_STEP = {
    "issue.reported": "report",
    "issue.assigned": "assign",
    "issue.started": "start",
    "issue.resolved": "resolve",
    "issue.reopened": "reopen",
    "issue.closed": "close",
    # "issue.rated" is the resident's own step in intake; dispatch records the rating inside
    # the step it causes (its "reopen" or "rate"), so it has no row of its own there.
    "issue.rated": None,
}
# dispatch's history: the action.
DISPATCH_STEP = {
    "report": "report",
    "assign": "assign",
    "start": "start",
    "resolve": "resolve",
    "reopen": "reopen",
    "rate": "close",  # a satisfied rating closes the item: one row, action "rate" → closed
}
# The worker starts again after a reopen: dispatch refuses to resolve a reopened item unstarted.
JOURNEY = ["report", "assign", "start", "resolve", "reopen", "start", "resolve", "close"]

TIMEOUT = 20

# The worker's points for the journey by scoring's default rules (issue 8), difficulty 3:
# resolved on time +3; rated unsatisfied -1, and the reopen claws back that resolution's +3;
# resolved on time again (against the reopen's deadline) +3; rated satisfied +1.
DIFFICULTY = 3
JOURNEY_POINTS = DIFFICULTY - 1 - DIFFICULTY + DIFFICULTY + 1


def this_month() -> str:
    """The leaderboard period of now: the month in Asia/Shanghai."""
    return datetime.now(SHANGHAI).strftime("month:%Y-%m")


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (40, 120, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def intake_steps(issue: dict) -> list[str]:
    unknown = {s["kind"] for s in issue["timeline"]} - set(INTAKE_STEP)
    assert not unknown, f"intake timeline has steps the journey does not map: {unknown}"
    return [INTAKE_STEP[s["kind"]] for s in issue["timeline"] if INTAKE_STEP[s["kind"]]]


def dispatch_steps(history: list[dict]) -> list[str]:
    unknown = {h["action"] for h in history} - set(DISPATCH_STEP)
    assert not unknown, f"dispatch history has steps the journey does not map: {unknown}"
    return [DISPATCH_STEP[h["action"]] for h in history]


def resident_sees(resident: Api, issue_id: str, status: str) -> dict:
    def seen():
        issue = resident.get(f"/api/v1/issues/{issue_id}")
        return issue if issue["status"] == status else None

    return wait_for(seen, timeout=TIMEOUT)


def dispatch_shows(staff: Api, issue_id: str, state: str) -> dict:
    def shown():
        issue = staff.get(f"/api/v1/issues/{issue_id}")
        return issue if issue["state"] == state else None

    return wait_for(shown, timeout=TIMEOUT)


def told(township: Township, who: Api, kind: str, issue_id: str) -> dict:
    """Wait until ``who``'s inbox in notify holds a message of ``kind`` about the issue."""
    inbox = township.notify(who)

    def arrived():
        items = inbox.get("/api/v1/notifications", params={"limit": 50})["items"]
        return next(
            (
                n
                for n in items
                if n["kind"] == kind and n["link"] == {"type": "issue", "id": issue_id}
            ),
            None,
        )

    return wait_for(arrived, timeout=TIMEOUT)


def test_a_report_travels_from_resident_to_worker_and_back_until_the_resident_is_satisfied(
    township: Township,
):
    admin = township.dispatch(township.admin)
    worker = township.dispatch(township.worker)
    area_leader = township.dispatch(township.area_leader)
    worker_id, leader_id = township.worker.user["id"], township.grid_leader.user["id"]
    area_leader_id = township.area_leader.user["id"]
    resident = township.resident("e2e-resident-journey")
    month_at_start = this_month()

    # The resident uploads a photo, then reports with it.
    photo = resident.post(
        "/api/v1/media", files={"file": ("leak.jpg", jpeg(), "image/jpeg")}, expect=201
    )
    created = resident.post(
        "/api/v1/issues",
        {
            "category": "water_power",
            "description": "村东头自来水管漏水，路面结冰了，请尽快处理。",
            "village_id": township.village_id,
            "address": "沙口集村东头",
            "photo_ids": [photo["id"]],
        },
        expect=201,
    )
    issue_id = created["id"]
    assert created["status"] == "reported"

    # The admin sees it in dispatch's queue, with its ticket and photo; the photo opens at intake.
    def in_queue():
        return next((i for i in admin.pages("/api/v1/queue") if i["id"] == issue_id), None)

    queued = wait_for(in_queue, timeout=TIMEOUT)
    assert queued["state"] == "reported"
    assert queued["ticket_no"] == created["ticket_no"]
    assert queued["photo_ids"] == [photo["id"]]
    assert queued["village_id"] == township.village_id
    picture = township.admin.get(f"/api/v1/media/{photo['id']}")
    assert picture.headers["Content-Type"] == "image/jpeg"
    reported = told(township, township.admin, "reported", issue_id)
    assert created["ticket_no"] in reported["body"] and "用水用电" in reported["body"]

    # Assigned to the grid worker: difficulty 3, due in 24 hours.
    assigned = admin.post(
        f"/api/v1/issues/{issue_id}/assign",
        {"assignee_id": worker_id, "difficulty": DIFFICULTY, "due_in_hours": 24},
    )
    assert assigned["state"] == "assigned"
    assert assigned["assignee_id"] == worker_id
    assert assigned["grid_id"] == township.grid_id
    assert assigned["grid_leader_id"] == leader_id
    assert assigned["difficulty"] == DIFFICULTY
    due = datetime.fromisoformat(assigned["due_at"]) - datetime.fromisoformat(
        assigned["assigned_at"]
    )
    assert abs(due - timedelta(hours=24)) < timedelta(minutes=1)
    task = told(township, township.worker, "assigned", issue_id)
    assert "难度 3 级" in task["body"] and created["ticket_no"] in task["body"]

    # The worker finds it among their tasks, starts and resolves it.
    assert issue_id in {t["id"] for t in worker.pages("/api/v1/tasks/mine")}
    assert worker.post(f"/api/v1/issues/{issue_id}/start", {})["state"] == "in_progress"
    resolved = worker.post(
        f"/api/v1/issues/{issue_id}/resolve", {"note": "已更换漏水的水管，路面冰已清理。"}
    )
    assert resolved["state"] == "resolved"

    # The resident sees it resolved, may rate it, and is not satisfied.
    seen = resident_sees(resident, issue_id, "resolved")
    assert seen["can_rate"] is True
    assert "请对办理结果进行评价" in told(township, resident, "resolved", issue_id)["body"]
    assert seen["resolution_note"] == "已更换漏水的水管，路面冰已清理。"
    resident.post(
        f"/api/v1/issues/{issue_id}/rating",
        {"rating": "unsatisfied", "comment": "水管还在滴水。"},
        expect=201,
    )

    # dispatch reopens it for the same worker, with the village's area leader following it.
    reopened = dispatch_shows(admin, issue_id, "reopened")
    assert reopened["assignee_id"] == worker_id
    assert reopened["follower_id"] == area_leader_id
    assert reopened["rating"] == "unsatisfied"
    reopen_step = admin.get(f"/api/v1/issues/{issue_id}/history")[-1]
    assert reopen_step["action"] == "reopen"
    assert reopen_step["details"]["reason"] == "unsatisfied"
    assert reopen_step["details"]["area_leader_id"] == area_leader_id
    assert "群众评价不满意" in told(township, township.area_leader, "reopened", issue_id)["body"]
    following = area_leader.pages("/api/v1/tasks/mine", following="true")
    assert issue_id in {i["id"] for i in following}
    back = resident_sees(resident, issue_id, "reopened")
    assert "赵志刚" in (back["timeline"][-1]["note"] or ""), back["timeline"][-1]

    # The worker starts again and resolves it; the resident is satisfied.
    assert worker.post(f"/api/v1/issues/{issue_id}/start", {})["state"] == "in_progress"
    worker.post(f"/api/v1/issues/{issue_id}/resolve", {"note": "水管整段更换，已不再滴水。"})
    again = resident_sees(resident, issue_id, "resolved")
    assert again["can_rate"] is True
    resident.post(f"/api/v1/issues/{issue_id}/rating", {"rating": "satisfied"}, expect=201)

    # Closed in both services.
    closed = dispatch_shows(admin, issue_id, "closed")
    assert closed["rating"] == "satisfied"
    final = resident_sees(resident, issue_id, "closed")
    assert final["rating"] == "satisfied"
    assert final["can_rate"] is False

    # The resident's timeline and dispatch's history agree step by step.
    history = admin.get(f"/api/v1/issues/{issue_id}/history")
    assert dispatch_steps(history) == JOURNEY, history

    def timelines_agree():
        timeline = resident.get(f"/api/v1/issues/{issue_id}")
        return timeline if intake_steps(timeline) == JOURNEY else None

    try:
        timeline = wait_for(timelines_agree, timeout=TIMEOUT)["timeline"]
    except AssertionError:
        latest = resident.get(f"/api/v1/issues/{issue_id}")
        assert intake_steps(latest) == JOURNEY, latest["timeline"]
        raise
    # Each rating sits just before the step it caused.
    kinds = [s["kind"] for s in timeline]
    assert [kinds[i + 1] for i, k in enumerate(kinds) if k == "issue.rated"] == [
        "issue.reopened",
        "issue.closed",
    ], kinds
    assert [h["to_state"] for h in history] == [
        "reported",
        "assigned",
        "in_progress",
        "resolved",
        "reopened",
        "in_progress",
        "resolved",
        "closed",
    ]
    assert history[-1]["details"]["rating"] == "satisfied"

    # scoring: the worker's points stand on this month's board, which the resident may read.
    board = township.scoring(resident)
    # The steps above happened in one month unless the test ran across midnight at a month's
    # end (Asia/Shanghai): then they count in two months, and only the all-time board has them all.
    period = month_at_start if this_month() == month_at_start else "all"

    def worker_on_board():
        rows = board.get("/api/v1/leaderboard", params={"period": period})["items"]
        row = next((r for r in rows if r["id"] == worker_id), None)
        return row if row is not None and row["points"] == JOURNEY_POINTS else None

    try:
        row = wait_for(worker_on_board, timeout=TIMEOUT)
    except AssertionError as late:
        rows = board.get("/api/v1/leaderboard", params={"period": period})["items"]
        raise AssertionError(f"{JOURNEY_POINTS} points wanted for {worker_id}: {rows}") from late
    assert row["name"] == "王建国"
    assert row["rank"] == 1
