"""Object-level access across the running system: each object is refused to everyone but its
owner and the people whose work it is, over HTTP, with the real processes and events.

The route gates are tests/security/test_authorization_matrix.py; here the person passes the gate
and the object is not theirs. Two villages (A and B), each with its area leader, a grid with its
leader and worker; two county departments with one staff member each; two residents, two party
members, a supervisor and a publicist. The answers follow each service's design:

- intake (reports, photos) and dispatch, scoring, notify *reads* answer 404 to whoever may not
  see the object, as if it did not exist: nobody learns which ids are real;
- dispatch *writes* by staff who may not act on an item answer 403 with the reason (the item is
  theirs to see or not, the action is not theirs), as do feed deletes of a post every signed-in
  person reads anyway;
- anonymous callers get 401 everywhere; a role outside a route's gate gets 403.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
import requests
from PIL import Image

from shared.testing import wait_for
from tests.e2e.harness import PASSWORD, Api, Township, staff_login

# The whole system runs for these (tests/security/conftest.py): a minute to start on two cores.
pytestmark = pytest.mark.slow

TIMEOUT = 30


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, "JPEG")
    return buffer.getvalue()


@dataclass
class World:
    """Everyone (signed in at intake; ``on(service)`` elsewhere) and the objects under test."""

    township: Township
    people: dict[str, Api] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return self.township.harness.url(service)

    def ask(
        self, who: str | None, service: str, method: str, path: str, **kwargs
    ) -> requests.Response:
        """One call as ``who`` (None: anonymous), answered whatever its status."""
        token = self.people[who].token if who else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.request(
            method, self.url(service) + path, headers=headers, timeout=15, **kwargs
        )

    def everyone(self) -> list[str]:
        return sorted(self.people)


def answers(
    world: World,
    service: str,
    method: str,
    path: str,
    expected: dict[str | None, int],
    **kwargs,
) -> list[str]:
    """The calls whose status is not the expected one (empty: all as expected)."""
    wrong = []
    for who, status in expected.items():
        answer = world.ask(who, service, method, path, **kwargs)
        if answer.status_code != status:
            wrong.append(f"{who or 'anonymous'}: {method} {path} -> {answer.status_code}")
        elif status >= 400:
            message = answer.json()["error"]["message"]
            if not any("\u4e00" <= ch <= "\u9fff" for ch in message):
                wrong.append(f"{who or 'anonymous'}: {method} {path}: message {message!r}")
    return wrong


def split(
    world: World, allowed: Iterable[str], ok: int, refused: int, **others: int
) -> dict[str | None, int]:
    """``ok`` for the allowed, ``others[who]`` for some, ``refused`` for the rest; 401 if nobody."""
    allowed = set(allowed)
    table: dict[str | None, int] = {None: 401}
    for who in world.everyone():
        table[who] = ok if who in allowed else others.get(who, refused)
    return table


# Who is who, beyond the township: (key, username, name, role, village "a"/"b"/None).
STAFF = [
    ("worker_b", "worker-b", "孙建军", "grid_worker", "b"),
    ("leader_b", "leader-b", "周桂兰", "grid_leader", "b"),
    ("area_b", "area-b", "吴国强", "area_leader", "b"),
    ("supervisor", "supervisor", "郑督导", "supervisor", None),
    ("publicist", "publicist", "冯宣传", "publicist", None),
    ("party_1", "party-1", "陈党员", "party_member", "a"),
    ("party_2", "party-2", "褚党员", "party_member", "a"),
    ("dept_water", "dept-water", "卫水利", "department_staff", None),
    ("dept_power", "dept-power", "蒋供电", "department_staff", None),
]
# Roles that do not pass dispatch's gates (publicists and people outside the staff).
NOT_DISPATCH = ("publicist", "party_1", "party_2", "resident_a", "resident_b")


@pytest.fixture(scope="module")
def world(township: Township) -> World:
    """Village B with its staff, the departments, the residents and the objects, all made through
    the services' own HTTP routes, as people would."""
    harness = township.harness
    admin, admin_d = township.admin, township.dispatch(township.admin)
    intake_url = harness.url("intake")
    world = World(township)
    world.people.update(
        admin=township.admin,
        worker_a=township.worker,
        leader_a=township.grid_leader,
        area_a=township.area_leader,
    )

    village_b = admin_d.post("/api/v1/villages", {"name": "前营村-sec", "code": "V02"}, expect=201)
    wait_for(
        lambda: any(v["id"] == village_b["id"] for v in Api(intake_url).get("/api/v1/villages")),
        timeout=TIMEOUT,
    )
    villages = {"a": township.village_id, "b": village_b["id"], None: None}
    ids = {}
    for key, username, name, role, village in STAFF:
        body = {
            "username": f"sec-obj-{username}",
            "name": name,
            "roles": [role],
            "village_id": villages[village],
            "password": PASSWORD,
        }
        ids[key] = admin.post("/api/v1/accounts", body, expect=201)["id"]
    wanted = {v for k, v in ids.items() if k not in ("party_1", "party_2")}
    wait_for(lambda: wanted <= {s["id"] for s in admin_d.pages("/api/v1/staff")}, timeout=TIMEOUT)
    admin_d.patch(f"/api/v1/villages/{village_b['id']}", {"area_leader_id": ids["area_b"]})
    admin_d.post(
        "/api/v1/grids",
        {
            "village_id": village_b["id"],
            "name": "第二网格",
            "code": "G02",
            "leader_id": ids["leader_b"],
            "member_ids": [ids["worker_b"]],
        },
        expect=201,
    )
    water = admin_d.post(
        "/api/v1/departments",
        {
            "code": "sec-water",
            "name": "县水利局",
            "kind": "county",
            "member_ids": [ids["dept_water"]],
        },
        expect=201,
    )
    admin_d.post(
        "/api/v1/departments",
        {
            "code": "sec-power",
            "name": "县供电公司",
            "kind": "county",
            "member_ids": [ids["dept_power"]],
        },
        expect=201,
    )
    for key, username, *_ in STAFF:
        world.people[key] = staff_login(intake_url, f"sec-obj-{username}", PASSWORD)
    world.people["resident_a"] = township.resident("sec-obj-resident-a")
    world.people["resident_b"] = township.resident("sec-obj-resident-b")

    resident_a, resident_b = world.people["resident_a"], world.people["resident_b"]
    photo = resident_a.post(
        "/api/v1/media", files={"file": ("pipe.jpg", jpeg((200, 40, 40)), "image/jpeg")}, expect=201
    )
    loose = resident_a.post(
        "/api/v1/media", files={"file": ("mine.jpg", jpeg((40, 200, 40)), "image/jpeg")}, expect=201
    )

    def report(resident: Api, village: str, text: str, photo_ids: list[str]) -> str:
        body = {
            "category": "water_power",
            "description": text,
            "village_id": village,
            "address": "村委会东侧",
            "photo_ids": photo_ids,
        }
        return resident.post("/api/v1/issues", body, expect=201)["id"]

    world.ids.update(ids)
    world.ids["photo"], world.ids["loose_photo"] = photo["id"], loose["id"]
    world.ids["issue_a"] = report(
        resident_a, township.village_id, "门口自来水管冻裂，一直在漏水。", [photo["id"]]
    )
    world.ids["issue_b"] = report(resident_b, village_b["id"], "村西头路灯坏了三盏。", [])
    world.ids["issue_ledger"] = report(
        resident_a, township.village_id, "主管道老化，全村水压不足。", []
    )
    for issue in ("issue_a", "issue_b", "issue_ledger"):
        path = f"/api/v1/issues/{world.ids[issue]}"
        wait_for(lambda p=path: admin_d.get(p, expect=(200, 404)).get("id"), timeout=TIMEOUT)

    def assign(issue: str, worker: str) -> None:
        admin_d.post(
            f"/api/v1/issues/{world.ids[issue]}/assign",
            {"assignee_id": world.people[worker].user["id"], "difficulty": 3, "due_in_hours": 24},
        )

    assign("issue_a", "worker_a")
    assign("issue_b", "worker_b")
    assign("issue_ledger", "worker_a")
    admin_d.post(
        f"/api/v1/issues/{world.ids['issue_ledger']}/escalate",
        {
            "to_level": "county",
            "reason": "主管道需县水利局更换",
            "department": water["id"],
            "admin_override": True,
        },
    )
    ledger = admin_d.pages("/api/v1/ledger")
    world.ids["ledger_entry"] = next(
        e["id"] for e in ledger if e["issue_id"] == world.ids["issue_ledger"]
    )
    # The assignment has reached intake: its worker now reads the report there, and the
    # report's timeline shows it (the tests compare that timeline before and after).
    worker_a = world.people["worker_a"]
    wait_for(
        lambda: worker_a.get(f"/api/v1/issues/{world.ids['issue_a']}", expect=(200, 404)).get("id"),
        timeout=TIMEOUT,
    )
    wait_for(
        lambda: "issue.assigned"
        in {
            step["kind"]
            for step in resident_a.get(f"/api/v1/issues/{world.ids['issue_a']}")["timeline"]
        },
        timeout=TIMEOUT,
    )
    return world


