"""Who reads and changes which work items (issue 7, access 5 and 7; everyone sees their work),
through the HTTP API on a real PostgreSQL database."""

from __future__ import annotations

import uuid

import pytest
from dispatch_helpers import Person, assign, envelope, post

from dispatch import services
from dispatch.handlers import handle_issue_rated
from dispatch.models import Department, DepartmentMember, Grid, GridMember


@pytest.fixture
def grid_b(db, town, person) -> tuple[uuid.UUID, Person, Person]:
    """A second grid in village 1 (town.village1), with its own leader and worker."""
    leader = person("grid_leader", name="网格长吴")
    worker = person("grid_worker", name="网格员郑")
    grid_id = uuid.uuid4()
    with db.transaction() as session:
        session.add(
            Grid(id=grid_id, village_id=town.village1, name="第二网格", leader_id=leader.id)
        )
        session.flush()
        session.add(GridMember(grid_id=grid_id, user_id=worker.id))
    return grid_id, leader, worker


def reads(client, issue_id, who: Person) -> int:
    answer = client.get(f"/api/v1/issues/{issue_id}", headers=who.headers).status_code
    history = client.get(f"/api/v1/issues/{issue_id}/history", headers=who.headers).status_code
    assert answer == history
    return answer


def queue_ids(client, who: Person, query: str = "") -> set[str]:
    response = client.get(f"/api/v1/queue{query}", headers=who.headers)
    assert response.status_code == 200, response.json
    return {i["id"] for i in response.json["items"]}


def test_a_grid_worker_reads_the_issues_of_their_grid_and_not_of_other_grids(
    client, town, report, grid_b
):
    _, _, worker_b = grid_b
    issue_id = report()
    assert assign(client, issue_id, town.admin, town.worker2).status_code == 200
    assert reads(client, issue_id, town.worker2) == 200  # their task
    assert reads(client, issue_id, town.worker1) == 200  # their grid
    assert reads(client, issue_id, worker_b) == 404  # same village, another grid
    assert reads(client, issue_id, town.worker3) == 404  # another village
    missing = client.get(f"/api/v1/issues/{issue_id}", headers=town.worker3.headers)
    assert missing.json["error"]["message"] == "未找到该事项。"


def test_a_grid_leader_sees_their_grid_and_not_the_whole_village(client, town, report, grid_b):
    _, leader_b, worker_b = grid_b
    theirs = report()
    assert assign(client, theirs, town.admin, worker_b).status_code == 200
    mine = report()
    assert assign(client, mine, town.admin, town.worker1).status_code == 200
    unassigned = report()
    elsewhere = report(village_id=town.village2)

    assert queue_ids(client, town.leader1) == {str(mine), str(unassigned)}
    assert queue_ids(client, leader_b) == {str(theirs), str(unassigned)}
    assert reads(client, theirs, town.leader1) == 404
    assert reads(client, theirs, leader_b) == 200
    assert reads(client, elsewhere, town.leader1) == 404


def test_a_grid_worker_lists_the_unassigned_reports_of_their_grids_villages_read_only(
    client, town, report
):
    waiting = report()
    elsewhere = report(village_id=town.village2)
    taken = report()
    assert assign(client, taken, town.admin, town.worker2).status_code == 200

    assert queue_ids(client, town.worker1, "?state=reported") == {str(waiting)}
    assert queue_ids(client, town.worker3, "?state=reported") == {str(elsewhere)}
    assert reads(client, waiting, town.worker1) == 200
    # Read-only: a grid worker does not hand out work.
    assert assign(client, waiting, town.worker1, town.worker1).status_code == 403


def test_an_area_leader_sees_the_open_items_of_their_villages_only(client, town, report, person):
    ours = report()
    assert assign(client, ours, town.admin, town.worker1).status_code == 200
    waiting = report()
    other = report(village_id=town.village2)
    assert queue_ids(client, town.area_leader) == {str(ours), str(waiting)}
    assert reads(client, ours, town.area_leader) == 200
    assert reads(client, other, town.area_leader) == 404
    nobody = person("area_leader", name="包片领导钱")
    assert queue_ids(client, nobody) == set()
    assert reads(client, ours, nobody) == 404


def test_admins_and_supervisors_read_every_item_and_publicists_none(client, town, report, person):
    one = report()
    two = report(village_id=town.village2)
    for who in (town.admin, town.supervisor):
        assert queue_ids(client, who) == {str(one), str(two)}
        assert reads(client, two, who) == 200
    publicist = person("publicist", name="宣传员冯")
    for path in ("/api/v1/queue", f"/api/v1/issues/{one}", f"/api/v1/issues/{one}/history"):
        assert client.get(path, headers=publicist.headers).status_code == 403, path
    assert client.get("/api/v1/staff", headers=publicist.headers).status_code == 403


