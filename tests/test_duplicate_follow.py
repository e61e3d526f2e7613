"""A duplicate report, across the real broker: two residents report the same burst pipe through
intake; dispatch (its real worker) shows the admin the likely duplicate; the admin rejects the
second as a duplicate of the first; the second resident then follows the first report's progress
in intake, without seeing anything of its reporter."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from dispatch import services as dispatch_services
from dispatch.app import create_app as create_dispatch
from dispatch.handlers import SUBSCRIPTIONS as DISPATCH_SUBSCRIPTIONS
from dispatch.handlers import use_settings
from dispatch.models import Grid, GridMember, Issue
from dispatch.models import Village as DispatchVillage
from dispatch.settings import DispatchSettings
from intake.models import User, Village
from shared.testing import wait_for
from shared.worker import declare_queues, run_worker

VILLAGE = uuid.UUID("9d709f5c-218e-58c0-83e0-1db6b1b57b8e")
ORIGINAL_TEXT = "村东头自来水管破裂，已经漏水两天了，张大爷家门口全是水。"
ORIGINAL_ADDRESS = "沙口集村东街 12 号张大爷家"


@pytest.fixture
def dispatch(intake, fresh_database, amqp_url, jwt_keys) -> Iterator[dict]:
    """dispatch's web app and its worker (consumer and relay) on intake's vhost, queues bound
    before anyone reports."""
    settings = DispatchSettings(
        app_env="test",
        database_url=fresh_database("dispatch"),
        rabbitmq_url=amqp_url,
        jwt_public_key_file=jwt_keys[1],
        log_format="text",
        relay_poll_seconds=0.05,
        callback_sample_share=0.0,
    )
    use_settings(settings)
    app = create_dispatch(settings)
    db = app.extensions["db"]
    declare_queues(settings, db, DISPATCH_SUBSCRIPTIONS)
    stop = threading.Event()
    worker = threading.Thread(
        target=run_worker, args=(settings, db, DISPATCH_SUBSCRIPTIONS), kwargs={"stop": stop}
    )
    worker.start()
    yield {"app": app, "client": app.test_client(), "db": db}
    stop.set()
    worker.join(timeout=30)
    use_settings(None)
    db.dispose()


def _person(intake, dispatch, roles: tuple[str, ...], name: str, **user) -> tuple[uuid.UUID, dict]:
    """Someone both services know, with a signed token."""
    user_id = uuid.uuid4()
    with intake["db"].transaction() as session:
        session.add(User(id=user_id, name=name, roles=list(roles), **user))
    if set(roles) - {"resident"}:
        with dispatch["db"].transaction() as session:
            dispatch_services.upsert_staff(
                session, {"user_id": user_id, "name": name, "roles": list(roles), "active": True}
            )
    token, _ = intake["issuer"].issue(user_id, roles, name)
    return user_id, {"Authorization": f"Bearer {token}"}


def test_a_resident_follows_the_original_of_their_duplicate_report_without_its_reporters_data(
    intake, dispatch
):
    with intake["db"].transaction() as session:
        session.add(Village(id=VILLAGE, name="沙口集村"))
    first_id, first = _person(intake, dispatch, ("resident",), "张大爷", openid="o-first")
    _, second = _person(intake, dispatch, ("resident",), "李大娘", openid="o-second")
    _, admin = _person(intake, dispatch, ("admin",), "乡管理员", username="admin01")
    worker_id, worker = _person(intake, dispatch, ("grid_worker",), "王网格", username="w01")
    grid_id = uuid.uuid4()
    with dispatch["db"].transaction() as session:
        session.add(DispatchVillage(id=VILLAGE, code="V01", name="沙口集村"))
        session.flush()
        session.add(Grid(id=grid_id, village_id=VILLAGE, name="第一网格"))
        session.flush()
        session.add(GridMember(grid_id=grid_id, user_id=worker_id))

    client, board = intake["client"], dispatch["client"]

    def report(headers, description, address, lat) -> dict:
        body = {
            "category": "water_power",
            "description": description,
            "village_id": str(VILLAGE),
            "address": address,
            "lat": lat,
            "lon": 115.1,
        }
        answer = client.post("/api/v1/issues", json=body, headers=headers)
        assert answer.status_code == 201, answer.json
        return answer.json

    original = report(first, ORIGINAL_TEXT, ORIGINAL_ADDRESS, 36.2)
    copy = report(second, "东街水管爆了，一直在漏水。", "东街路口", 36.2003)

    def known_to_dispatch() -> bool:
        with dispatch["db"].transaction() as session:
            return session.scalar(sa.select(sa.func.count()).select_from(Issue)) == 2

    wait_for(known_to_dispatch, timeout=20)

    # The admin's queue shows the likely duplicate, about 33 m away.
    items = board.get("/api/v1/queue", headers=admin).json["items"]
    copy_item = next(i for i in items if i["id"] == copy["id"])
    [likely] = copy_item["possible_duplicates"]
    assert likely["id"] == original["id"] and likely["ticket_no"] == original["ticket_no"]
    assert 30 <= likely["distance_m"] <= 36

    assigned = board.post(
        f"/api/v1/issues/{original['id']}/assign",
        json={"assignee_id": str(worker_id), "difficulty": 2},
        headers=admin,
    )
    assert assigned.status_code == 200, assigned.json
    started = board.post(f"/api/v1/issues/{original['id']}/start", json={}, headers=worker)
    assert started.status_code == 200, started.json
    rejected = board.post(
        f"/api/v1/issues/{copy['id']}/reject",
        json={"reason": "与他人反映的是同一处漏水，已在办理", "duplicate_of": original["id"]},
        headers=admin,
    )
    assert rejected.status_code == 200, rejected.json

    def view() -> dict:
        answer = client.get(f"/api/v1/issues/{copy['id']}", headers=second)
        assert answer.status_code == 200, answer.json
        return answer.json

    wait_for(lambda: view()["status"] == "rejected", timeout=20)
    wait_for(lambda: view()["duplicate_of"]["status"] == "in_progress", timeout=20)
    mine = view()
    assert mine["reject_reason"] == "与他人反映的是同一处漏水，已在办理"
    assert any(original["ticket_no"] in step["title"] for step in mine["timeline"])
    followed = mine["duplicate_of"]
    assert followed["ticket_no"] == original["ticket_no"]
    assert followed["status_label"] == "办理中" and followed["category_label"] == "用水用电"
    assert followed["handler_name"] == "王网格"
    titles = [step["title"] for step in followed["timeline"]]
    assert titles == ["已受理", "已交办给网格员王网格", "网格员已开始办理"]

    # The work goes on; the second resident sees it through their own report.
    resolved = board.post(
        f"/api/v1/issues/{original['id']}/resolve",
        json={"note": "已为张大爷家门口更换水管。"},
        headers=worker,
    )
    assert resolved.status_code == 200, resolved.json
    wait_for(lambda: view()["duplicate_of"]["status"] == "resolved", timeout=20)
    rated = client.post(
        f"/api/v1/issues/{original['id']}/rating", json={"rating": "satisfied"}, headers=first
    )
    assert rated.status_code == 201, rated.json
    wait_for(lambda: view()["duplicate_of"]["status"] == "closed", timeout=20)
    followed = view()["duplicate_of"]
    assert [s["title"] for s in followed["timeline"]][-2:] == ["已办结", "事项已关闭"]

    # Nothing of the first resident: not their words, place, name, id, rating or the notes.
    text = str(followed)
    for private in (
        ORIGINAL_TEXT,
        ORIGINAL_ADDRESS,
        "张大爷",
        str(first_id),
        original["id"],
        "满意",
    ):
        assert private not in text, private
    assert not {"description", "address", "lat", "lon", "photos", "rating", "reporter_id"} & set(
        followed
    )
    assert all(set(step) == {"title", "occurred_at"} for step in followed["timeline"])
    # ... and the original itself stays the first resident's.
    assert client.get(f"/api/v1/issues/{original['id']}", headers=second).status_code == 404
