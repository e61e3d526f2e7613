"""The life cycle through the HTTP API on a real PostgreSQL database: every path of the issue."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

from dispatch_helpers import assign, envelope, outbox, post

from dispatch.handlers import handle_issue_rated


def rate(db, issue_id, rating: str, comment: str | None = None) -> None:
    data = {
        "issue_id": str(issue_id),
        "reporter_id": str(uuid.uuid4()),
        "rating": rating,
        "comment": comment,
        "rated_at": datetime.now(UTC).isoformat(),
    }
    with db.transaction() as session:
        handle_issue_rated(session, envelope("issue.rated", data))


def state_of(client, issue_id, who) -> dict:
    response = client.get(f"/api/v1/issues/{issue_id}", headers=who.headers)
    assert response.status_code == 200, response.json
    return response.json


def test_a_report_appears_in_the_admins_queue_oldest_first(client, town, report):
    newer = report(reported_at=datetime.now(UTC) - timedelta(hours=1))
    older = report(reported_at=datetime.now(UTC) - timedelta(hours=5), category="road_traffic")
    response = client.get("/api/v1/queue", headers=town.admin.headers)
    assert response.status_code == 200
    ids = [item["id"] for item in response.json["items"]]
    assert ids == [str(older), str(newer)]
    first = response.json["items"][0]
    assert first["state"] == "reported" and first["state_label"] == "待交办"
    assert first["village_name"] == "沙口集村"
    assert first["reported_at"].endswith("+08:00")


def test_assign_start_resolve_rated_satisfied_closes_the_issue(client, db, town, report):
    issue_id = report()
    response = assign(client, issue_id, town.admin, town.worker1, due_in_hours=24)
    assert response.status_code == 200, response.json
    assert response.json["state"] == "assigned"
    assert response.json["assignee_name"] == "网格员刘"
    assert response.json["grid_leader_id"] == str(town.leader1.id)

    mine = client.get("/api/v1/tasks/mine", headers=town.worker1.headers).json["items"]
    assert [t["id"] for t in mine] == [str(issue_id)]
    assert mine[0]["overdue"] is False

    assert post(client, f"/api/v1/issues/{issue_id}/start", town.worker1).status_code == 200
    note = post(
        client, f"/api/v1/issues/{issue_id}/notes", town.worker1, {"text": "已联系水管站。"}
    )
    assert note.status_code == 201
    resolved = post(
        client,
        f"/api/v1/issues/{issue_id}/resolve",
        town.worker1,
        {"note": "水管已更换。", "media_ids": [str(uuid.uuid4())]},
    )
    assert resolved.status_code == 200, resolved.json
    assert resolved.json["state"] == "resolved" and resolved.json["resolved_on_time"] is True

    rate(db, issue_id, "basically_satisfied")
    assert state_of(client, issue_id, town.admin)["state"] == "closed"

    types = [e["type"] for e in outbox(db)]
    assert types == ["issue.assigned", "issue.started", "issue.resolved", "issue.closed"]
    assigned = outbox(db, "issue.assigned")[0]["data"]
    assert assigned["difficulty"] == 3 and assigned["grid_id"] == str(town.grid1)
    assert assigned["village_id"] == str(town.village1)
    resolved_event = outbox(db, "issue.resolved")[0]["data"]
    assert resolved_event["on_time"] is True and resolved_event["reporter_id"]
    # The points go to whoever resolved it, and the event says who and in which capacity.
    assert resolved_event["resolver_id"] == str(town.worker1.id)
    assert resolved_event["resolver_role"] == "assignee" and resolved_event["level"] == "grid"
    closed = outbox(db, "issue.closed")[0]["data"]
    assert closed["rating"] == "basically_satisfied"

    history = client.get(f"/api/v1/issues/{issue_id}/history", headers=town.admin.headers).json
    steps = [(h["action"], h["from_state"], h["to_state"]) for h in history]
    assert steps == [
        ("report", None, "reported"),
        ("assign", "reported", "assigned"),
        ("start", "assigned", "in_progress"),
        ("note", "in_progress", "in_progress"),
        ("resolve", "in_progress", "resolved"),
        ("rate", "resolved", "closed"),
    ]
    assert history[1]["actor_name"] == "乡管理员"
    assert history[1]["occurred_at"].endswith("+08:00")


def test_unsatisfied_reopens_to_the_assignee_with_the_area_leader_following(
    client, db, town, report
):
    issue_id = report()
    assign(client, issue_id, town.admin, town.worker1)
    post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
    post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "已处理。"})

    rate(db, issue_id, "unsatisfied", "水还是不通。")
    issue = state_of(client, issue_id, town.admin)
    assert issue["state"] == "reopened"
    assert issue["assignee_id"] == str(town.worker1.id)
    assert issue["follower_id"] == str(town.area_leader.id)
    reopened = outbox(db, "issue.reopened")[0]["data"]
    assert reopened["reason"] == "unsatisfied"
    assert reopened["area_leader_id"] == str(town.area_leader.id)
    following = client.get(
        "/api/v1/tasks/mine?following=true", headers=town.area_leader.headers
    ).json["items"]
    assert [t["id"] for t in following] == [str(issue_id)]

    # Back to work: start, resolve again, and this time the resident is satisfied.
    assert post(client, f"/api/v1/issues/{issue_id}/start", town.worker1).status_code == 200
    again = post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "已修好。"})
    assert again.status_code == 200
    assert outbox(db, "issue.resolved")[-1]["data"]["resolution_no"] == 2
    rate(db, issue_id, "satisfied")
    closed = state_of(client, issue_id, town.admin)
    assert closed["state"] == "closed"
    # Ever unsatisfied: the supervisors call back, whatever the sample share.
    assert closed["callback_status"] == "pending"


def test_a_rejected_report_carries_the_reason_and_leaves_the_queue(client, db, town, report):
    issue_id = report()
    response = post(
        client, f"/api/v1/issues/{issue_id}/reject", town.admin, {"reason": "重复反映，已合并。"}
    )
    assert response.status_code == 200
    assert response.json["state"] == "rejected"
    event = outbox(db, "issue.rejected")[0]["data"]
    snapshot = event.pop("snapshot")
    assert event == {
        "issue_id": str(issue_id),
        "reason": "重复反映，已合并。",
        "by": str(town.admin.id),
        "reporter_id": str(town.resident.id),
        "duplicate_of": None,  # a rejection without a named original
        "duplicate_of_ticket_no": None,
        "issue_version": 2,
    }
    assert (snapshot["state"], snapshot["reject_reason"]) == ("rejected", "重复反映，已合并。")
    assert client.get("/api/v1/queue", headers=town.admin.headers).json["items"] == []
    again = assign(client, issue_id, town.admin, town.worker1)
    assert again.status_code == 409
    assert "不予受理" in again.json["error"]["message"]


def test_wrong_transitions_are_409_with_a_reason(client, db, town, report):
    issue_id = report()
    early = post(client, f"/api/v1/issues/{issue_id}/resolve", town.admin, {"note": "x"})
    assert early.status_code == 409 and early.json["error"]["code"] == "wrong_state"
    assign(client, issue_id, town.admin, town.worker1)
    post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
    post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "好了。"})
    rate(db, issue_id, "satisfied")

    closed = post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "再办结"})
    assert closed.status_code == 409
    assert closed.json["error"]["message"] == "该事项已关闭，不能再次办结。"
    # A second rating changes nothing (and does not fail the consumer).
    rate(db, issue_id, "unsatisfied")
    assert state_of(client, issue_id, town.admin)["state"] == "closed"
    assert len(outbox(db, "issue.closed")) == 1


def test_assign_checks_the_assignee_and_uses_the_category_deadline(
    client, db, town, report, person, settings
):
    issue_id = report(category="water_power")
    resident = assign(client, issue_id, town.admin, town.resident)
    assert resident.status_code == 422 and resident.json["error"]["code"] == "invalid_assignee"
    gone = person("grid_worker", name="已离岗", active=False)
    assert assign(client, issue_id, town.admin, gone).status_code == 422
    bad = assign(client, issue_id, town.admin, town.worker1, difficulty=6)
    assert bad.status_code == 422

    before = datetime.now(UTC)
    ok = assign(client, issue_id, town.admin, town.worker1)
    due = datetime.fromisoformat(ok.json["due_at"])
    expected = before + timedelta(hours=settings.due_hours("water_power"))
    assert abs((due - expected).total_seconds()) < 60
    assert ok.json["due_at"].endswith("+08:00")

    past = assign(
        client,
        issue_id,
        town.admin,
        town.worker2,
        reassign=True,
        due_at=(datetime.now(UTC) - timedelta(hours=1)).isoformat(),
    )
    assert past.status_code == 422


def test_reassigning_needs_to_be_explicit(client, town, report):
    issue_id = report()
    assign(client, issue_id, town.admin, town.worker1)
    plain = assign(client, issue_id, town.admin, town.worker2)
    assert plain.status_code == 409 and "已交办" in plain.json["error"]["message"]
    moved = assign(client, issue_id, town.admin, town.worker2, reassign=True)
    assert moved.status_code == 200 and moved.json["assignee_id"] == str(town.worker2.id)
    stale = assign(client, issue_id, town.admin, town.worker1, reassign=True, version=1)
    assert stale.status_code == 409 and stale.json["error"]["code"] == "version_conflict"


def test_two_admins_assigning_at_once_one_wins_the_other_gets_409(app, town, report):
    issue_id = report()
    barrier = threading.Barrier(2)
    answers: list[int] = []

    def attempt(admin, worker) -> None:
        client = app.test_client()
        barrier.wait()
        answers.append(assign(client, issue_id, admin, worker).status_code)

    threads = [
        threading.Thread(target=attempt, args=(town.admin, town.worker1)),
        threading.Thread(target=attempt, args=(town.admin2, town.worker2)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [200, 409]
    history = app.test_client().get(
        f"/api/v1/issues/{issue_id}/history", headers=town.admin.headers
    )
    assert [h["action"] for h in history.json].count("assign") == 1


def test_a_grid_leader_assigns_only_within_the_grid(client, town, report):
    mine = report(village_id=town.village1)
    theirs = report(village_id=town.village2)
    assert assign(client, mine, town.leader1, town.worker2).status_code == 200
    outside_worker = assign(client, theirs, town.leader1, town.worker3)
    assert outside_worker.status_code == 403
    other = report(village_id=town.village1)
    assert assign(client, other, town.leader1, town.worker3).status_code == 403
    queue = client.get("/api/v1/queue", headers=town.leader1.headers).json["items"]
    assert {i["village_id"] for i in queue} == {str(town.village1)}


def test_a_worker_cannot_act_on_someone_elses_task(client, town, report):
    issue_id = report()
    assign(client, issue_id, town.admin, town.worker1)
    for action, body in (("start", {}), ("resolve", {"note": "x"}), ("notes", {"text": "x"})):
        response = post(client, f"/api/v1/issues/{issue_id}/{action}", town.worker2, body)
        assert response.status_code == 403, action
        assert response.json["error"]["message"].startswith("只有")
    assert client.get("/api/v1/tasks/mine", headers=town.worker2.headers).json["items"] == []
    # An admin may act on any task.
    assert post(client, f"/api/v1/issues/{issue_id}/start", town.admin).status_code == 200


def test_a_resident_cannot_reach_dispatchs_staff_routes(client, town, report):
    issue_id = report()
    routes = [
        ("get", "/api/v1/queue"),
        ("get", "/api/v1/tasks/mine"),
        ("get", f"/api/v1/issues/{issue_id}"),
        ("get", f"/api/v1/issues/{issue_id}/history"),
        ("post", f"/api/v1/issues/{issue_id}/assign"),
        ("post", f"/api/v1/issues/{issue_id}/start"),
        ("post", f"/api/v1/issues/{issue_id}/escalate"),
        ("get", "/api/v1/ledger"),
        ("get", "/api/v1/ledger/export"),
        ("get", "/api/v1/callbacks/pending"),
        ("get", "/api/v1/stats"),
        ("get", "/api/v1/grids"),
        ("post", "/api/v1/villages"),
    ]
    for method, path in routes:
        response = getattr(client, method)(path, json={}, headers=town.resident.headers)
        assert response.status_code == 403, path
        assert response.json["error"]["code"] == "forbidden"
        assert client.get(path).status_code in (401, 405)


def test_queue_filters_and_cursor_pagination(client, town, report):
    start = datetime.now(UTC) - timedelta(days=3)
    ids = [report(reported_at=start + timedelta(minutes=i)) for i in range(5)]
    road = report(category="road_traffic", village_id=town.village2)
    assign(client, ids[0], town.admin, town.worker1, due_in_hours=1)

    seen, cursor = [], None
    while True:
        query = "/api/v1/queue?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(query, headers=town.admin.headers).json
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [str(i) for i in [*ids, road]]

    def ids_for(query: str) -> list[str]:
        page = client.get(f"/api/v1/queue?{query}", headers=town.admin.headers)
        assert page.status_code == 200, page.json
        return [i["id"] for i in page.json["items"]]

    assert ids_for("category=road_traffic") == [str(road)]
    assert ids_for(f"village={town.village2}") == [str(road)]
    assert ids_for("level=township") == []
    assert ids_for("overdue=true") == []
    assert ids_for("state=assigned") == [str(ids[0])]
    assert client.get("/api/v1/queue?category=nope", headers=town.admin.headers).status_code == 422