def test_a_grid_leader_cannot_reassign_an_item_of_another_grid_of_the_same_village(
    client, town, report, grid_b
):
    _, leader_b, worker_b = grid_b
    issue_id = report()
    assert assign(client, issue_id, town.admin, worker_b).status_code == 200
    stolen = assign(client, issue_id, town.leader1, town.worker1, reassign=True)
    assert stolen.status_code == 403
    assert stolen.json["error"]["code"] == "not_your_grid"
    # The item's own grid leader may reassign inside their grid; the admin anywhere.
    assert assign(client, issue_id, leader_b, leader_b, reassign=True).status_code == 200
    moved = assign(client, issue_id, town.admin, town.worker1, reassign=True)
    assert moved.status_code == 200 and moved.json["grid_id"] == str(town.grid1)
    # An unassigned report of the village: either grid leader may take it into their own grid.
    fresh = report()
    assert assign(client, fresh, town.leader1, town.worker2).status_code == 200


def test_only_admins_the_departments_staff_and_the_villages_area_leader_update_a_ledger_entry(
    client, db, town, report, person
):
    issue_id = report()
    assert assign(client, issue_id, town.admin, town.worker1).status_code == 200
    county = post(
        client,
        f"/api/v1/issues/{issue_id}/escalate",
        town.admin,
        {
            "to_level": "county",
            "reason": "主管道老化，需县水利局更换",
            "department": str(town.department),
            "admin_override": True,
        },
    )
    assert county.status_code == 200, county.json
    entry = client.get("/api/v1/ledger", headers=town.admin.headers).json["items"][0]
    path = f"/api/v1/ledger/{entry['id']}/progress"
    stranger = person("area_leader", name="包片领导钱")
    solved = post(client, path, stranger, {"text": "已解决。", "status": "solved"})
    assert solved.status_code == 403
    assert solved.json["error"]["code"] == "not_your_ledger_item"
    assert client.get("/api/v1/ledger", headers=stranger.headers).json["items"] == []
    export = client.get("/api/v1/ledger/export?format=csv", headers=stranger.headers)
    assert export.status_code == 200 and entry["ledger_no"] not in export.data.decode()
    ours = client.get("/api/v1/ledger/export?format=csv", headers=town.area_leader.headers)
    assert entry["ledger_no"] in ours.data.decode()
    progress = post(client, path, town.area_leader, {"text": "已协调县水利局。"})
    assert progress.status_code == 201, progress.json
    assert client.get("/api/v1/ledger", headers=town.area_leader.headers).json["items"]

    # The department's own staff record progress too; another department's staff do not.
    water = person("department_staff", name="水利局孙")
    other = person("department_staff", name="供电公司李")
    with db.transaction() as session:
        session.add(Department(id=(power := uuid.uuid4()), code="power", name="县供电公司"))
        session.flush()
        session.add_all(
            [
                DepartmentMember(department_id=town.department, user_id=water.id),
                DepartmentMember(department_id=power, user_id=other.id),
            ]
        )
    assert post(client, path, other, {"text": "不归我们管。"}).status_code == 403
    assert client.get("/api/v1/ledger", headers=other.headers).json["items"] == []
    assert post(client, path, water, {"text": "已派人勘察。"}).status_code == 201
    assert client.get("/api/v1/ledger", headers=water.headers).json["items"]


def test_the_staff_list_is_paged_lists_no_residents_and_shows_phones_to_admins_only(
    client, db, town
):
    with db.transaction() as session:
        services.upsert_staff(
            session,
            {
                "user_id": town.worker1.id,
                "name": "网格员刘",
                "roles": ["grid_worker"],
                "phone": "13800000001",
            },
        )
    seen: list[dict] = []
    cursor = None
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/api/v1/staff{query}", headers=town.admin.headers)
        assert page.status_code == 200, page.json
        seen += page.json["items"]
        cursor = page.json["next_cursor"]
        if not cursor:
            break
    ids = [s["id"] for s in seen]
    assert len(ids) == len(set(ids))
    assert str(town.resident.id) not in ids
    assert str(town.worker1.id) in ids and len(ids) == 9  # every staff member of the town
    assert next(s for s in seen if s["id"] == str(town.worker1.id))["phone"] == "13800000001"

    as_leader = client.get("/api/v1/staff?role=grid_worker", headers=town.leader1.headers).json
    assert {s["name"] for s in as_leader["items"]} == {"网格员刘", "网格员陈", "网格员周"}
    assert all(s["phone"] is None for s in as_leader["items"])
    residents = client.get("/api/v1/staff?role=resident", headers=town.admin.headers)
    assert residents.status_code == 422


