"""Journey 2 of issue 13: what goes wrong, across all five services over HTTP, with every worker
and the scheduler running in two copies.

- Overdue: the scheduler reminds, flags and escalates one level at a time up to the area leader;
  the admin refers it to the county ledger, which exports it.
- Unsatisfied: reopened with the area leader following, resolved again, then satisfied.
- A failed callback: reopened, and the worker's points adjusted.
- A duplicate: rejected with a reason the resident sees, who then follows the original.

Each count is exact (messages per person and kind, reminders per deadline, ledger entries,
points per item): two schedulers and two workers per service must not do anything twice.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.harness import Api, Township
from tests.e2e.journey_steps import (
    COPIES,
    about,
    dispatch_shows,
    points_settle,
    report,
    resident_sees,
    settles,
    told,
)

pytestmark = pytest.mark.slow

SYSTEM_COPIES = COPIES

# A deadline this far ahead: the scheduler (every second) reminds first, then flags it overdue,
# then (OVERDUE_GRACE_HOURS, 7 s) escalates it.
SHORT_DEADLINE = timedelta(seconds=12)


def soon() -> str:
    return (datetime.now(UTC) + SHORT_DEADLINE).isoformat()


def tally(township: Township, issue_id: str, *people: Api) -> dict[str, Counter]:
    return {p.who: about(township, p, issue_id) for p in people}


def working(township: Township, resident: Api, text: str, **assignment) -> dict:
    """A report assigned to the grid worker (difficulty 3 unless given) and started."""
    created = report(township, resident, text)
    issue_id = created["id"]
    admin = township.dispatch(township.admin)
    dispatch_shows(admin, issue_id, state="reported")
    body = {"assignee_id": township.worker.user["id"], "difficulty": 3, **assignment}
    admin.post(f"/api/v1/issues/{issue_id}/assign", body)
    township.dispatch(township.worker).post(f"/api/v1/issues/{issue_id}/start", {})
    return created


def resolve(township: Township, issue_id: str, note: str) -> None:
    worker = township.dispatch(township.worker)
    assert worker.post(f"/api/v1/issues/{issue_id}/resolve", {"note": note})["state"] == "resolved"


def test_an_overdue_item_is_reminded_and_climbs_one_level_at_a_time_to_the_county_ledger(
    township: Township,
):
    admin = township.dispatch(township.admin)
    resident = township.resident("e2e-resident-overdue")
    created = working(
        township, resident, "村西头路灯全部不亮，晚上出行很危险。", due_at=soon(), difficulty=2
    )
    issue_id, ticket_no = created["id"], created["ticket_no"]

    # The worker is reminded before the deadline, told when it passes, and after the grace
    # the scheduler hands it to the township.
    assert "即将到期" in told(township, township.worker, "reminder", issue_id)["title"]
    assert "超期" in told(township, township.worker, "overdue", issue_id)["body"]
    at_township = dispatch_shows(admin, issue_id, level="township")
    assert at_township["state"] == "in_progress" and at_township["handler_id"] is None
    assert datetime.fromisoformat(at_township["due_at"]) > datetime.now(UTC) + timedelta(hours=70)

    # The township gives the worker a new, short deadline; it passes too, and the item climbs
    # one more level: to the village's area leader, who is told.
    admin.post(
        f"/api/v1/issues/{issue_id}/assign",
        {
            "assignee_id": township.worker.user["id"],
            "difficulty": 2,
            "due_at": soon(),
            "reassign": True,
        },
    )
    at_area = dispatch_shows(admin, issue_id, level="area_leader")
    assert at_area["handler_id"] == township.area_leader.user["id"]
    escalated = told(township, township.area_leader, "escalated", issue_id)
    assert "包片领导" in escalated["body"] and ticket_no in escalated["body"]
    # The scheduler never refers to the county by itself: that needs the admin's decision.
    climbs = [
        (h["from_level"], h["to_level"])
        for h in admin.get(f"/api/v1/issues/{issue_id}/history")
        if h["action"] == "escalate"
    ]
    assert climbs == [("grid", "township"), ("township", "area_leader")]

    # The admin refers it to a county department: it enters the hard-problems ledger.
    department = admin.post(
        "/api/v1/departments",
        {"code": "XJTJ", "name": "县交通运输局", "kind": "county"},
        expect=201,
    )
    admin.post(
        f"/api/v1/issues/{issue_id}/escalate",
        {
            "to_level": "county",
            "reason": "线路老化需整体改造，村里和乡里解决不了。",
            "department": department["id"],
        },
    )
    ledger = [e for e in admin.pages("/api/v1/ledger") if e["issue_id"] == issue_id]
    assert len(ledger) == 1, ledger
    entry = ledger[0]
    assert (entry["department"], entry["status"], entry["status_label"]) == (
        "县交通运输局",
        "referred",
        "已转办",
    )

    # The export has it once, under Chinese headers.
    answer = admin.get("/api/v1/ledger/export", params={"format": "csv"})
    assert answer.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(answer.content.decode("utf-8-sig"))))
    assert "台账编号" in rows[0], rows[0]
    exported = [r for r in rows[1:] if entry["ledger_no"] in r]
    assert len(exported) == 1 and len(rows) == 2, rows
    assert "县交通运输局" in exported[0], exported

    # One reminder, one overdue flag and one escalation per deadline, in the history and in
    # each inbox, though two schedulers ran the whole time.
    history = [h["action"] for h in admin.get(f"/api/v1/issues/{issue_id}/history")]
    assert history == [
        "report",
        "assign",
        "start",
        "remind",
        "overdue",
        "escalate",
        "reassign",
        "remind",
        "overdue",
        "escalate",
        "escalate",
    ], history
    expected = {
        # The climb into the township's queue is the admins' news, the county referral too.
        township.worker.who: Counter(reported=1, assigned=2, reminder=2, overdue=2),
        township.grid_leader.who: Counter(reported=1, assigned=2, reminder=2, overdue=2),
        township.area_leader.who: Counter(escalated=1),
        township.admin.who: Counter(reported=1, escalated=2),
        resident.who: Counter(),
    }
    people = (township.worker, township.grid_leader, township.area_leader, township.admin)
    settles(lambda: tally(township, issue_id, *people, resident), expected, "messages")


def test_an_unsatisfied_resident_gets_the_item_reopened_with_the_area_leader_following(
    township: Township,
):
    admin = township.dispatch(township.admin)
    area_leader = township.dispatch(township.area_leader)
    area_leader_id = township.area_leader.user["id"]
    resident = township.resident("e2e-resident-unsatisfied")
    created = working(township, resident, "自来水管漏水，路面结冰了。", due_in_hours=24)
    issue_id, ticket_no = created["id"], created["ticket_no"]
    resolve(township, issue_id, "已更换漏水的水管。")

    resident_sees(resident, issue_id, "resolved")
    resident.post(
        f"/api/v1/issues/{issue_id}/rating",
        {"rating": "unsatisfied", "comment": "水管还在滴水。"},
        expect=201,
    )

    # Reopened for the same worker, with the village's area leader following it, who is told.
    reopened = dispatch_shows(admin, issue_id, state="reopened")
    assert reopened["assignee_id"] == township.worker.user["id"]
    assert reopened["follower_id"] == area_leader_id and reopened["rating"] == "unsatisfied"
    assert "群众评价不满意" in told(township, township.area_leader, "reopened", issue_id)["body"]
    following = area_leader.pages("/api/v1/tasks/mine", following="true")
    assert issue_id in {i["id"] for i in following}
    back = resident_sees(resident, issue_id, "reopened")
    assert "赵志刚" in (back["timeline"][-1]["note"] or ""), back["timeline"][-1]

    # The worker starts again and resolves it; now the resident is satisfied and it closes.
    township.dispatch(township.worker).post(f"/api/v1/issues/{issue_id}/start", {})
    resolve(township, issue_id, "水管整段更换，已不再滴水。")
    resident_sees(resident, issue_id, "resolved")
    resident.post(f"/api/v1/issues/{issue_id}/rating", {"rating": "satisfied"}, expect=201)
    assert dispatch_shows(admin, issue_id, state="closed")["rating"] == "satisfied"
    assert resident_sees(resident, issue_id, "closed")["can_rate"] is False

    # On time +3, unsatisfied -1, the reopen takes the +3 back; on time again +3, satisfied +1.
    wanted = [
        ("resolved_on_time", 3),
        ("rating_unsatisfied", -1),
        ("reopen_clawback", -3),
        ("resolved_on_time", 3),
        ("rating_satisfied", 1),
    ]
    points_settle(township, issue_id, ticket_no, wanted)
    expected = {
        township.worker.who: Counter(reported=1, assigned=1, reopened=1),
        township.grid_leader.who: Counter(reported=1, assigned=1),
        township.area_leader.who: Counter(reopened=1),
        township.admin.who: Counter(reported=1),
        resident.who: Counter(resolved=2, closed=1),
    }
    people = (township.worker, township.grid_leader, township.area_leader, township.admin)
    settles(lambda: tally(township, issue_id, *people, resident), expected, "messages")


def test_a_failed_callback_reopens_the_item_and_takes_the_workers_points_back(
    township: Township,
):
    admin = township.dispatch(township.admin)
    supervisor = township.account("e2e-supervisor", "孙督导", "supervisor")
    resident = township.resident("e2e-resident-callback")
    created = working(township, resident, "村卫生室门口的水管冻裂了。", due_in_hours=24)
    issue_id, ticket_no = created["id"], created["ticket_no"]
    resolve(township, issue_id, "已修好水管并做了保温。")
    resident_sees(resident, issue_id, "resolved")
    resident.post(f"/api/v1/issues/{issue_id}/rating", {"rating": "satisfied"}, expect=201)
    dispatch_shows(admin, issue_id, state="closed")

    # The supervisors call back: the repair did not hold. The item goes back to the worker.
    sup = township.dispatch(supervisor)
    dispatch_shows(sup, issue_id, callback_status="pending")
    failed = sup.post(
        f"/api/v1/issues/{issue_id}/callbacks",
        {
            "method": "visit",
            "lawful": True,
            "implemented": False,
            "accepted": False,
            "notes": "上门回访：保温层已脱落，水管再次冻裂。",
        },
        expect=201,
    )
    assert failed["passed"] is False
    reopened = dispatch_shows(admin, issue_id, state="reopened")
    assert reopened["assignee_id"] == township.worker.user["id"]
    assert "回访未通过" in told(township, township.worker, "reopened", issue_id)["body"]
    assert "回访未通过" in told(township, township.area_leader, "reopened", issue_id)["body"]
    assert resident_sees(resident, issue_id, "reopened")["can_rate"] is False

    # On time +3, satisfied +1; the failed callback costs -2 and the reopen takes the +3 back.
    wanted = [
        ("resolved_on_time", 3),
        ("rating_satisfied", 1),
        ("callback_failed", -2),
        ("reopen_clawback", -3),
    ]
    points_settle(township, issue_id, ticket_no, wanted)
    expected = {
        township.worker.who: Counter(reported=1, assigned=1, reopened=1),
        township.area_leader.who: Counter(reopened=1),
        resident.who: Counter(resolved=1, closed=1),
        supervisor.who: Counter(),
    }
    people = (township.worker, township.area_leader, resident, supervisor)
    settles(lambda: tally(township, issue_id, *people), expected, "messages")


def test_a_duplicate_report_is_rejected_with_its_reason_and_the_resident_follows_the_original(
    township: Township,
):
    admin = township.dispatch(township.admin)
    first = township.resident("e2e-resident-first")
    second = township.resident("e2e-resident-second")
    original = working(township, first, "村南桥头的井盖丢了，很危险。", due_in_hours=72)
    copy = report(township, second, "南边桥头那个井盖没了，小孩容易掉下去。")
    copy_id = copy["id"]

    # The admin sees that it is likely the same problem and rejects it as a duplicate.
    dispatch_shows(admin, copy_id, state="reported")
    likely = admin.get(f"/api/v1/issues/{copy_id}/duplicates")
    assert original["id"] in [d["id"] for d in likely], likely
    admin.post(
        f"/api/v1/issues/{copy_id}/reject",
        {"reason": "与已受理的事项重复，正在处理中。", "duplicate_of": original["id"]},
    )

    # The second resident sees why, with the original's number, and is told once.
    rejected = resident_sees(second, copy_id, "rejected")
    assert rejected["reject_reason"] == "与已受理的事项重复，正在处理中。"
    assert rejected["duplicate_of"]["ticket_no"] == original["ticket_no"]
    message = told(township, second, "rejected", original["id"])
    assert "与已受理的事项重复" in message["body"] and original["ticket_no"] in message["body"]

    # As the original is resolved, the second resident follows its progress (not its text).
    resolve(township, original["id"], "已安装新井盖。")

    def followed():
        issue = second.get(f"/api/v1/issues/{copy_id}")
        return issue["duplicate_of"]["status"]

    settles(followed, "resolved", "the original's progress as the second resident sees it")
    progress = second.get(f"/api/v1/issues/{copy_id}")["duplicate_of"]
    assert "井盖丢了" not in str(progress) and "已安装新井盖" not in str(progress)
    second.get(f"/api/v1/issues/{original['id']}", expect=(403, 404))

    # Only the first reporter rates and is told of the resolution; the second holds one message.
    settles(
        lambda: tally(township, original["id"], first, second),
        {first.who: Counter(resolved=1), second.who: Counter(rejected=1)},
        "messages",
    )
    assert about(township, second, copy_id) == Counter()
    assert admin.get(f"/api/v1/issues/{copy_id}")["state"] == "rejected"
