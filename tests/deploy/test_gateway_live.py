"""Both gateways in front of the real intake (gunicorn web on a fresh PostgreSQL database, the
e2e harness): a staff login, a resident's report and reading it back, all through the gateway,
with the client's ``X-Request-ID`` as the correlation id in intake's answer and in the event it
wrote to its outbox.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.deploy.conftest import nginx_config, running_nginx, running_werkzeug_gateway
from tests.e2e.harness import Harness, ServiceSpec

INTAKE = ServiceSpec(
    "intake",
    processes=("web",),
    env={"WECHAT_MODE": "dev", "DEMO_DATA": "true", "PASSWORD_MIN_LENGTH": "6"},
)


@pytest.fixture(scope="module")
def intake(tmp_path_factory, rabbit_server, migrated_database, jwt_keys) -> Iterator[Harness]:
    """intake's web process, with the demo villages and staff (``seed-demo``)."""
    system = Harness(
        tmp_path_factory.mktemp("gateway-live"),
        lambda service: migrated_database(service, prefix="gw_live"),
        rabbit_server.create_vhost("gateway"),
        jwt_keys,
        specs=(INTAKE,),
    )
    try:
        system.command("intake", "seed-demo")
        system.start_all()
        yield system
    finally:
        system.stop_all()


@pytest.fixture(scope="module", params=["nginx", "werkzeug"])
def gateway(request, intake: Harness, table, tmp_path_factory) -> Iterator[str]:
    """A gateway of each kind; every upstream but intake points at a port nobody listens on."""
    folder = tmp_path_factory.mktemp(f"live-{request.param}")
    address = intake.url("intake").removeprefix("http://")
    addresses = {name: address if name == "intake" else "127.0.0.1:9" for name in table.upstreams}
    if request.param == "nginx":
        conf, port = nginx_config(folder, table, addresses)
        with running_nginx(conf, port) as url:
            yield url
    else:
        targets = {name: f"http://{a}" for name, a in addresses.items()}
        with running_werkzeug_gateway(targets, folder) as url:
            yield url


def test_login_report_and_read_back_through_the_gateway(gateway, intake: Harness):
    staff = requests.post(
        gateway + "/api/v1/auth/login",
        json={"username": "admin", "password": "demo365"},
        timeout=15,
    )
    assert staff.status_code == 200, staff.text
    assert staff.json()["access_token"]

    login = requests.post(
        gateway + "/api/v1/auth/wechat", json={"code": f"gw-{uuid.uuid4().hex[:8]}"}, timeout=15
    )
    assert login.status_code == 200, login.text
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

    villages = requests.get(gateway + "/api/v1/villages", timeout=15)
    assert villages.status_code == 200, villages.text
    body = villages.json()
    village_id = (body["items"] if isinstance(body, dict) else body)[0]["id"]

    request_id = str(uuid.uuid4())
    created = requests.post(
        gateway + "/api/v1/issues",
        json={
            "category": "road_traffic",
            "description": "村口的路灯坏了，晚上看不见路。",
            "village_id": village_id,
            "address": "村口",
        },
        headers={**headers, "X-Request-ID": request_id, "Idempotency-Key": str(uuid.uuid4())},
        timeout=15,
    )
    assert created.status_code == 201, created.text
    assert created.headers["X-Request-ID"] == request_id
    assert created.headers["X-Correlation-ID"] == request_id  # intake's own echo
    issue_id = created.json()["id"]

    read = requests.get(gateway + f"/api/v1/issues/{issue_id}", headers=headers, timeout=15)
    assert read.status_code == 200, read.text
    assert read.json()["description"] == "村口的路灯坏了，晚上看不见路。"
    mine = requests.get(gateway + "/api/v1/issues/mine", headers=headers, timeout=15)
    assert issue_id in json.dumps(mine.json())

    # The event intake wrote carries the client's request id as its correlation id.
    envelope = intake.scalar(
        "intake",
        "SELECT envelope::text FROM outbox WHERE event_type = 'issue.reported' "
        "AND envelope->'data'->>'issue_id' = :issue_id",
        issue_id=issue_id,
    )
    assert json.loads(envelope)["correlation_id"] == request_id


def test_intakes_internal_paths_stay_internal_behind_the_gateway(gateway, intake: Harness):
    assert requests.get(intake.url("intake") + "/metrics", timeout=10).status_code == 200
    for path in ("/metrics", "/openapi.json", "/docs", "/readyz", "/svc/intake/metrics"):
        response = requests.get(gateway + path, timeout=10)
        assert response.status_code == 404, path
        assert response.json()["error"]["message"] == "未找到该内容。"
    # intake's own 404 (JSON, Chinese) passes through unchanged.
    missing = requests.get(gateway + f"/api/v1/media/{uuid.uuid4()}", timeout=10)
    assert missing.status_code in (401, 404)
    assert missing.json()["error"]["message"]
