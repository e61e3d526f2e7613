"""Events that survive reordering, on a real PostgreSQL database: every ``issue.*`` event carries
``issue_version`` and a ``snapshot``; a rating belongs to one resolution; a rating after the
auto-close is not dropped; account and village snapshots carry a ``revision``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from dispatch_helpers import assign, envelope, outbox, post
from prometheus_client import REGISTRY

from dispatch import scheduler
from dispatch.handlers import handle_account_upserted, handle_issue_rated
from dispatch.models import Staff

SNAPSHOT_FIELDS = {
    "state",
    "level",
    "assignee_id",
    "assignee_name",
    "handler_id",
    "handler_name",
    "follower_id",
    "follower_name",
    "due_at",
    "resolution_no",
    "resolution_note",
    "resolution_photo_ids",
    "resolved_at",
    "rating",
    "closed_at",
    "reject_reason",
    "holder_ids",
}


def rate(db, issue_id, rating: str, resolution_no: int | None) -> None:
    data = {
        "issue_id": str(issue_id),
        "reporter_id": str(uuid.uuid4()),
        "rating": rating,
        "comment": None,
        "rated_at": datetime.now(UTC).isoformat(),
    }
    if resolution_no is not None:
        data["resolution_no"] = resolution_no
    with db.transaction() as session:
        handle_issue_rated(session, envelope("issue.rated", data))


def issue_events(db) -> list[dict]:
    return [e for e in outbox(db) if e["type"].startswith("issue.")]


def history(client, issue_id, who) -> list[dict]:
    response = client.get(f"/api/v1/issues/{issue_id}/history", headers=who.headers)
    assert response.status_code == 200, response.json
    return response.json


def state_of(client, issue_id, who) -> dict:
    return client.get(f"/api/v1/issues/{issue_id}", headers=who.headers).json


def not_applied(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "ratings_not_applied_total", {"service": "dispatch", "reason": reason}
    )
    return value or 0.0


def resolved_once(client, town, report) -> uuid.UUID:
    issue_id = report()
    assert assign(client, issue_id, town.admin, town.worker1).status_code == 200
    assert post(client, f"/api/v1/issues/{issue_id}/start", town.worker1).status_code == 200
    done = post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "已处理。"})
    assert done.status_code == 200, done.json
    return issue_id


def auto_closed(client, db, town, report, settings) -> uuid.UUID:
    issue_id = resolved_once(client, town, report)
    later = datetime.now(UTC) + timedelta(days=settings.auto_close_days + 1)
    assert scheduler.run_once(db, settings, later).closed == 1
    assert state_of(client, issue_id, town.admin)["state"] == "closed"
    return issue_id


def test_every_issue_event_carries_a_version_one_higher_than_the_last_and_a_snapshot(
    client, db, town, report, settings
):
    issue_id = report()
    assign(client, issue_id, town.admin, town.worker1, due_in_hours=24)
    post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
    escalated = post(
        client,
        f"/api/v1/issues/{issue_id}/escalate",
        town.admin,
        {"to_level": "township", "reason": "需要乡里协调。"},
    )
    assert escalated.status_code == 200, escalated.json
    post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "已处理。"})
    rate(db, issue_id, "unsatisfied", resolution_no=1)
    post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
    post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "已彻底修好。"})
    later = datetime.now(UTC) + timedelta(days=settings.auto_close_days + 1)
    assert scheduler.run_once(db, settings, later).closed == 1

    events = issue_events(db)
    assert [e["type"] for e in events] == [
        "issue.assigned",
        "issue.started",
        "issue.escalated",
        "issue.resolved",
        "issue.reopened",
        "issue.started",
        "issue.resolved",
        "issue.closed",
    ]
    assert [e["data"]["issue_version"] for e in events] == list(range(2, 10))
    assert all(set(e["data"]["snapshot"]) == SNAPSHOT_FIELDS for e in events)
    snaps = [e["data"]["snapshot"] for e in events]
    assert [s["state"] for s in snaps] == [
        "assigned",
        "in_progress",
        "in_progress",
        "resolved",
        "reopened",
        "in_progress",
        "resolved",
        "closed",
    ]
    assert snaps[0]["assignee_name"] == "网格员刘" and snaps[0]["level"] == "grid"
    assert snaps[0]["due_at"] == events[0]["data"]["due_at"]
    assert (snaps[2]["level"], snaps[2]["handler_name"]) == ("township", "乡管理员")
    assert (snaps[3]["resolution_no"], snaps[3]["resolution_note"]) == (1, "已处理。")
    assert snaps[4]["rating"] == "unsatisfied"
    assert (snaps[4]["follower_id"], snaps[4]["follower_name"]) == (
        str(town.area_leader.id),
        "包片领导赵",
    )
    assert (snaps[6]["resolution_no"], snaps[6]["rating"]) == (2, None)
    assert snaps[7]["closed_at"] and snaps[7]["resolution_note"] == "已彻底修好。"
    assert state_of(client, issue_id, town.admin)["version"] == 9


def test_overdue_and_reminders_carry_the_current_version(client, db, town, report, settings):
    issue_id = report()
    assign(client, issue_id, town.admin, town.worker1, due_in_hours=2)
    now = datetime.now(UTC)
    assert scheduler.run_once(db, settings, now + timedelta(hours=1)).reminded == 1
    assert scheduler.run_once(db, settings, now + timedelta(hours=3)).overdue == 1
    events = issue_events(db)
    assert [(e["type"], e["data"]["issue_version"]) for e in events] == [
        ("issue.assigned", 2),
        ("issue.reminder_due", 3),
        ("issue.overdue", 4),
    ]
    assert events[-1]["data"]["snapshot"]["state"] == "assigned"
    assert state_of(client, issue_id, town.admin)["version"] == 4


def test_a_late_rating_of_the_first_resolution_does_not_close_the_second(client, db, town, report):
    issue_id = resolved_once(client, town, report)
    reopened = post(client, f"/api/v1/issues/{issue_id}/reopen", town.admin, {"reason": "需返工"})
    assert reopened.status_code == 200, reopened.json
    post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
    post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "已返工。"})
    events_before = len(outbox(db))
    counted = not_applied("stale_resolution")

    rate(db, issue_id, "satisfied", resolution_no=1)

    issue = state_of(client, issue_id, town.admin)
    assert (issue["state"], issue["rating"]) == ("resolved", None)
    assert len(outbox(db)) == events_before
    last = history(client, issue_id, town.admin)[-1]
    assert (last["action"], last["from_state"], last["to_state"]) == (
        "rating_not_applied",
        "resolved",
        "resolved",
    )
    assert last["details"]["reason"] == "stale_resolution"
    assert (last["details"]["resolution_no"], last["details"]["current_resolution_no"]) == (1, 2)
    assert not_applied("stale_resolution") == counted + 1

    rate(db, issue_id, "satisfied", resolution_no=2)
    assert state_of(client, issue_id, town.admin)["state"] == "closed"
    assert outbox(db)[-1]["data"]["rating"] == "satisfied"


def test_a_second_rating_of_the_same_resolution_is_recorded_not_applied(client, db, town, report):
    issue_id = resolved_once(client, town, report)
    rate(db, issue_id, "satisfied", resolution_no=1)
    counted = not_applied("wrong_state")

    rate(db, issue_id, "unsatisfied", resolution_no=1)

    issue = state_of(client, issue_id, town.admin)
    assert (issue["state"], issue["rating"]) == ("closed", "satisfied")
    assert len(outbox(db, "issue.reopened")) == 0
    assert history(client, issue_id, town.admin)[-1]["details"]["reason"] == "wrong_state"
    assert not_applied("wrong_state") == counted + 1


def test_an_unsatisfied_rating_after_the_auto_close_reopens_it_with_the_area_leader_following(
    client, db, town, report, settings
):
    issue_id = auto_closed(client, db, town, report, settings)

    rate(db, issue_id, "unsatisfied", resolution_no=1)

    issue = state_of(client, issue_id, town.admin)
    assert issue["state"] == "reopened" and issue["rating"] == "unsatisfied"
    assert issue["follower_id"] == str(town.area_leader.id)
    assert issue["assignee_id"] == str(town.worker1.id)
    [reopened] = outbox(db, "issue.reopened")
    assert reopened["data"]["reason"] == "unsatisfied"
    assert reopened["data"]["area_leader_id"] == str(town.area_leader.id)
    assert reopened["data"]["snapshot"]["state"] == "reopened"
    closed = outbox(db, "issue.closed")[0]["data"]
    # (the callback sample marked the item in between: a change that announces nothing)
    assert reopened["data"]["issue_version"] > closed["issue_version"]
    assert reopened["data"]["issue_version"] == issue["version"]
    # (the scheduler ran "8 days later": its auto-close is the latest entry by time)
    [step] = [h for h in history(client, issue_id, town.admin) if h["action"] == "reopen"]
    assert (step["from_state"], step["to_state"]) == ("closed", "reopened")
    assert step["details"]["after_auto_close"] is True


def test_a_satisfied_rating_after_the_auto_close_is_kept_on_the_closed_issue(
    client, db, town, report, settings
):
    issue_id = auto_closed(client, db, town, report, settings)
    events_before = len(outbox(db))

    rate(db, issue_id, "basically_satisfied", resolution_no=1)

    issue = state_of(client, issue_id, town.admin)
    assert (issue["state"], issue["rating"]) == ("closed", "basically_satisfied")
    assert len(outbox(db)) == events_before
    [step] = [h for h in history(client, issue_id, town.admin) if h["action"] == "rate_late"]
    assert (step["from_state"], step["to_state"]) == ("closed", "closed")
    assert step["details"]["rating"] == "basically_satisfied"


def test_a_rating_without_its_resolution_after_the_auto_close_changes_nothing_as_before(
    client, db, town, report, settings
):
    issue_id = auto_closed(client, db, town, report, settings)
    events_before = len(outbox(db))

    rate(db, issue_id, "unsatisfied", resolution_no=None)

    issue = state_of(client, issue_id, town.admin)
    assert (issue["state"], issue["rating"]) == ("closed", None)
    assert len(outbox(db)) == events_before


def test_an_older_account_snapshot_never_brings_a_disabled_account_back(db):
    user_id = uuid.uuid4()

    def upserted(revision: int | None, active: bool) -> None:
        data = {"user_id": str(user_id), "name": "网格员马", "roles": ["grid_worker"]}
        data["active"] = active
        if revision is not None:
            data["revision"] = revision
        with db.transaction() as session:
            handle_account_upserted(session, envelope("account.upserted", data))

    def staff() -> tuple[bool, int | None]:
        with db.transaction() as session:
            row = session.get(Staff, user_id)
            return row.active, row.revision

    upserted(2, active=False)
    upserted(1, active=True)
    assert staff() == (False, 2)
    upserted(2, active=True)  # the same revision again (a re-announcement) changes nothing
    assert staff() == (False, 2)
    upserted(3, active=True)
    assert staff() == (True, 3)
    upserted(None, active=False)  # an intake from before revisions: taken as it comes
    assert staff() == (False, 3)


def test_each_announcement_of_a_village_has_the_next_revision(client, db, town):
    created = post(client, "/api/v1/villages", town.admin, {"code": "V77", "name": "新村"})
    assert created.status_code == 201, created.json
    village_id = created.json["id"]
    changed = client.patch(
        f"/api/v1/villages/{village_id}",
        json={"area_leader_id": str(town.area_leader.id)},
        headers=town.admin.headers,
    )
    assert changed.status_code == 200, changed.json
    events = [
        e["data"] for e in outbox(db, "village.upserted") if e["data"]["village_id"] == village_id
    ]
    assert [(e["revision"], e["area_leader_id"]) for e in events] == [
        (1, None),
        (2, str(town.area_leader.id)),
    ]
