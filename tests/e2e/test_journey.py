"""Journey 1 of issue 13, across all five services over HTTP, with every worker and the
scheduler running in two copies.

A resident reports a water outage with a photo; the admins and the grid's staff are told; the
admin assigns it (difficulty 3, due in 24 h); the worker is told, starts, and resolves it on time
with a photo; the resident is told, rates it satisfied, and it closes; the worker has 3 + 1
points on this month's board; a supervisor's callback passes; the statistics, the KPIs and the
public township figures count it. Every count is exact: two copies of each worker and of the
scheduler must not tell anyone twice nor award a point twice.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest

from shared.testing import wait_for
from tests.e2e.harness import Api, Township
from tests.e2e.journey_steps import (
    COPIES,
    TIMEOUT,
    about,
    dispatch_shows,
    points_settle,
    report,
    resident_sees,
    settles,
    this_month,
    told,
    upload_photo,
)

pytestmark = pytest.mark.slow

SYSTEM_COPIES = COPIES

# Each service names the steps its own way; the journey compares them in these common words.
# intake's timeline: the event type that made the step ("issue.rated" is the resident's own
# step there; dispatch records the rating inside the step it causes).
INTAKE_STEP = {
    "issue.reported": "report",
    "issue.assigned": "assign",
    "issue.started": "start",
    "issue.resolved": "resolve",
    "issue.closed": "close",
    "issue.callback_recorded": "callback",
    "issue.rated": None,
}
# dispatch's history: the action ("rate" closes the item: one row, to_state "closed").
DISPATCH_STEP = {
    "report": "report",
    "assign": "assign",
    "start": "start",
    "resolve": "resolve",
    "rate": "close",
    "callback": "callback",
}
JOURNEY = ["report", "assign", "start", "resolve", "close", "callback"]

DIFFICULTY = 3
# scoring's default rules: on time, 1 point per difficulty point; satisfied +1; callback passed 0.
POINTS = [("resolved_on_time", DIFFICULTY), ("rating_satisfied", 1), ("callback_passed", 0)]


def intake_steps(issue: dict) -> list[str]:
    unknown = {s["kind"] for s in issue["timeline"]} - set(INTAKE_STEP)
    assert not unknown, f"intake timeline has steps the journey does not map: {unknown}"
    return [INTAKE_STEP[s["kind"]] for s in issue["timeline"] if INTAKE_STEP[s["kind"]]]


def dispatch_steps(history: list[dict]) -> list[str]:
    unknown = {h["action"] for h in history} - set(DISPATCH_STEP)
    assert not unknown, f"dispatch history has steps the journey does not map: {unknown}"
    return [DISPATCH_STEP[h["action"]] for h in history]


def test_a_water_outage_goes_from_report_to_a_passed_callback_and_is_counted_once_everywhere(
    township: Township,
):
    harness = township.harness
    assert harness.processes("dispatch") == [
        "web",
        "worker",
        "worker#2",
        "scheduler",
        "scheduler#2",
    ]
    admin = township.dispatch(township.admin)
    worker = township.dispatch(township.worker)
    worker_id, leader_id = township.worker.user["id"], township.grid_leader.user["id"]
    supervisor = township.account("e2e-supervisor", "孙督导", "supervisor")
    resident = township.resident("e2e-resident-water")
    month_at_start = this_month()

    # The resident uploads a photo of the dry tap, then reports the outage with it.
    photo_id = upload_photo(resident, "tap.jpg")
    created = report(
        township,
        resident,
        "村东头从昨晚开始停水，水龙头一滴水都没有，老人做饭都成问题。",
        photo_ids=[photo_id],
    )
    issue_id, ticket_no = created["id"], created["ticket_no"]

    # The admin sees it in dispatch's queue with its photo, which opens at intake.
    def in_queue():
        return next((i for i in admin.pages("/api/v1/queue") if i["id"] == issue_id), None)

    queued = wait_for(in_queue, timeout=TIMEOUT)
    assert queued["state"] == "reported" and queued["ticket_no"] == ticket_no
    assert queued["photo_ids"] == [photo_id]
    picture = township.admin.get(f"/api/v1/media/{photo_id}")
    assert picture.headers["Content-Type"] == "image/jpeg"
    # The admins and the grid's worker (and its leader) are told of the report.
    for person in (township.admin, township.worker, township.grid_leader):
        message = told(township, person, "reported", issue_id)
        assert ticket_no in message["body"] and "用水用电" in message["body"]

    # Assigned to the grid worker: difficulty 3, due in 24 hours.
    assigned = admin.post(
        f"/api/v1/issues/{issue_id}/assign",
        {"assignee_id": worker_id, "difficulty": DIFFICULTY, "due_in_hours": 24},
    )
    assert assigned["state"] == "assigned" and assigned["assignee_id"] == worker_id
    assert assigned["grid_id"] == township.grid_id and assigned["grid_leader_id"] == leader_id
    assert assigned["difficulty"] == DIFFICULTY
    due = datetime.fromisoformat(assigned["due_at"]) - datetime.fromisoformat(
        assigned["assigned_at"]
    )
    assert abs(due - timedelta(hours=24)) < timedelta(minutes=1)
    task = told(township, township.worker, "assigned", issue_id)
    assert "难度 3 级" in task["body"] and ticket_no in task["body"]

    # The worker finds it among their tasks, starts, and resolves it on time with a photo.
    assert issue_id in {t["id"] for t in worker.pages("/api/v1/tasks/mine")}
    assert worker.post(f"/api/v1/issues/{issue_id}/start", {})["state"] == "in_progress"
    fixed_photo = upload_photo(township.worker, "fixed.jpg", colour=(60, 160, 60))
    resolved = worker.post(
        f"/api/v1/issues/{issue_id}/resolve",
        {"note": "主管道阀门损坏已更换，已恢复供水。", "media_ids": [fixed_photo]},
    )
    assert resolved["state"] == "resolved"

    # The resident is told, sees the result with its photo, and is satisfied.
    assert "请对办理结果进行评价" in told(township, resident, "resolved", issue_id)["body"]
    seen = resident_sees(resident, issue_id, "resolved")
    assert seen["can_rate"] is True
    assert seen["resolution_note"] == "主管道阀门损坏已更换，已恢复供水。"
    assert [p["id"] for p in seen["resolution_photos"]] == [fixed_photo], seen
    resident.post(f"/api/v1/issues/{issue_id}/rating", {"rating": "satisfied"}, expect=201)

    # It closes in both services, and the resident is told.
    closed = dispatch_shows(admin, issue_id, state="closed")
    assert closed["rating"] == "satisfied"
    final = resident_sees(resident, issue_id, "closed")
    assert final["rating"] == "satisfied" and final["can_rate"] is False
    assert "满意" in told(township, resident, "closed", issue_id)["body"]

    # The supervisors find it among the callbacks waiting (回头看); the callback passes.
    sup = township.dispatch(supervisor)

    def waiting():
        return next(
            (i for i in sup.pages("/api/v1/callbacks/pending") if i["id"] == issue_id), None
        )

    wait_for(waiting, timeout=TIMEOUT)
    callback = sup.post(
        f"/api/v1/issues/{issue_id}/callbacks",
        {
            "method": "phone",
            "lawful": True,
            "implemented": True,
            "accepted": True,
            "notes": "电话回访，群众表示已正常供水。",
        },
        expect=201,
    )
    assert callback["passed"] is True
    results = sup.pages("/api/v1/callbacks", passed="true")
    assert [r["issue_id"] for r in results] == [issue_id]
    assert not any(i["id"] == issue_id for i in sup.pages("/api/v1/callbacks/pending"))

    # The resident's timeline and dispatch's history tell the same story, each step once.
    settles(
        lambda: dispatch_steps(admin.get(f"/api/v1/issues/{issue_id}/history")),
        JOURNEY,
        "dispatch's history",
    )
    settles(
        lambda: intake_steps(resident.get(f"/api/v1/issues/{issue_id}")),
        JOURNEY,
        "the resident's timeline",
    )

    # scoring: exactly 3 + 1 (and the callback's 0) for the worker, each told once.
    points_settle(township, issue_id, ticket_no, POINTS)
    # The steps above happened in one month unless the test ran across midnight at a month's
    # end (Asia/Shanghai): then only the all-time board has them all.
    period = month_at_start if this_month() == month_at_start else "all"
    board = township.scoring(resident).get("/api/v1/leaderboard", params={"period": period})
    row = next(r for r in board["items"] if r["id"] == worker_id)
    assert (row["name"], row["points"], row["rank"]) == ("王建国", DIFFICULTY + 1, 1)

    # Everyone was told each step once, and nobody else was told anything of it.
    expected = {
        township.admin.who: Counter(reported=1),
        township.worker.who: Counter(reported=1, assigned=1),
        township.grid_leader.who: Counter(reported=1, assigned=1),
        township.area_leader.who: Counter(),
        supervisor.who: Counter(),
        resident.who: Counter(resolved=1, closed=1),
    }
    people = (
        township.admin,
        township.worker,
        township.grid_leader,
        township.area_leader,
        supervisor,
        resident,
    )
    assert {p.who: about(township, p, issue_id) for p in people} == expected

    # Statistics (admin), KPIs (scoring) and the public township figures count it exactly once.
    stats = admin.get("/api/v1/stats")
    assert {k: stats[k] for k in ("reports", "completed", "completion_rate", "overdue")} == {
        "reports": 1,
        "completed": 1,
        "completion_rate": 100.0,
        "overdue": 0,
    }
    assert (stats["rated"], stats["satisfied"], stats["satisfaction_rate"]) == (1, 1, 100.0)
    assert stats["open"]["total"] == 0 and stats["rejected"] == 0
    water = next(c for c in stats["by_category"] if c["category"] == "water_power")
    assert (water["reports"], water["completed"]) == (1, 1)
    assert sum(c["reports"] for c in stats["by_category"]) == 1

    def kpi_row():
        kpis = township.scoring(township.admin).get(
            "/api/v1/kpis", params={"scope": "worker", "period": period}
        )
        row = next((r for r in kpis["items"] if r["id"] == worker_id), None)
        keys = ("assigned", "responded", "resolved", "resolved_on_time", "rated", "satisfied")
        more = ("reopened", "callbacks", "callbacks_passed", "points")
        return row and {k: row[k] for k in (*keys, *more)}

    settles(
        kpi_row,
        {
            "assigned": 1,
            "responded": 1,
            "resolved": 1,
            "resolved_on_time": 1,
            "rated": 1,
            "satisfied": 1,
            "reopened": 0,
            "callbacks": 1,
            "callbacks_passed": 1,
            "points": DIFFICULTY + 1,
        },
        "the worker's KPIs",
    )

    figures = Api(harness.url("dispatch")).get("/api/v1/public/figures")
    assert {k: figures[k] for k in ("reports", "completed", "open", "rated", "satisfied")} == {
        "reports": 1,
        "completed": 1,
        "open": 0,
        "rated": 1,
        "satisfied": 1,
    }
    assert (figures["completion_rate"], figures["satisfaction_rate"]) == (100.0, 100.0)
    water = next(c for c in figures["by_category"] if c["category"] == "water_power")
    assert (water["label"], water["reports"], water["completed"]) == ("用水用电", 1, 1)

    # Nothing went to a dead-letter queue on the way.
    for service in ("intake", "dispatch", "scoring", "notify", "feed"):
        assert harness.message_count(f"{service}.events.dlq") == 0, service
