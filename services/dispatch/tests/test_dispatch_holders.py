"""``holder_ids`` in every issue snapshot, on a real PostgreSQL database: the people who hold the
item now and must act on it (notify's recipients): a department's members, the level's handler,
the grid worker at work, or nobody (the township admins' queue)."""

from __future__ import annotations

import uuid

from dispatch_helpers import assign, outbox, post

from dispatch import services
from dispatch.models import Issue


def holders(db, event_type: str) -> list[str]:
    """``holder_ids`` of the snapshot in the newest event of that type."""
    return outbox(db, event_type)[-1]["data"]["snapshot"]["holder_ids"]


def escalate(client, issue_id, who, to_level: str, **extra):
    body = {"to_level": to_level, "reason": "需要上一级协调。", **extra}
    answer = post(client, f"/api/v1/issues/{issue_id}/escalate", who, body)
    assert answer.status_code == 200, answer.json
    return answer


def set_members(client, town, department_id, members) -> None:
    """One at a time, so that the order they were added in is the order given."""
    for n in range(1, len(members) + 1):
        answer = client.patch(
            f"/api/v1/departments/{department_id}",
            json={"member_ids": [str(m.id) for m in members[:n]]},
            headers=town.admin.headers,
        )
        assert answer.status_code == 200, answer.json


def test_a_new_report_is_held_by_nobody_but_the_township_admins_queue(db, report):
    issue_id = report()
    with db.transaction() as session:
        snapshot = services.snapshot(session, session.get(Issue, issue_id))
    assert snapshot["state"] == "reported" and snapshot["holder_ids"] == []


def test_the_assigned_grid_worker_holds_the_item_while_working_on_it(client, db, town, report):
    issue_id = report()
    assert assign(client, issue_id, town.admin, town.worker1).status_code == 200
    assert holders(db, "issue.assigned") == [str(town.worker1.id)]
    post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
    assert holders(db, "issue.started") == [str(town.worker1.id)]
    reassigned = assign(client, issue_id, town.admin, town.worker2, reassign=True)
    assert reassigned.status_code == 200, reassigned.json
    assert holders(db, "issue.assigned") == [str(town.worker2.id)]

    post(client, f"/api/v1/issues/{issue_id}/start", town.worker2)
    resolved = post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker2, {"note": "已修。"})
    assert resolved.status_code == 200, resolved.json
    # Resolved at the grid level: nobody must act any more (the resident rates it).
    assert holders(db, "issue.resolved") == []


def test_a_rejected_report_is_held_by_nobody(client, db, town, report):
    issue_id = report()
    rejected = post(client, f"/api/v1/issues/{issue_id}/reject", town.admin, {"reason": "重复"})
    assert rejected.status_code == 200, rejected.json
    assert holders(db, "issue.rejected") == []


def test_each_level_above_the_grid_is_held_by_its_handler(client, db, town, report):
    issue_id = report()
    assign(client, issue_id, town.admin, town.worker1)
    post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)

    # An admin escalating to the township holds it himself.
    escalate(client, issue_id, town.admin, "township")
    assert holders(db, "issue.escalated") == [str(town.admin.id)]
    # The area leader, not the grid worker who stays on the case.
    escalate(client, issue_id, town.admin, "area_leader")
    snapshot = outbox(db, "issue.escalated")[-1]["data"]["snapshot"]
    assert snapshot["assignee_id"] == str(town.worker1.id)
    assert snapshot["holder_ids"] == [str(town.area_leader.id)]


def test_the_township_pool_leaves_the_working_grid_worker_as_the_holder(client, db, town, report):
    """No handler at the township level (the admins' pool): the rule falls through to the
    grid worker still working on the case."""
    issue_id = report()
    assign(client, issue_id, town.admin, town.worker1)
    post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
    escalate(client, issue_id, town.worker1, "township")
    snapshot = outbox(db, "issue.escalated")[-1]["data"]["snapshot"]
    assert snapshot["handler_id"] is None
    assert snapshot["holder_ids"] == [str(town.worker1.id)]


def test_a_township_department_is_held_by_its_members_in_the_order_added(
    client, db, town, report, person
):
    first = person("department_staff", name="综治办李")
    second = person("department_staff", name="综治办王")
    created = client.post(
        "/api/v1/departments",
        json={"code": "zzb", "name": "综治办", "kind": "township", "member_ids": []},
        headers=town.admin.headers,
    )
    assert created.status_code == 201, created.json
    zzb = uuid.UUID(created.json["id"])
    set_members(client, town, zzb, [first, second])

    issue_id = report(category="neighbor_dispute")
    handed = post(
        client,
        f"/api/v1/issues/{issue_id}/assign",
        town.admin,
        {"department_id": str(zzb), "difficulty": 3},
    )
    assert handed.status_code == 200, handed.json
    assert holders(db, "issue.assigned") == [str(first.id), str(second.id)]
    assert post(client, f"/api/v1/issues/{issue_id}/start", second).status_code == 200
    assert holders(db, "issue.started") == [str(first.id), str(second.id)]


def test_an_item_referred_to_the_county_is_held_by_the_departments_members(
    client, db, town, report, person
):
    clerk = person("department_staff", name="水利局赵")
    set_members(client, town, town.department, [clerk])
    issue_id = report()
    assign(client, issue_id, town.admin, town.worker1)
    post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
    escalate(client, issue_id, town.admin, "township")
    escalate(client, issue_id, town.admin, "area_leader")
    escalate(client, issue_id, town.admin, "county", department=str(town.department))
    snapshot = outbox(db, "issue.escalated")[-1]["data"]["snapshot"]
    assert snapshot["level"] == "county" and snapshot["handler_name"] == "县水利局"
    assert snapshot["holder_ids"] == [str(clerk.id)]
