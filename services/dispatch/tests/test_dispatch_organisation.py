"""The organisation admin APIs: villages, grids and members, area leaders, departments, staff."""

from __future__ import annotations

import uuid

from dispatch_helpers import outbox


def test_villages_are_created_changed_and_announced(client, db, town):
    village_id = uuid.uuid4()
    body = {"id": str(village_id), "code": "V03", "name": "西沙口集村"}
    created = client.post("/api/v1/villages", json=body, headers=town.admin.headers)
    assert created.status_code == 201 and created.json["id"] == str(village_id)
    again = client.post("/api/v1/villages", json=body, headers=town.admin.headers)
    assert again.status_code == 409
    same_name = client.post(
        "/api/v1/villages", json={"name": "西沙口集村"}, headers=town.admin.headers
    )
    assert same_name.status_code == 409 and "已存在" in same_name.json["error"]["message"]
    changed = client.patch(
        f"/api/v1/villages/{village_id}",
        json={"area_leader_id": str(town.area_leader.id)},
        headers=town.admin.headers,
    )
    assert changed.status_code == 200
    unchanged = client.patch(
        f"/api/v1/villages/{village_id}", json={"name": "西沙口集村"}, headers=town.admin.headers
    )
    assert unchanged.status_code == 200
    events = [e["data"] for e in outbox(db, "village.upserted")]
    assert [e["area_leader_id"] for e in events] == [None, str(town.area_leader.id)]
    names = [v["name"] for v in client.get("/api/v1/villages", headers=town.worker1.headers).json]
    assert names == ["沙口集村", "王营村", "西沙口集村"]
    worker = client.post("/api/v1/villages", json={"name": "x"}, headers=town.worker1.headers)
    assert worker.status_code == 403
    missing = client.patch(
        f"/api/v1/villages/{uuid.uuid4()}", json={"name": "无"}, headers=town.admin.headers
    )
    assert missing.status_code == 404


def test_grids_and_their_members(client, town, person):
    newcomer = person("grid_worker", name="网格员新")
    created = client.post(
        "/api/v1/grids",
        json={
            "village_id": str(town.village2),
            "name": "第二网格",
            "code": "G-V02-2",
            "leader_id": str(town.leader2.id),
            "member_ids": [str(town.worker3.id)],
        },
        headers=town.admin.headers,
    )
    assert created.status_code == 201, created.json
    grid_id = created.json["id"]
    assert created.json["member_ids"] == [str(town.worker3.id)]
    headers = town.admin.headers
    added = client.post(
        f"/api/v1/grids/{grid_id}/members", json={"user_id": str(newcomer.id)}, headers=headers
    )
    assert added.json["member_ids"] == [str(town.worker3.id), str(newcomer.id)]
    removed = client.delete(f"/api/v1/grids/{grid_id}/members/{town.worker3.id}", headers=headers)
    assert removed.json["member_ids"] == [str(newcomer.id)]
    replaced = client.put(
        f"/api/v1/grids/{grid_id}/members",
        json={"user_ids": [str(town.worker3.id), str(town.worker3.id)]},
        headers=headers,
    )
    assert replaced.status_code == 422
    renamed = client.patch(f"/api/v1/grids/{grid_id}", json={"name": "第一网格"}, headers=headers)
    assert renamed.status_code == 409
    unchanged = client.patch(f"/api/v1/grids/{grid_id}", json={}, headers=headers)
    assert unchanged.status_code == 200, "found by schemathesis: members were lazy-loaded late"
    assert str(newcomer.id) in unchanged.json["member_ids"]
    listed = client.get(f"/api/v1/grids?village_id={town.village2}", headers=headers).json
    assert sorted(g["name"] for g in listed) == ["第一网格", "第二网格"]
    bad_village = client.post(
        "/api/v1/grids", json={"village_id": str(uuid.uuid4()), "name": "x"}, headers=headers
    )
    assert bad_village.status_code == 404


def test_area_leaders_take_a_set_of_villages(client, db, town):
    headers = town.admin.headers
    answer = client.put(
        f"/api/v1/area-leaders/{town.area_leader.id}",
        json={"village_ids": [str(town.village2)]},
        headers=headers,
    )
    assert answer.status_code == 200, answer.json
    assert [v["name"] for v in answer.json["villages"]] == ["王营村"]
    leaders = client.get("/api/v1/area-leaders", headers=headers).json
    assert [(a["name"], [v["name"] for v in a["villages"]]) for a in leaders] == [
        ("包片领导赵", ["王营村"])
    ]
    # village1 lost its leader, village2 gained one: both announced.
    changed = {e["data"]["name"]: e["data"]["area_leader_id"] for e in outbox(db)}
    assert changed == {"沙口集村": None, "王营村": str(town.area_leader.id)}
    unknown = client.put(
        f"/api/v1/area-leaders/{town.area_leader.id}",
        json={"village_ids": [str(uuid.uuid4())]},
        headers=headers,
    )
    assert unknown.status_code == 422


def test_departments_and_staff(client, town):
    headers = town.admin.headers
    created = client.post(
        "/api/v1/departments", json={"code": "power", "name": "县供电公司"}, headers=headers
    )
    assert created.status_code == 201
    dup = client.post(
        "/api/v1/departments", json={"code": "power2", "name": "县供电公司"}, headers=headers
    )
    assert dup.status_code == 409
    off = client.patch(
        f"/api/v1/departments/{created.json['id']}", json={"active": False}, headers=headers
    )
    assert off.status_code == 200 and off.json["active"] is False
    names = [d["name"] for d in client.get("/api/v1/departments", headers=headers).json]
    assert names == ["县供电公司", "县水利局"]
    workers = client.get("/api/v1/staff?role=grid_worker", headers=headers).json["items"]
    assert {w["name"] for w in workers} == {"网格员刘", "网格员陈", "网格员周"}
