"""The demo township file and its loader, run over real HTTP against intake and dispatch (each on
its own PostgreSQL database, both workers on one broker vhost): it loads everything, and a
second run changes nothing."""

from __future__ import annotations

import importlib.util
import sys
import threading
import uuid
from pathlib import Path

import pytest
import yaml
from dispatch_helpers import settings_with
from werkzeug.serving import make_server

from dispatch.app import create_app
from dispatch.handlers import SUBSCRIPTIONS, use_settings
from shared.settings import PROJECT_ROOT
from shared.worker import declare_queues, run_worker

TOWNSHIP = PROJECT_ROOT / "deploy" / "demo" / "township.yaml"
ORIGINAL_VILLAGE_IDS = {
    "V01": "9d709f5c-218e-58c0-83e0-1db6b1b57b8e",
    "V13": "105fb1f2-6972-5b36-854b-bf8f3580c296",
    "V26": "62f9c764-3ccc-5c1b-9ae8-79cca5acd92d",
}


def _loader():
    spec = importlib.util.spec_from_file_location(
        "load_township", PROJECT_ROOT / "deploy" / "demo" / "load_township.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["load_township"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_township_file_has_the_real_townships_shape():
    data = yaml.safe_load(TOWNSHIP.read_text(encoding="utf-8"))
    villages = data["villages"]
    assert len(villages) == 26
    assert {v["code"]: v["id"] for v in villages if v["code"] in ORIGINAL_VILLAGE_IDS} == (
        ORIGINAL_VILLAGE_IDS
    )
    assert len(data["grids"]) == 40
    assert sum(len(g["workers"]) for g in data["grids"]) == 167
    assert len({g["leader"]["username"] for g in data["grids"]}) == 40
    codes = {v["code"] for v in villages}
    assert {g["village"] for g in data["grids"]} == codes  # every village has a grid
    covered = [code for leader in data["area_leaders"] for code in leader["villages"]]
    assert sorted(covered) == sorted(codes)  # each village has exactly one area leader
    assert {d["name"] for d in data["departments"]} >= {
        "县水利局",
        "县供电公司",
        "县交通运输局",
        "县卫生健康局",
        "县司法局",
        "县民政局",
    }
    assert [d["name"] for d in data["township_departments"]] == ["综治办", "农业办", "民政所"]
    people = _loader().accounts_of(data)
    assert len(people) == len({p.username for p in people}) == 2 + 6 + 4 + 40 + 167 + 3
    assert sum("department_staff" in p.roles for p in people) == 3
    assert all(len(str(uuid.UUID(g["id"]))) == 36 for g in data["grids"])


class Served:
    """A Flask app on a real local port, in a thread."""

    def __init__(self, app) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture
def system(database_url, fresh_database, amqp_url, jwt_keys, tmp_path):
    from intake import accounts
    from intake.app import create_app as create_intake
    from intake.handlers import SUBSCRIPTIONS as INTAKE_SUBSCRIPTIONS
    from intake.settings import IntakeSettings

    intake_settings = IntakeSettings(
        app_env="test",
        database_url=fresh_database("intake"),
        rabbitmq_url=amqp_url,
        jwt_private_key_file=jwt_keys[0],
        jwt_public_key_file=jwt_keys[1],
        wechat_mode="dev",
        media_dir=tmp_path / "media",
        log_format="text",
    )
    dispatch_settings = settings_with(
        database_url, jwt_keys, rabbitmq_url=amqp_url, relay_poll_seconds=0.05
    )
    use_settings(dispatch_settings)
    intake_app, dispatch_app = create_intake(intake_settings), create_app(dispatch_settings)
    intake_db, dispatch_db = intake_app.extensions["db"], dispatch_app.extensions["db"]
    with intake_db.transaction() as session:
        accounts.create_account(
            session, username="admin", name="管理员", roles=["admin"], password="demo-admin-365"
        )
    # Both services' queues bound before either publishes (as `make run` does with `declare`).
    declare_queues(dispatch_settings, dispatch_db, SUBSCRIPTIONS)
    declare_queues(intake_settings, intake_db, INTAKE_SUBSCRIPTIONS)
    stop = threading.Event()
    workers = [
        threading.Thread(
            target=run_worker,
            args=(dispatch_settings, dispatch_db, SUBSCRIPTIONS),
            kwargs={"stop": stop},
        ),
        threading.Thread(
            target=run_worker,
            args=(intake_settings, intake_db, INTAKE_SUBSCRIPTIONS),
            kwargs={"stop": stop},
        ),
    ]
    for worker in workers:
        worker.start()
    intake, dispatch = Served(intake_app), Served(dispatch_app)
    yield intake.url, dispatch.url, dispatch_app
    intake.close()
    dispatch.close()
    stop.set()
    for worker in workers:
        worker.join(timeout=30)
    use_settings(None)
    intake_db.dispose()
    dispatch_db.dispose()


def test_the_loader_builds_the_township_and_a_second_run_changes_nothing(system, issuer):
    intake_url, dispatch_url, dispatch_app = system
    loader = _loader()
    first = loader.load(
        TOWNSHIP, intake_url, dispatch_url, "admin", "demo-admin-365", wait_seconds=30
    )
    assert first.created == {"departments": 11, "villages": 26, "accounts": 222, "grids": 40}
    assert first.changed == {"area_leaders": 6}
    second = loader.load(TOWNSHIP, intake_url, dispatch_url, "admin", "demo-admin-365")
    assert second.nothing_changed, (second.created, second.changed)

    client = dispatch_app.test_client()
    token, _ = issuer.issue(uuid.uuid4(), ["admin"], "检查")
    headers = {"Authorization": f"Bearer {token}"}
    grids = client.get("/api/v1/grids", headers=headers).json
    assert len(grids) == 40 and sum(len(g["member_ids"]) for g in grids) == 167
    villages = client.get("/api/v1/villages", headers=headers).json
    assert len(villages) == 26 and all(v["area_leader_id"] for v in villages)
    township = client.get("/api/v1/departments?kind=township", headers=headers).json
    assert {d["name"] for d in township} == {"综治办", "农业办", "民政所"}
    assert all(len(d["member_ids"]) == 1 for d in township)
    assert Path(TOWNSHIP).exists()
