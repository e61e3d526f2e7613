"""Township departments (分管部门: 综治办, 农业办, 民政所) as the admin's assignees, with
their staff as handlers, and county departments' staff on the items referred to them; real
PostgreSQL."""

from __future__ import annotations

import uuid

from dispatch_helpers import assign, outbox, post

from dispatch.models import Department, DepartmentMember


def department(client, town, code, name, kind="township", members=()):
    body = {"code": code, "name": name, "kind": kind, "member_ids": [str(m.id) for m in members]}
    answer = client.post("/api/v1/departments", json=body, headers=town.admin.headers)
    assert answer.status_code == 201, answer.json
    return answer.json


def to_department(client, issue_id, who, department_id, **extra):
    body = {"department_id": str(department_id), "difficulty": 3, **extra}
    return post(client, f"/api/v1/issues/{issue_id}/assign", who, body)


def task_ids(client, who):
    answer = client.get("/api/v1/tasks/mine", headers=who.headers)
    assert answer.status_code == 200, answer.json
    return [item["id"] for item in answer.json["items"]]


def test_the_admin_lists_township_departments_with_their_staff(client, town, person):
    clerk = person("department_staff", name="综治办李")
    zzb = department(client, town, "zzb", "综治办", members=[clerk])
    department(client, town, "nyb", "农业办")
    assert zzb["kind"] == "township" and zzb["kind_label"] == "乡镇分管部门"
    assert zzb["member_ids"] == [str(clerk.id)]
    township = client.get("/api/v1/departments?kind=township", headers=town.admin.headers).json
    assert [d["name"] for d in township] == ["农业办", "综治办"]
    county = client.get("/api/v1/departments?kind=county", headers=town.admin.headers).json
    assert [d["name"] for d in county] == ["县水利局"]  # departments before kinds are county
    bad = client.get("/api/v1/departments?kind=village", headers=town.admin.headers)
    assert bad.status_code == 422

    other = person("department_staff", name="综治办王")
    changed = client.patch(
        f"/api/v1/departments/{zzb['id']}",
        json={"member_ids": [str(other.id), str(clerk.id)]},
        headers=town.admin.headers,
    )
    assert changed.status_code == 200 and changed.json["member_ids"] == [
        str(clerk.id),
        str(other.id),
    ]
    twice = client.patch(
        f"/api/v1/departments/{zzb['id']}",
        json={"member_ids": [str(other.id), str(other.id)]},
        headers=town.admin.headers,
    )
    assert twice.status_code == 422
    by_worker = client.post(
        "/api/v1/departments",
        json={"code": "mzs", "name": "民政所", "kind": "township"},
        headers=town.worker1.headers,
    )
    assert by_worker.status_code == 403


def test_the_admin_hands_an_issue_to_a_township_department_whose_staff_do_the_work(
    client, db, town, report, person
):
    clerk = person("department_staff", name="综治办李")
    outsider = person("department_staff", name="农业办张")
    zzb = department(client, town, "zzb", "综治办", members=[clerk])
    department(client, town, "nyb", "农业办", members=[outsider])
    issue_id = report(category="neighbor_dispute")

    handed = to_department(client, issue_id, town.admin, zzb["id"], due_in_hours=48)
    assert handed.status_code == 200, handed.json
    answer = handed.json
    assert (answer["state"], answer["level"]) == ("assigned", "township")
    assert answer["department_id"] == zzb["id"] and answer["department_name"] == "综治办"
    assert answer["assignee_id"] is None
    event = outbox(db, "issue.assigned")[-1]["data"]
    assert event["department_id"] == zzb["id"] and event["department_name"] == "综治办"
    assert event["assignee_id"] is None
    assert event["snapshot"]["handler_name"] == "综治办"

    # The department's staff see it in their tasks and read it; others do not.
    assert task_ids(client, clerk) == [str(issue_id)]
    assert task_ids(client, outsider) == []
    detail = client.get(f"/api/v1/issues/{issue_id}", headers=clerk.headers)
    assert detail.status_code == 200
    refused = post(client, f"/api/v1/issues/{issue_id}/start", outsider)
    assert refused.status_code == 403
    assert post(client, f"/api/v1/issues/{issue_id}/start", town.worker1).status_code == 403

    started = post(client, f"/api/v1/issues/{issue_id}/start", clerk)
    assert started.status_code == 200, started.json
    note = post(client, f"/api/v1/issues/{issue_id}/notes", clerk, {"text": "已约双方调解"})
    assert note.status_code == 201
    resolved = post(client, f"/api/v1/issues/{issue_id}/resolve", clerk, {"note": "双方达成协议"})
    assert resolved.status_code == 200, resolved.json
    done = outbox(db, "issue.resolved")[-1]["data"]
    assert done["resolver_id"] == str(clerk.id) and done["resolver_role"] == "department"
    assert done["level"] == "township"
    assert task_ids(client, clerk) == []


def test_only_a_member_holding_the_department_staff_role_acts_for_the_department(
    client, db, town, report, person
):
    # Named as a member, but the account lacks the role: not a handler.
    plain = person("grid_worker", name="无角色")
    zzb = department(client, town, "zzb", "综治办", members=[plain])
    issue_id = report()
    assert to_department(client, issue_id, town.admin, zzb["id"]).status_code == 200
    assert post(client, f"/api/v1/issues/{issue_id}/start", plain).status_code == 403