READERS_OF_A = ("resident_a", "admin", "supervisor", "area_a", "worker_a", "leader_a")


def test_a_residents_report_is_not_found_for_anyone_but_its_reporter_and_its_staff(world):
    path = f"/api/v1/issues/{world.ids['issue_a']}"

    wrong = answers(world, "intake", "GET", path, split(world, READERS_OF_A, 200, 404))

    assert not wrong, "\n".join(wrong)
    mine = world.people["resident_b"].get("/api/v1/issues/mine")["items"]
    assert world.ids["issue_a"] not in {i["id"] for i in mine}


def test_another_resident_cannot_rate_urge_add_to_or_withdraw_a_report(world):
    """Each follow-up of resident A's report is "not found" for resident B, and changes nothing."""
    issue = world.ids["issue_a"]
    before = world.people["resident_a"].get(f"/api/v1/issues/{issue}")
    calls = [
        ("rating", {"rating": "unsatisfied", "comment": "不满意"}),
        ("urge", {"text": "请尽快处理"}),
        ("details", {"text": "补充一下情况", "photo_ids": []}),
        ("withdraw", {"reason": "不需要了"}),
    ]
    wrong = []
    for action, body in calls:
        path = f"/api/v1/issues/{issue}/{action}"
        for who in ("resident_b", "party_1", "publicist", "worker_b"):
            wrong += answers(world, "intake", "POST", path, {who: 404}, json=body)
        wrong += answers(world, "intake", "POST", path, {None: 401}, json=body)

    assert not wrong, "\n".join(wrong)
    after = world.people["resident_a"].get(f"/api/v1/issues/{issue}")
    assert after["timeline"] == before["timeline"] and after["status"] == before["status"]


