"""The residents' view kept from dispatch's snapshots, on real PostgreSQL: newest version wins, a
rating belongs to one resolution, and an auto-closed issue can still be rated."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from intake.handlers import SUBSCRIPTIONS
from shared.events import make_envelope, parse_envelope

VILLAGE_ID = uuid.UUID("5a3c0000-0000-4000-8000-000000000001")  # the `village` fixture's id
NOW = datetime.now(UTC)


def _snapshot(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "state": "resolved",
        "level": "grid",
        "assignee_id": None,
        "assignee_name": "王网格",
        "handler_id": None,
        "handler_name": None,
        "follower_id": None,
        "follower_name": None,
        "due_at": None,
        "resolution_no": 1,
        "resolution_note": "已更换水管。",
        "resolution_photo_ids": [],
        "resolved_at": NOW.isoformat(),
        "rating": None,
        "closed_at": None,
        "reject_reason": None,
    }
    base.update(changes)
    return base


def _deliver(db, event_type: str, issue_id: str, version: int | None, snapshot=None, **data):
    body = {"issue_id": issue_id, **data}
    if version is not None:
        body.update({"issue_version": version, "snapshot": snapshot})
    envelope = make_envelope(event_type, body, producer="dispatch")
    with db.transaction() as session:
        SUBSCRIPTIONS[event_type](session, parse_envelope(envelope))


def _new_issue(client, headers) -> str:
    body = {
        "category": "water_power",
        "description": "村东头的自来水管破了，一直在漏水。",
        "village_id": str(VILLAGE_ID),
    }
    response = client.post("/api/v1/issues", json=body, headers=headers)
    assert response.status_code == 201, response.json
    return response.json["id"]


def test_the_resident_rates_an_issue_that_closed_by_itself_and_the_rating_names_its_resolution(
    client, db, outbox_rows, village, make_user
):
    _, alice = make_user()
    issue_id = _new_issue(client, alice)
    _deliver(db, "issue.resolved", issue_id, 5, _snapshot(), note="已更换水管。")
    closed = _snapshot(state="closed", closed_at=NOW.isoformat())
    _deliver(db, "issue.closed", issue_id, 6, closed, rating=None, auto=True)
    detail = client.get(f"/api/v1/issues/{issue_id}", headers=alice).json
    assert (detail["status"], detail["can_rate"]) == ("closed", True)

    rated = client.post(
        f"/api/v1/issues/{issue_id}/rating", json={"rating": "unsatisfied"}, headers=alice
    )

    assert rated.status_code == 201, rated.json
    [event] = outbox_rows("issue.rated")
    assert event["envelope"]["data"]["resolution_no"] == 1
    again = client.post(
        f"/api/v1/issues/{issue_id}/rating", json={"rating": "satisfied"}, headers=alice
    )
    assert again.status_code == 409
    # dispatch reopens it (unsatisfied after the auto-close): the resident sees the reopening.
    reopened = _snapshot(state="reopened", rating="unsatisfied", follower_name="赵志刚")
    _deliver(db, "issue.reopened", issue_id, 8, reopened, reason="unsatisfied")
    detail = client.get(f"/api/v1/issues/{issue_id}", headers=alice).json
    assert (detail["status"], detail["rating"], detail["can_rate"]) == (
        "reopened",
        "unsatisfied",
        False,
    )
    assert "赵志刚" in detail["timeline"][-1]["note"]


def test_an_issue_closed_with_a_rating_cannot_be_rated_again(client, db, village, make_user):
    _, alice = make_user()
    issue_id = _new_issue(client, alice)
    closed = _snapshot(state="closed", rating="satisfied", closed_at=NOW.isoformat())
    _deliver(db, "issue.closed", issue_id, 6, closed, rating="satisfied")
    detail = client.get(f"/api/v1/issues/{issue_id}", headers=alice).json
    assert (detail["status"], detail["can_rate"]) == ("closed", False)
    rated = client.post(
        f"/api/v1/issues/{issue_id}/rating", json={"rating": "satisfied"}, headers=alice
    )
    assert rated.status_code == 409


def test_a_snapshot_not_newer_than_the_one_held_only_adds_its_step(client, db, village, make_user):
    _, alice = make_user()
    issue_id = _new_issue(client, alice)
    due = (NOW + timedelta(hours=24)).isoformat()
    started = _snapshot(
        state="in_progress",
        resolution_no=0,
        resolution_note=None,
        resolved_at=None,
        due_at=due,
    )
    _deliver(db, "issue.started", issue_id, 3, started)
    stale = {**started, "state": "assigned", "assignee_name": "旧名字"}
    _deliver(db, "issue.assigned", issue_id, 2, stale, assignee_id=str(uuid.uuid4()))
    _deliver(db, "issue.started", issue_id, 3, {**started, "state": "reported"})  # equal: stale
    detail = client.get(f"/api/v1/issues/{issue_id}", headers=alice).json
    assert (detail["status"], detail["handler_name"]) == ("in_progress", "王网格")
    kinds = [step["kind"] for step in detail["timeline"]]
    assert kinds.count("issue.started") == 2 and kinds.count("issue.assigned") == 1


def test_the_residents_own_rating_stays_until_dispatch_takes_it(client, db, village, make_user):
    _, alice = make_user()
    issue_id = _new_issue(client, alice)
    _deliver(db, "issue.resolved", issue_id, 5, _snapshot(), note="已更换水管。")
    assert (
        client.post(
            f"/api/v1/issues/{issue_id}/rating", json={"rating": "satisfied"}, headers=alice
        ).status_code
        == 201
    )
    # The auto-close raced the rating: its snapshot knows no rating of resolution 1 yet.
    closed = _snapshot(state="closed", closed_at=NOW.isoformat())
    _deliver(db, "issue.closed", issue_id, 6, closed, rating=None, auto=True)
    detail = client.get(f"/api/v1/issues/{issue_id}", headers=alice).json
    assert (detail["status"], detail["rating"], detail["can_rate"]) == (
        "closed",
        "satisfied",
        False,
    )


def test_an_event_without_a_version_is_still_applied_by_its_time(client, db, village, make_user):
    _, alice = make_user()
    issue_id = _new_issue(client, alice)
    _deliver(db, "issue.resolved", issue_id, None, note="已更换水管。", photo_ids=[])
    detail = client.get(f"/api/v1/issues/{issue_id}", headers=alice).json
    assert (detail["status"], detail["resolution_note"], detail["can_rate"]) == (
        "resolved",
        "已更换水管。",
        True,
    )
