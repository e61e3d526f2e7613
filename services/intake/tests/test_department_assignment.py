"""The resident's timeline when dispatch hands a report to a township department (分管部门) or
escalates it to one: the department's name shows, no grid worker is needed; real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from test_read_model import VILLAGE_ID, _deliver, _snapshot

NOW = datetime.now(UTC)


def _report(client, headers) -> str:
    body = {
        "category": "neighbor_dispute",
        "description": "邻居占用通道，多次协商未果。",
        "village_id": str(VILLAGE_ID),
    }
    response = client.post("/api/v1/issues", json=body, headers=headers)
    assert response.status_code == 201, response.json
    return response.json["id"]


def _assigned(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "state": "assigned",
        "level": "township",
        "assignee_name": None,
        "handler_name": "综治办",
        "due_at": (NOW + timedelta(hours=48)).isoformat(),
        "resolution_no": 0,
        "resolution_note": None,
        "resolved_at": None,
    }
    return _snapshot(**{**fields, **changes})


def test_a_report_handed_to_a_township_department_shows_the_department(
    client, db, village, make_user
):
    _, alice = make_user()
    issue_id = _report(client, alice)
    _deliver(
        db,
        "issue.assigned",
        issue_id,
        2,
        _assigned(),
        assignee_id=None,
        assignee_name=None,
        department_id="7d1c0000-0000-4000-8000-000000000001",
        department_name="综治办",
        due_at=(NOW + timedelta(hours=48)).isoformat(),
    )
    detail = client.get(f"/api/v1/issues/{issue_id}", headers=alice).json
    assert detail["status"] == "assigned"
    assert detail["handler_name"] == "综治办"
    assert detail["timeline"][-1]["title"] == "已交办给综治办"


def test_an_escalation_to_a_township_department_names_it_in_the_timeline(
    client, db, village, make_user
):
    _, alice = make_user()
    issue_id = _report(client, alice)
    _deliver(
        db,
        "issue.escalated",
        issue_id,
        3,
        _assigned(state="in_progress", handler_name="民政所"),
        from_level="grid",
        to_level="township",
        reason="低保问题交民政所",
        handler_id=None,
        county_department=None,
        department_name="民政所",
    )
    detail = client.get(f"/api/v1/issues/{issue_id}", headers=alice).json
    assert detail["timeline"][-1]["title"] == "已转交乡镇协调办理（民政所）"
    assert detail["handler_name"] == "民政所"