def test_a_residents_photo_is_shown_only_to_whom_may_read_its_report(world):
    path = f"/api/v1/media/{world.ids['photo']}"
    expected = split(world, READERS_OF_A, 200, 404)

    wrong = answers(world, "intake", "GET", path, expected)
    wrong += answers(world, "intake", "GET", path, expected, params={"size": "thumb"})

    assert not wrong, "\n".join(wrong)
    shown = world.ask("resident_a", "intake", "GET", path)
    assert shown.headers["Content-Type"] == "image/jpeg"
    assert shown.headers["Cache-Control"].startswith("private")


def test_a_residents_photo_not_yet_on_a_report_is_shown_to_nobody_but_them(world):
    path = f"/api/v1/media/{world.ids['loose_photo']}"

    wrong = answers(world, "intake", "GET", path, split(world, ["resident_a"], 200, 404))

    assert not wrong, "\n".join(wrong)


def test_another_grids_issue_is_not_found_for_its_staff_in_dispatch(world):
    issue = world.ids["issue_a"]
    allowed = ("admin", "supervisor", "area_a", "worker_a", "leader_a")
    gate = dict.fromkeys(NOT_DISPATCH, 403)

    wrong = []
    for path in (f"/api/v1/issues/{issue}", f"/api/v1/issues/{issue}/history"):
        wrong += answers(world, "dispatch", "GET", path, split(world, allowed, 200, 404, **gate))

    assert not wrong, "\n".join(wrong)
    for who in ("worker_b", "leader_b", "area_b", "dept_water", "dept_power"):
        queue = world.people[who].on(world.url("dispatch")).pages("/api/v1/queue")
        assert issue not in {i["id"] for i in queue}, who
    leader_b = world.people["leader_b"].on(world.url("dispatch"))
    stolen = leader_b.post(
        f"/api/v1/issues/{issue}/assign",
        {
            "assignee_id": world.ids["worker_b"],
            "difficulty": 1,
            "due_in_hours": 24,
            "reassign": True,
        },
        expect=403,
    )
    assert stolen["error"]["code"] == "not_your_grid"


