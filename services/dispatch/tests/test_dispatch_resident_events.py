"""What residents do after reporting reaches dispatch, on real PostgreSQL: urging (催办) counted
for the holder, details in the history, withdrawal (and its race with an assignment), a report
made on a resident's behalf (代办), and the contact phone only supervisors see."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from dispatch_helpers import assign, envelope, outbox, post, report_data

from dispatch.handlers import SUBSCRIPTIONS, handle_issue_rated, handle_issue_reported
from dispatch.models import Issue


def _deliver(db, event_type: str, **data: Any) -> None:
    with db.transaction() as session:
        SUBSCRIPTIONS[event_type](session, envelope(event_type, data))


def _history(client, town, issue_id) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/issues/{issue_id}/history", headers=town.admin.headers)
    assert response.status_code == 200, response.json
    return response.json


def _queue_ids(client, who) -> list[str]:
    return [i["id"] for i in client.get("/api/v1/queue", headers=who.headers).json["items"]]


def test_an_urge_is_counted_on_the_item_and_its_holder_sees_it_in_their_tasks(
    client, db, town, report
):
    issue_id = report()
    assert assign(client, issue_id, town.admin, town.worker1).status_code == 200
    urged_at = datetime.now(UTC)

    _deliver(
        db,
        "issue.urged",
        issue_id=str(issue_id),
        reporter_id=str(town.resident.id),
        text="水还在漏，请快点来。",
        urge_count=1,
        urged_at=urged_at.isoformat(),
    )

    [task] = client.get("/api/v1/tasks/mine", headers=town.worker1.headers).json["items"]
    assert task["urge_count"] == 1
    assert task["last_urged_at"].endswith("+08:00")
    assert abs(datetime.fromisoformat(task["last_urged_at"]) - urged_at) < timedelta(seconds=1)
    step = _history(client, town, issue_id)[-1]
    assert (step["action"], step["note"], step["actor_id"]) == (
        "urge",
        "水还在漏，请快点来。",
        str(town.resident.id),
    )
    assert step["from_state"] == step["to_state"] == "assigned"


def test_an_urge_on_an_unassigned_report_shows_in_the_admins_queue(client, db, town, report):
    issue_id = report()
    for _ in range(2):
        _deliver(db, "issue.urged", issue_id=str(issue_id), reporter_id=str(town.resident.id))

    [item] = client.get("/api/v1/queue", headers=town.admin.headers).json["items"]
    assert (item["id"], item["urge_count"]) == (str(issue_id), 2)


def test_an_urge_after_the_item_closed_is_recorded_but_not_counted(client, db, town, report):
    issue_id = report()
    with db.transaction() as session:
        session.get(Issue, issue_id).state = "closed"

    _deliver(db, "issue.urged", issue_id=str(issue_id), reporter_id=str(town.resident.id))

    with db.transaction() as session:
        assert session.get(Issue, issue_id).urge_count == 0
    step = _history(client, town, issue_id)[-1]
    assert step["action"] == "urge" and step["details"] == {"applied": False}


def test_the_residents_details_join_the_history_with_their_photos(client, db, town, report):
    issue_id = report()
    photo = str(uuid.uuid4())

    _deliver(
        db,
        "issue.details_added",
        issue_id=str(issue_id),
        reporter_id=str(town.resident.id),
        text="今天早上水漫到路上了。",
        photo_ids=[photo],
    )

    step = _history(client, town, issue_id)[-1]
    assert (step["action"], step["note"]) == ("details", "今天早上水漫到路上了。")
    assert step["details"] == {"media_ids": [photo]}
    assert step["actor_name"] == "群众"


def test_a_withdrawn_report_leaves_the_queue_and_nothing_more_can_be_done_with_it(
    client, db, town, report
):
    issue_id, other_id = report(), report()

    _deliver(
        db,
        "issue.withdrawn",
        issue_id=str(issue_id),
        reporter_id=str(town.resident.id),
        text="已自行修好",
    )

    assert _queue_ids(client, town.admin) == [str(other_id)]
    issue = client.get(f"/api/v1/issues/{issue_id}", headers=town.admin.headers).json
    assert (issue["state"], issue["state_label"]) == ("withdrawn", "已撤回")
    step = _history(client, town, issue_id)[-1]
    assert (step["action"], step["from_state"], step["to_state"], step["note"]) == (
        "withdraw",
        "reported",
        "withdrawn",
        "已自行修好",
    )
    late = assign(client, issue_id, town.admin, town.worker1)
    assert late.status_code == 409
    assert outbox(db, "issue.withdrawal_declined") == []


def test_a_withdrawal_that_arrives_after_the_assignment_is_declined_and_intake_told(
    client, db, town, report
):
    issue_id = report()
    assert assign(client, issue_id, town.admin, town.worker1).status_code == 200

    _deliver(
        db,
        "issue.withdrawn",
        issue_id=str(issue_id),
        reporter_id=str(town.resident.id),
        text="不想等了",
    )

    issue = client.get(f"/api/v1/issues/{issue_id}", headers=town.admin.headers).json
    assert issue["state"] == "assigned"
    assert [
        i["id"]
        for i in client.get("/api/v1/tasks/mine", headers=town.worker1.headers).json["items"]
    ] == [str(issue_id)]
    step = _history(client, town, issue_id)[-1]
    assert (step["action"], step["note"]) == ("withdraw_declined", "不想等了")
    [declined] = outbox(db, "issue.withdrawal_declined")
    assigned = outbox(db, "issue.assigned")[-1]
    assert declined["data"]["reason"] == "事项已交办，将继续办理"
    assert declined["data"]["snapshot"]["state"] == "assigned"
    assert declined["data"]["issue_version"] > assigned["data"]["issue_version"]


def _report_with_contact(db, town, **extra: Any) -> uuid.UUID:
    data = report_data(town.village1, reporter_id=town.resident.id)
    data.update(extra)
    with db.transaction() as session:
        handle_issue_reported(session, envelope("issue.reported", data))
    return uuid.UUID(data["issue_id"])


def test_a_report_made_for_a_resident_names_the_staff_member_who_submitted_it(client, db, town):
    issue_id = _report_with_contact(
        db,
        town,
        submitted_by=str(town.worker1.id),
        contact_name="李大娘",
        contact_phone="13800138000",
    )

    issue = client.get(f"/api/v1/issues/{issue_id}", headers=town.admin.headers).json
    assert issue["submitted_by"] == str(town.worker1.id)
    assert "contact_phone" not in issue
    [step] = _history(client, town, issue_id)
    assert (step["action"], step["actor_id"], step["actor_name"]) == (
        "report",
        str(town.worker1.id),
        "网格员刘（代办）",
    )


def _close_pending_callback(client, db, town, issue_id) -> None:
    assign(client, issue_id, town.admin, town.worker1)
    for rating in ("unsatisfied", "satisfied"):
        post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
        post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "已处理。"})
        data = {"issue_id": str(issue_id), "rating": rating}
        with db.transaction() as session:
            handle_issue_rated(session, envelope("issue.rated", data))


def test_supervisors_see_the_contact_phone_on_the_callback_list_and_nobody_else_does(
    client, db, town
):
    issue_id = _report_with_contact(db, town, contact_name="李四", contact_phone="13900139000")
    _close_pending_callback(client, db, town, issue_id)

    by_supervisor = client.get("/api/v1/callbacks/pending", headers=town.supervisor.headers)
    by_admin = client.get("/api/v1/callbacks/pending", headers=town.admin.headers)

    [item] = by_supervisor.json["items"]
    assert (item["contact_name"], item["contact_phone"]) == ("李四", "13900139000")
    [masked] = by_admin.json["items"]
    assert masked["contact_phone"] == "139****9000"
    for who in (town.admin, town.worker1, town.area_leader, town.supervisor):
        answer = client.get(f"/api/v1/issues/{issue_id}", headers=who.headers)
        assert "13900139000" not in answer.get_data(as_text=True), who.name
    worker_list = client.get("/api/v1/callbacks/pending", headers=town.worker1.headers)
    assert worker_list.status_code == 403