def _closed_with_callback_due(client, db, town, report, **kw) -> uuid.UUID:
    issue_id = report(**kw)
    worker = town.worker1 if kw.get("village_id", town.village1) == town.village1 else town.worker3
    assign(client, issue_id, town.admin, worker)
    for rating in ("unsatisfied", "satisfied"):
        post(client, f"/api/v1/issues/{issue_id}/start", worker)
        post(client, f"/api/v1/issues/{issue_id}/resolve", worker, {"note": "已处理。"})
        with db.transaction() as session:
            data = {"issue_id": str(issue_id), "rating": rating}
            handle_issue_rated(session, envelope("issue.rated", data))
    return issue_id


def test_a_supervisor_filters_callbacks_by_area_and_village_and_reads_the_results(
    client, db, town, report
):
    ours = _closed_with_callback_due(client, db, town, report)
    theirs = _closed_with_callback_due(client, db, town, report, village_id=town.village2)
    headers = town.supervisor.headers

    def pending(query: str = "") -> set[str]:
        answer = client.get(f"/api/v1/callbacks/pending{query}", headers=headers)
        assert answer.status_code == 200, answer.json
        return {i["id"] for i in answer.json["items"]}

    assert pending() == {str(ours), str(theirs)}
    assert pending(f"?area_leader_id={town.area_leader.id}") == {str(ours)}
    assert pending(f"?village_id={town.village2}") == {str(theirs)}

    body = {"method": "phone", "lawful": True, "implemented": True, "accepted": True}
    assert (
        post(client, f"/api/v1/issues/{ours}/callbacks", town.supervisor, body).status_code == 201
    )
    failed = {**body, "accepted": False, "notes": "群众仍不认可。"}
    assert (
        post(client, f"/api/v1/issues/{theirs}/callbacks", town.supervisor, failed).status_code
        == 201
    )
    assert pending() == set()

    results = client.get("/api/v1/callbacks", headers=headers)
    assert results.status_code == 200, results.json
    assert [r["issue_id"] for r in results.json["items"]] == [str(theirs), str(ours)]
    first = results.json["items"][0]
    assert first["village_name"] == "王营村" and first["passed"] is False
    assert first["supervisor_name"] == "督导张" and first["recorded_at"].endswith("+08:00")
    in_area = client.get(f"/api/v1/callbacks?area_leader_id={town.area_leader.id}", headers=headers)
    assert [r["issue_id"] for r in in_area.json["items"]] == [str(ours)]
    failed_only = client.get("/api/v1/callbacks?passed=false", headers=headers)
    assert [r["issue_id"] for r in failed_only.json["items"]] == [str(theirs)]
    for who in (town.area_leader, town.worker1):
        assert client.get("/api/v1/callbacks", headers=who.headers).status_code == 403


def test_an_assignment_takes_the_assignees_grid_in_the_items_village_then_one_they_lead(
    client, db, town, report, grid_b
):
    """A worker in two villages' grids works each village's items in that village's grid; a
    leader who also sits in another grid of the same village works there as its leader."""
    grid_b_id, leader_b, _ = grid_b
    with db.transaction() as session:
        # worker3 (village 2's grid) also joins village 1's first grid; leader_b (who leads
        # grid B in village 1) also joins village 1's first grid and village 2's grid.
        session.add_all(
            [
                GridMember(grid_id=town.grid1, user_id=town.worker3.id),
                GridMember(grid_id=town.grid1, user_id=leader_b.id),
                GridMember(grid_id=town.grid2, user_id=leader_b.id),
            ]
        )
    cases = [
        (town.village1, town.worker3, town.grid1),
        (town.village2, town.worker3, town.grid2),
        (town.village1, leader_b, grid_b_id),  # leads B, only a member of the first grid
        (town.village2, leader_b, town.grid2),  # the item's village wins over leading
    ]
    for village, assignee, grid in cases:
        issue_id = report(village_id=village)
        answer = assign(client, issue_id, town.admin, assignee)
        assert answer.status_code == 200, answer.json
        assert answer.json["grid_id"] == str(grid), (assignee.name, village)