def test_a_workers_task_is_started_resolved_and_noted_by_nobody_else(world):
    """Worker B (and leader B, area leader B) are refused every step of worker A's task; worker A
    then starts it."""
    issue = world.ids["issue_a"]
    dispatch = world.url("dispatch")
    tasks_b = world.people["worker_b"].on(dispatch).pages("/api/v1/tasks/mine")
    assert issue not in {t["id"] for t in tasks_b}
    assert world.ids["issue_b"] in {t["id"] for t in tasks_b}
    steps = [
        ("start", {}),
        ("resolve", {"note": "已修好"}),
        ("notes", {"text": "我来看看"}),
        ("escalate", {"to_level": "township", "reason": "需要乡里协调"}),
    ]
    wrong = []
    for step, body in steps:
        path = f"/api/v1/issues/{issue}/{step}"
        for who in ("worker_b", "leader_b", "area_b"):
            answer = world.ask(who, "dispatch", "POST", path, json=body)
            if answer.status_code != 403 or answer.json()["error"]["code"] != "not_your_task":
                wrong.append(f"{who}: {step} -> {answer.status_code} {answer.text[:200]}")
        wrong += answers(world, "dispatch", "POST", path, {None: 401}, json=body)
    assert not wrong, "\n".join(wrong)

    worker_a = world.people["worker_a"].on(dispatch)
    assert worker_a.get(f"/api/v1/issues/{issue}")["state"] == "assigned"
    assert issue in {t["id"] for t in worker_a.pages("/api/v1/tasks/mine")}
    assert worker_a.post(f"/api/v1/issues/{issue}/start", {})["state"] == "in_progress"


def test_another_areas_ledger_item_is_refused_to_its_area_leader_and_other_departments(world):
    entry, issue = world.ids["ledger_entry"], world.ids["issue_ledger"]
    dispatch = world.url("dispatch")

    def listed(who: str) -> bool:
        items = world.people[who].on(dispatch).pages("/api/v1/ledger")
        return entry in {i["id"] for i in items}

    for who in ("admin", "supervisor", "area_a", "dept_water"):
        assert listed(who), who
    for who in ("area_b", "dept_power"):
        assert not listed(who), who
        export = world.ask(
            who, "dispatch", "GET", "/api/v1/ledger/export", params={"format": "csv"}
        )
        assert export.status_code == 200 and issue not in export.text
    path = f"/api/v1/ledger/{entry}/progress"
    gate = dict.fromkeys(
        ("supervisor", "worker_a", "worker_b", "leader_a", "leader_b", *NOT_DISPATCH), 403
    )
    expected = split(world, ("admin", "area_a", "dept_water"), 201, 403, **gate)
    wrong = answers(
        world, "dispatch", "POST", path, expected, json={"text": "已协调县水利局勘察。"}
    )
    assert not wrong, "\n".join(wrong)
    for who in ("area_b", "dept_power"):
        refused = world.ask(who, "dispatch", "POST", path, json={"text": "不归我管"})
        assert refused.json()["error"]["code"] == "not_your_ledger_item"
    ledger = world.people["admin"].on(dispatch).pages("/api/v1/ledger")
    progress = next(e for e in ledger if e["id"] == entry)["progress"]
    authors = {p["author_id"] for p in progress}
    assert authors == {world.people[w].user["id"] for w in ("admin", "area_a", "dept_water")}
    # The item itself: its department's staff read it in dispatch, the other department does not.
    readers = ("admin", "supervisor", "area_a", "dept_water", "worker_a", "leader_a")
    expected = split(world, readers, 200, 404, **dict.fromkeys(NOT_DISPATCH, 403))
    wrong = answers(world, "dispatch", "GET", f"/api/v1/issues/{issue}", expected)
    assert not wrong, "\n".join(wrong)


