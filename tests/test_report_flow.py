"""A resident's report across the real broker: intake → exchange → (dispatch's events) → intake."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from intake.models import IssueStep, User, Village
from shared.testing import wait_for

VILLAGE = uuid.UUID("9d709f5c-218e-58c0-83e0-1db6b1b57b8e")


def _seed(db) -> tuple[uuid.UUID, uuid.UUID]:
    resident, worker = uuid.uuid4(), uuid.uuid4()
    with db.transaction() as session:
        session.add(Village(id=VILLAGE, name="沙口集村"))
        session.add(User(id=resident, openid="o-resident", name="张大爷", roles=["resident"]))
        session.add(User(id=worker, username="worker01", name="王网格", roles=["grid_worker"]))
    return resident, worker


def _headers(issuer, user_id, roles=("resident",)) -> dict[str, str]:
    token, _ = issuer.issue(user_id, roles, "张大爷")
    return {"Authorization": f"Bearer {token}"}


def _report(client, headers) -> dict:
    answer = client.post(
        "/api/v1/issues",
        json={
            "category": "road_traffic",
            "description": "村口的路面塌了一个大坑，晚上很危险。",
            "village_id": str(VILLAGE),
        },
        headers=headers,
    )
    assert answer.status_code == 201, answer.json
    return answer.json


def test_a_report_reaches_the_exchange_as_an_issue_reported_envelope(intake, listener):
    resident, _ = _seed(intake["db"])
    created = _report(intake["client"], _headers(intake["issuer"], resident))
    envelope = listener.wait_for("issue.reported", issue_id=created["id"])
    assert envelope["producer"] == "intake"
    assert envelope["version"] == 1
    assert envelope["data"]["reporter_id"] == str(resident)
    assert envelope["data"]["category"] == "road_traffic"
    outbox = intake["db"].metadata.tables["outbox"]

    def all_sent():
        with intake["db"].engine.connect() as conn:
            return (
                conn.execute(
                    sa.select(sa.func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
                ).scalar_one()
                == 0
            )

    wait_for(all_sent)


def test_the_resident_follows_every_step_and_rates_the_result(intake, listener):
    resident, worker = _seed(intake["db"])
    client, headers = intake["client"], _headers(intake["issuer"], resident)
    issue_id = _report(client, headers)["id"]
    due_at = datetime.now(UTC) + timedelta(hours=48)
    listener.publish(
        "issue.assigned",
        {
            "issue_id": issue_id,
            "assignee_id": str(worker),
            "grid_id": str(uuid.uuid4()),
            "village_id": str(VILLAGE),
            "grid_leader_id": None,
            "difficulty": 3,
            "due_at": due_at.isoformat(),
            "assigned_by": str(uuid.uuid4()),
        },
    )

    def view():
        return client.get(f"/api/v1/issues/{issue_id}", headers=headers).json

    wait_for(lambda: view()["status"] == "assigned")
    assert view()["handler_name"] == "王网格"
    assert view()["due_at"].endswith("+08:00")
    listener.publish("issue.started", {"issue_id": issue_id, "assignee_id": str(worker)})
    wait_for(lambda: view()["status"] == "in_progress")
    listener.publish(
        "issue.escalated",
        {
            "issue_id": issue_id,
            "from_level": "grid",
            "to_level": "township",
            "reason": "需要乡里协调施工队",
            "handler_id": None,
            "county_department": None,
        },
    )
    wait_for(lambda: view()["level"] == "township")
    listener.publish(
        "issue.resolved",
        {
            "issue_id": issue_id,
            "assignee_id": str(worker),
            "reporter_id": str(resident),
            "difficulty": 3,
            "due_at": due_at.isoformat(),
            "resolved_at": datetime.now(UTC).isoformat(),
            "on_time": True,
            "note": "已回填路面并设置警示牌。",
            "photo_ids": [],
        },
    )
    wait_for(lambda: view()["status"] == "resolved")
    detail = view()
    assert detail["resolution_note"] == "已回填路面并设置警示牌。"
    assert detail["can_rate"] is True
    titles = [step["title"] for step in detail["timeline"]]
    assert titles[0].startswith("已受理")
    assert any(t.startswith("已交办") for t in titles)
    assert "网格员已开始办理" in titles and "已办结" in titles
    assert any("乡镇" in t for t in titles)

    rated = client.post(
        f"/api/v1/issues/{issue_id}/rating", json={"rating": "satisfied"}, headers=headers
    )
    assert rated.status_code == 201
    envelope = listener.wait_for("issue.rated", issue_id=issue_id)
    assert envelope["data"]["rating"] == "satisfied"
    listener.publish(
        "issue.closed",
        {
            "issue_id": issue_id,
            "reporter_id": str(resident),
            "rating": "satisfied",
            "closed_at": datetime.now(UTC).isoformat(),
        },
    )
    wait_for(lambda: view()["status"] == "closed")
    assert view()["status_label"] == "已关闭"


def test_a_redelivered_event_changes_nothing(intake, listener):
    resident, worker = _seed(intake["db"])
    issue_id = _report(intake["client"], _headers(intake["issuer"], resident))["id"]
    envelope = listener.publish("issue.started", {"issue_id": issue_id, "assignee_id": str(worker)})
    listener.publish_envelope(envelope)
    marker = listener.publish(
        "issue.rejected", {"issue_id": issue_id, "reason": "重复反映", "by": str(worker)}
    )

    def steps(kind):
        with intake["db"].transaction() as session:
            return session.scalar(
                sa.select(sa.func.count())
                .select_from(IssueStep)
                .where(IssueStep.issue_id == uuid.UUID(issue_id), IssueStep.kind == kind)
            )

    wait_for(lambda: steps("issue.rejected") == 1)
    processed = intake["db"].metadata.tables["processed_events"]

    def handled(event_id):
        with intake["db"].engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count())
                .select_from(processed)
                .where(processed.c.event_id == uuid.UUID(event_id))
            ).scalar_one()

    wait_for(lambda: handled(marker["id"]) == 1)
    assert steps("issue.started") == 1
    assert handled(envelope["id"]) == 1