def test_assigning_to_a_department_is_for_admins_and_township_departments_only(
    client, db, town, report, person
):
    zzb = department(client, town, "zzb", "综治办")
    off = department(client, town, "mzs", "民政所")
    client.patch(
        f"/api/v1/departments/{off['id']}", json={"active": False}, headers=town.admin.headers
    )
    issue_id = report()

    by_leader = to_department(client, issue_id, town.leader1, zzb["id"])
    assert by_leader.status_code == 403
    county = to_department(client, issue_id, town.admin, town.department)
    assert county.status_code == 422 and county.json["error"]["code"] == "unknown_department"
    inactive = to_department(client, issue_id, town.admin, off["id"])
    assert inactive.status_code == 422
    unknown = to_department(client, issue_id, town.admin, uuid.uuid4())
    assert unknown.status_code == 422
    both = to_department(client, issue_id, town.admin, zzb["id"], assignee_id=str(town.worker1.id))
    assert both.status_code == 422
    neither = post(client, f"/api/v1/issues/{issue_id}/assign", town.admin, {"difficulty": 2})
    assert neither.status_code == 422
    assert outbox(db, "issue.assigned") == []


def test_a_department_item_reassigned_to_a_grid_worker_leaves_the_department(
    client, db, town, report, person
):
    clerk = person("department_staff", name="农业办李")
    nyb = department(client, town, "nyb", "农业办", members=[clerk])
    issue_id = report()
    to_department(client, issue_id, town.admin, nyb["id"])
    moved = assign(client, issue_id, town.admin, town.worker1, reassign=True)
    assert moved.status_code == 200, moved.json
    assert moved.json["department_id"] is None
    assert moved.json["assignee_id"] == str(town.worker1.id)
    assert task_ids(client, clerk) == []
    assert task_ids(client, town.worker1) == [str(issue_id)]
    event = outbox(db, "issue.assigned")[-1]["data"]
    assert event["department_id"] is None and event["reassigned"] is True


def test_an_admin_escalates_to_a_township_department_but_a_grid_worker_only_to_the_pool(
    client, db, town, report, person
):
    clerk = person("department_staff", name="民政所李")
    mzs = department(client, town, "mzs", "民政所", members=[clerk])
    issue_id = report(category="medical_elderly")
    assign(client, issue_id, town.admin, town.worker1)
    by_worker = post(
        client,
        f"/api/v1/issues/{issue_id}/escalate",
        town.worker1,
        {"to_level": "township", "reason": "需民政所", "department": mzs["id"]},
    )
    assert by_worker.status_code == 403
    by_admin = post(
        client,
        f"/api/v1/issues/{issue_id}/escalate",
        town.admin,
        {"to_level": "township", "reason": "低保问题交民政所", "department": mzs["id"]},
    )
    assert by_admin.status_code == 200, by_admin.json
    assert by_admin.json["department_name"] == "民政所"
    assert by_admin.json["assignee_id"] == str(town.worker1.id)  # knows the case
    event = outbox(db, "issue.escalated")[-1]["data"]
    assert event["department_name"] == "民政所" and event["county_department"] is None
    assert task_ids(client, clerk) == [str(issue_id)]
    county_as_township = post(
        client,
        f"/api/v1/issues/{issue_id}/escalate",
        town.admin,
        {"to_level": "area_leader", "reason": "需协调", "department": mzs["id"]},
    )
    assert county_as_township.status_code == 422
    wrong_kind = post(
        client,
        f"/api/v1/issues/{issue_id}/escalate",
        town.admin,
        {"to_level": "county", "reason": "县里", "department": mzs["id"]},
    )
    assert wrong_kind.status_code == 422


def test_county_department_staff_see_and_resolve_the_items_referred_to_them(
    client, db, town, report, person
):
    contact = person("department_staff", name="水利局联络员")
    with db.transaction() as session:
        session.add(DepartmentMember(department_id=town.department, user_id=contact.id))
    issue_id = report()
    assign(client, issue_id, town.admin, town.worker1)
    post(
        client,
        f"/api/v1/issues/{issue_id}/escalate",
        town.admin,
        {"to_level": "county", "reason": "主管道", "department": str(town.department)},
    )
    assert task_ids(client, contact) == [str(issue_id)]
    post(client, f"/api/v1/issues/{issue_id}/start", contact)
    done = post(client, f"/api/v1/issues/{issue_id}/resolve", contact, {"note": "主管道已更换"})
    assert done.status_code == 200, done.json
    assert outbox(db, "issue.resolved")[-1]["data"]["resolver_role"] == "department"


def test_a_department_holding_items_keeps_its_kind(client, db, town, report):
    zzb = department(client, town, "zzb", "综治办")
    unused = department(client, town, "nyb", "农业办")
    to_department(client, report(), town.admin, zzb["id"])
    changed = client.patch(
        f"/api/v1/departments/{zzb['id']}", json={"kind": "county"}, headers=town.admin.headers
    )
    assert changed.status_code == 409
    assert changed.json["error"]["code"] == "department_in_use"
    free = client.patch(
        f"/api/v1/departments/{unused['id']}", json={"kind": "county"}, headers=town.admin.headers
    )
    assert free.status_code == 200 and free.json["kind"] == "county"
    with db.transaction() as session:
        assert session.get(Department, town.department).kind == "county"