def test_the_department_holding_a_ledger_item_reads_its_report_in_intake_and_no_other_does(
    world,
):
    """Referred to the county water bureau, its staff need what the resident reported; the
    power company's staff (and the other village's people) still get "not found"."""
    path = f"/api/v1/issues/{world.ids['issue_ledger']}"
    water = world.people["dept_water"]
    wait_for(lambda: water.get(path, expect=(200, 404)).get("id"), timeout=TIMEOUT)
    readers = (*READERS_OF_A, "dept_water")

    wrong = answers(world, "intake", "GET", path, split(world, readers, 200, 404))

    assert not wrong, "\n".join(wrong)


def test_a_party_members_post_is_taken_down_by_nobody_but_its_author(world):
    feed = world.url("feed")
    post = (
        world.people["party_1"]
        .on(feed)
        .post("/api/v1/posts", {"text": "今天组织党员清扫村道。", "tag": "activity"}, expect=201)
    )
    path = f"/api/v1/posts/{post['id']}"
    others = [w for w in world.everyone() if w != "party_1"]

    wrong = answers(world, "feed", "DELETE", path, {None: 401, **dict.fromkeys(others, 403)})

    assert not wrong, "\n".join(wrong)
    assert world.ask("party_2", "feed", "DELETE", path).json()["error"]["code"] == "not_author"
    assert world.people["party_2"].on(feed).get(path)["text"] == "今天组织党员清扫村道。"
    assert world.ask("party_1", "feed", "DELETE", path).status_code == 204
    assert world.ask("party_2", "feed", "GET", path).status_code == 404


def test_a_users_inbox_is_read_by_nobody_else(world):
    """Worker A's message about the assignment: not in anyone else's inbox, not markable by them,
    and nobody's "read all" touches it."""
    inbox = world.people["worker_a"].on(world.url("notify"))
    issue = world.ids["issue_a"]

    def message() -> dict | None:
        items = inbox.get("/api/v1/notifications", params={"limit": 50})["items"]
        return next((n for n in items if n["link"] == {"type": "issue", "id": issue}), None)

    mine = wait_for(message, timeout=TIMEOUT)
    assert mine["read"] is False
    unread = inbox.get("/api/v1/notifications/unread-count")
    others = [w for w in world.everyone() if w != "worker_a"]
    for who in others:
        items = world.people[who].on(world.url("notify")).pages("/api/v1/notifications")
        assert mine["id"] not in {n["id"] for n in items}, who
        assert world.ask(who, "notify", "POST", "/api/v1/notifications/read-all").ok, who

    path = f"/api/v1/notifications/{mine['id']}/read"
    wrong = answers(world, "notify", "POST", path, {None: 401, **dict.fromkeys(others, 404)})

    assert not wrong, "\n".join(wrong)
    assert message()["read"] is False
    assert inbox.get("/api/v1/notifications/unread-count") == unread
    assert world.ask("worker_a", "notify", "POST", path).status_code == 200
    assert message()["read"] is True


def test_a_workers_points_are_shown_to_their_leaders_and_admins_only(world):
    worker = world.people["worker_a"].user["id"]
    path = f"/api/v1/workers/{worker}/points"
    leader = world.people["leader_a"].on(world.url("scoring"))
    # The assignment has told scoring who leads worker A's grid.
    wait_for(lambda: leader.get(path, expect=(200, 404)).get("items") is not None, timeout=TIMEOUT)
    gate = dict.fromkeys(
        ("supervisor", "publicist", "party_1", "party_2", "resident_a", "resident_b"), 403
    )
    gate.update(dict.fromkeys(("dept_water", "dept_power"), 403))
    allowed = ("admin", "worker_a", "leader_a", "area_a")

    wrong = answers(world, "scoring", "GET", path, split(world, allowed, 200, 404, **gate))

    assert not wrong, "\n".join(wrong)
