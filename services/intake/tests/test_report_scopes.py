"""Who reads which report and photo in intake (issue 7, access 5), and that a resolution attaches
only the resolver's own photos (access 8): HTTP and the real handlers on real PostgreSQL."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from PIL import Image

from intake.handlers import SUBSCRIPTIONS
from intake.models import Media, Village
from shared.events import make_envelope, parse_envelope

VILLAGE_ID = uuid.UUID("5a3c0000-0000-4000-8000-000000000001")  # the `village` fixture's id
OTHER_VILLAGE_ID = uuid.UUID("5a3c0000-0000-4000-8000-000000000002")


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (30, 120, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def _upload(client, headers) -> str:
    answer = client.post(
        "/api/v1/media",
        data={"file": (io.BytesIO(_jpeg()), "p.jpg")},
        headers=headers,
        content_type="multipart/form-data",
    )
    assert answer.status_code == 201, answer.json
    return answer.json["id"]


def _report(client, headers, **extra: Any) -> str:
    body = {
        "category": "water_power",
        "description": "村东头的自来水管破了，一直在漏水。",
        "village_id": str(VILLAGE_ID),
        **extra,
    }
    answer = client.post("/api/v1/issues", json=body, headers=headers)
    assert answer.status_code == 201, answer.json
    return answer.json["id"]


def _deliver(db, event_type: str, data: dict[str, Any]) -> None:
    envelope = make_envelope(event_type, data, producer="dispatch")
    with db.transaction() as session:
        SUBSCRIPTIONS[event_type](session, parse_envelope(envelope))


def _status(client, issue_id: str, headers) -> int:
    return client.get(f"/api/v1/issues/{issue_id}", headers=headers).status_code


def _assigned(db, issue_id: str, assignee, grid_leader) -> None:
    _deliver(
        db,
        "issue.assigned",
        {
            "issue_id": issue_id,
            "assignee_id": str(assignee.id),
            "assignee_name": assignee.name,
            "grid_leader_id": str(grid_leader.id),
            "due_at": datetime.now(UTC).isoformat(),
        },
    )


def test_a_publicist_reads_no_report_and_none_of_its_photos(client, village, make_user):
    _, alice = make_user()
    _, publicist = make_user(roles=["publicist"], name="宣传员冯")
    photo_id = _upload(client, alice)
    issue_id = _report(client, alice, photo_ids=[photo_id])
    assert _status(client, issue_id, publicist) == 404
    assert client.get(f"/api/v1/media/{photo_id}", headers=publicist).status_code == 404
    assert client.get(f"/api/v1/media/{photo_id}?size=thumb", headers=publicist).status_code == 404


def test_grid_staff_read_the_waiting_reports_of_their_village_and_then_only_their_work(
    client, db, village, make_user
):
    _, alice = make_user()
    worker, worker_headers = make_user(
        roles=["grid_worker"], name="网格员刘", village_id=VILLAGE_ID
    )
    _, neighbour = make_user(roles=["grid_worker"], name="网格员陈", village_id=VILLAGE_ID)
    _, elsewhere = make_user(roles=["grid_worker"], name="网格员周", village_id=OTHER_VILLAGE_ID)
    leader, leader_headers = make_user(roles=["grid_leader"], name="网格长王")
    photo_id = _upload(client, alice)
    issue_id = _report(client, alice, photo_ids=[photo_id])

    # Not yet assigned: the grid staff of the village may look (read-only), nobody else.
    assert _status(client, issue_id, worker_headers) == 200
    assert _status(client, issue_id, neighbour) == 200
    assert _status(client, issue_id, elsewhere) == 404
    assert client.get(f"/api/v1/media/{photo_id}", headers=elsewhere).status_code == 404

    _assigned(db, issue_id, worker, leader)
    assert _status(client, issue_id, worker_headers) == 200  # their task
    assert _status(client, issue_id, leader_headers) == 200  # the leader of its grid
    assert client.get(f"/api/v1/media/{photo_id}", headers=leader_headers).status_code == 200
    assert _status(client, issue_id, neighbour) == 404  # assigned: no longer theirs to see
    assert client.get(f"/api/v1/media/{photo_id}", headers=neighbour).status_code == 404


def test_an_area_leader_reads_the_reports_of_their_villages_and_admins_and_supervisors_all(
    client, db, village, make_user
):
    _, alice = make_user()
    leader, leader_headers = make_user(roles=["area_leader"], name="包片领导赵")
    _, stranger = make_user(roles=["area_leader"], name="包片领导钱")
    _, admin = make_user(roles=["admin"], name="管理员")
    _, supervisor = make_user(roles=["supervisor"], name="督导张")
    with db.transaction() as session:
        session.get(Village, VILLAGE_ID).area_leader_id = leader.id
    issue_id = _report(client, alice)
    assert _status(client, issue_id, leader_headers) == 200
    assert _status(client, issue_id, stranger) == 404
    assert _status(client, issue_id, admin) == 200
    assert _status(client, issue_id, supervisor) == 200


def test_a_resolution_attaches_only_the_resolvers_photos_and_a_foreign_id_is_not_shown(
    client, db, village, make_user, caplog
):
    _, alice = make_user(name="李四")
    _, bob = make_user(name="王五")
    worker, worker_headers = make_user(
        roles=["grid_worker"], name="网格员刘", village_id=VILLAGE_ID
    )
    leader, _ = make_user(roles=["grid_leader"], name="网格长王")
    alices_photo = _upload(client, alice)  # never put in a report
    alices_report_photo = _upload(client, alice)
    alices_issue = _report(client, alice, photo_ids=[alices_report_photo])
    bobs_issue = _report(client, bob)
    result_photo = _upload(client, worker_headers)
    _assigned(db, bobs_issue, worker, leader)

    claimed = [alices_photo, alices_report_photo, result_photo, str(uuid.uuid4())]
    snapshot = {
        "state": "resolved",
        "level": "grid",
        "assignee_id": str(worker.id),
        "assignee_name": "网格员刘",
        "resolution_no": 1,
        "resolution_note": "已更换水管。",
        "resolution_photo_ids": claimed,
        "resolved_at": datetime.now(UTC).isoformat(),
    }
    _deliver(
        db,
        "issue.resolved",
        {
            "issue_id": bobs_issue,
            "assignee_id": str(worker.id),
            "resolver_id": str(worker.id),
            "note": "已更换水管。",
            "photo_ids": claimed,
            "resolved_at": datetime.now(UTC).isoformat(),
            "issue_version": 5,
            "snapshot": snapshot,
        },
    )
    assert "not attached" in caplog.text

    with db.transaction() as session:
        owners = dict(session.execute(sa.select(Media.id, Media.issue_id)).all())
    assert owners[uuid.UUID(alices_photo)] is None
    assert str(owners[uuid.UUID(alices_report_photo)]) == alices_issue
    assert str(owners[uuid.UUID(result_photo)]) == bobs_issue

    bobs_view = client.get(f"/api/v1/issues/{bobs_issue}", headers=bob).json
    assert [p["id"] for p in bobs_view["resolution_photos"]] == [result_photo]
    assert client.get(f"/api/v1/media/{result_photo}", headers=bob).status_code == 200
    for foreign in (alices_photo, alices_report_photo):
        assert client.get(f"/api/v1/media/{foreign}", headers=bob).status_code == 404
    assert client.get(f"/api/v1/media/{alices_photo}", headers=alice).status_code == 200
    alices_view = client.get(f"/api/v1/issues/{alices_issue}", headers=alice).json
    assert [p["id"] for p in alices_view["photos"]] == [alices_report_photo]


def test_an_older_resolution_without_resolver_id_attaches_only_the_assignees_photos(
    client, db, village, make_user
):
    _, bob = make_user(name="王五")
    _, alice = make_user(name="李四")
    worker, worker_headers = make_user(
        roles=["grid_worker"], name="网格员刘", village_id=VILLAGE_ID
    )
    bobs_issue = _report(client, bob)
    foreign = _upload(client, alice)
    own = _upload(client, worker_headers)
    _deliver(
        db,
        "issue.resolved",
        {
            "issue_id": bobs_issue,
            "assignee_id": str(worker.id),
            "note": "已处理。",
            "photo_ids": [foreign, own],
            "resolved_at": datetime.now(UTC).isoformat(),
        },
    )
    view = client.get(f"/api/v1/issues/{bobs_issue}", headers=bob).json
    assert [p["id"] for p in view["resolution_photos"]] == [own]
    assert client.get(f"/api/v1/media/{foreign}", headers=bob).status_code == 404


def _held_by(db, issue_id: str, version: int, holders: list, **snapshot: Any) -> None:
    """dispatch's step that leaves the item with ``holders`` (its snapshot's ``holder_ids``)."""
    _deliver(
        db,
        "issue.escalated",
        {
            "issue_id": issue_id,
            "issue_version": version,
            "from_level": "township",
            "to_level": "county",
            "reason": "村里和乡里解决不了",
            "snapshot": {
                "state": "assigned",
                "level": "county",
                "handler_name": "县水利局",
                "holder_ids": [str(h.id) for h in holders],
                **snapshot,
            },
        },
    )


def test_the_staff_of_the_department_holding_a_report_read_it_and_its_photos_while_they_hold_it(
    client, db, village, make_user
):
    """Referred to a county department, its members must see what the resident reported (and
    the photos); another department's members never, and they lose it once it moves on."""
    _, alice = make_user()
    water, water_headers = make_user(roles=["department_staff"], name="县水利局李")
    _, power_headers = make_user(roles=["department_staff"], name="县供电公司孙")
    photo_id = _upload(client, alice)
    issue_id = _report(client, alice, photo_ids=[photo_id])
    assert _status(client, issue_id, water_headers) == 404

    _held_by(db, issue_id, version=5, holders=[water])
    assert _status(client, issue_id, water_headers) == 200
    assert client.get(f"/api/v1/media/{photo_id}", headers=water_headers).status_code == 200
    assert _status(client, issue_id, power_headers) == 404
    assert client.get(f"/api/v1/media/{photo_id}", headers=power_headers).status_code == 404

    _held_by(db, issue_id, version=6, holders=[], state="closed", level="county")
    assert _status(client, issue_id, water_headers) == 404
