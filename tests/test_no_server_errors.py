"""Generated requests (schemathesis, from each service's own OpenAPI) never get a 5xx.

The apps run in-process on real PostgreSQL databases; the caller is an admin (every staff route
is reachable) or a resident (the report routes). Bad input must be a 4xx with a message.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from dispatch.app import create_app as create_dispatch
from dispatch.settings import DispatchSettings
from intake.app import create_app as create_intake
from intake.models import User, Village
from intake.settings import IntakeSettings
from notify.app import create_app as create_notify
from notify.settings import NotifySettings
from shared.fields import NOT_TEXT

EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


@pytest.fixture(scope="module")
def intake_app(migrated_database, rabbit_server, jwt_keys, tmp_path_factory) -> Iterator:
    private, public = jwt_keys
    app = create_intake(
        IntakeSettings(
            app_env="test",
            database_url=migrated_database("intake", prefix="intake_fuzz"),
            rabbitmq_url=rabbit_server.create_vhost("fuzz"),
            jwt_private_key_file=private,
            jwt_public_key_file=public,
            wechat_mode="dev",
            media_dir=tmp_path_factory.mktemp("media"),
            log_format="text",
            rate_limit_reports="100000 per hour",
            rate_limit_uploads="100000 per hour",
        )
    )
    with app.extensions["db"].transaction() as session:
        session.add(Village(id=uuid.uuid4(), name="沙口集村"))
        session.add(User(id=uuid.uuid4(), username="fuzz-admin", name="管理员", roles=["admin"]))
    yield app
    app.extensions["db"].dispose()


@pytest.fixture(scope="module")
def dispatch_app(migrated_database, rabbit_server, jwt_keys) -> Iterator:
    app = create_dispatch(
        DispatchSettings(
            app_env="test",
            database_url=migrated_database("dispatch", prefix="dispatch_fuzz"),
            rabbitmq_url=rabbit_server.create_vhost("fuzz"),
            jwt_public_key_file=jwt_keys[1],
            log_format="text",
        )
    )
    yield app
    app.extensions["db"].dispose()


@pytest.fixture(scope="module")
def notify_app(migrated_database, rabbit_server, jwt_keys) -> Iterator:
    app = create_notify(
        NotifySettings(
            app_env="test",
            database_url=migrated_database("notify", prefix="notify_fuzz"),
            rabbitmq_url=rabbit_server.create_vhost("fuzz"),
            jwt_public_key_file=jwt_keys[1],
            log_format="text",
        )
    )
    yield app
    app.extensions["db"].dispose()


@pytest.fixture(scope="module")
def sign(issuer, intake_app):
    """``sign(["admin"])``: headers with a token for a user holding those roles (one per set of
    roles, held by intake, which refuses tokens of accounts it does not hold)."""
    users: dict[tuple[str, ...], uuid.UUID] = {}

    def headers(roles: list[str]) -> dict[str, str]:
        key = tuple(sorted(roles))
        if key not in users:
            users[key] = uuid.uuid4()
            with intake_app.extensions["db"].transaction() as session:
                session.add(User(id=users[key], name="测试", roles=list(key)))
        token, _ = issuer.issue(users[key], roles, "测试")
        return {"Authorization": f"Bearer {token}"}

    return headers


@pytest.fixture(scope="module")
def intake_schema(intake_app):
    return schemathesis.openapi.from_wsgi("/openapi.json", intake_app)


@pytest.fixture(scope="module")
def dispatch_schema(dispatch_app):
    return schemathesis.openapi.from_wsgi("/openapi.json", dispatch_app)


@pytest.fixture(scope="module")
def notify_schema(notify_app):
    return schemathesis.openapi.from_wsgi("/openapi.json", notify_app)


intake_api = schemathesis.pytest.from_fixture("intake_schema")
notify_api = schemathesis.pytest.from_fixture("notify_schema")
dispatch_api = schemathesis.pytest.from_fixture("dispatch_schema")


@intake_api.parametrize()
@EXAMPLES
def test_intake_answers_generated_requests_without_a_server_error(case, sign):
    for roles in (["resident"], ["admin"]):
        case.call_and_validate(headers=sign(roles), checks=[not_a_server_error])


@dispatch_api.parametrize()
@EXAMPLES
def test_dispatch_answers_generated_requests_without_a_server_error(case, sign):
    for roles in (["admin"], ["resident"]):
        case.call_and_validate(headers=sign(roles), checks=[not_a_server_error])


@notify_api.parametrize()
@EXAMPLES
def test_notify_answers_generated_requests_without_a_server_error(case, sign):
    for roles in (["resident"], ["admin"]):
        case.call_and_validate(headers=sign(roles), checks=[not_a_server_error])


# --- the bad inputs a review found, each over both services (issue 7, Access 9) -----------------


@pytest.fixture(scope="module")
def intake_member(intake_app):
    """``intake_member(["admin"])``: headers of a new account intake holds."""
    issuer = intake_app.extensions["token_issuer"]

    def headers(roles: list[str]) -> dict[str, str]:
        with intake_app.extensions["db"].transaction() as session:
            user = User(id=uuid.uuid4(), username=f"u-{uuid.uuid4().hex[:12]}", name="测试")
            user.roles = roles
            session.add(user)
        token, _ = issuer.issue(user.id, roles, "测试")
        return {"Authorization": f"Bearer {token}"}

    return headers


@pytest.fixture(scope="module")
def dispatch_member(dispatch_app, issuer):
    """``dispatch_member(["admin"])``: headers of a new staff member dispatch knows."""
    from dispatch import services

    def headers(roles: list[str]) -> dict[str, str]:
        user_id = uuid.uuid4()
        with dispatch_app.extensions["db"].transaction() as session:
            services.upsert_staff(
                session, {"user_id": user_id, "name": "测试", "roles": roles, "active": True}
            )
        token, _ = issuer.issue(user_id, roles, "测试")
        return {"Authorization": f"Bearer {token}"}

    return headers


@pytest.fixture(scope="module")
def village_id(intake_app) -> str:
    with intake_app.extensions["db"].transaction() as session:
        return str(session.query(Village.id).first()[0])


def _cursor(values) -> str:
    raw = values if isinstance(values, str) else json.dumps(values)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _chinese_error(response, *statuses: int) -> None:
    assert response.status_code in statuses, (response.status_code, response.get_data(True))
    body = response.get_json()
    message = body["error"]["message"] if isinstance(body, dict) else body[0]["description"]
    assert any("\u4e00" <= ch <= "\u9fff" for ch in message), body


DEEP = "[" * 5000 + "]" * 5000
BAD_CURSORS = [
    [{"dt": 5}, {"uuid": 5}],
    ["2026-01-01", "not-a-uuid"],
    [{"dt": "0001-01-01T00:00:00+08:00"}, {"uuid": str(uuid.uuid4())}],
    "[" * 5000 + "]" * 5000,
]


@pytest.mark.parametrize("cursor", BAD_CURSORS, ids=["numbers", "texts", "year0", "deep"])
def test_a_cursor_of_the_wrong_kind_is_400_in_both_services(
    intake_app, dispatch_app, intake_member, dispatch_member, cursor
):
    query = {"cursor": _cursor(cursor)}  # 422 where a route caps the cursor's length first
    intake = intake_app.test_client()
    resident, admin = intake_member(["resident"]), intake_member(["admin"])
    mine = intake.get("/api/v1/issues/mine", query_string=query, headers=resident)
    _chinese_error(mine, 400, 422)
    accounts = intake.get("/api/v1/accounts", query_string=query, headers=admin)
    _chinese_error(accounts, 400, 422)
    dispatch = dispatch_app.test_client()
    for path in ("/api/v1/queue", "/api/v1/ledger"):
        answer = dispatch.get(path, query_string=query, headers=dispatch_member(["admin"]))
        _chinese_error(answer, 400, 422)


def test_deeply_nested_json_is_400_on_login_notes_and_reports(
    intake_app, dispatch_app, intake_member, dispatch_member
):
    intake = intake_app.test_client()
    for path, headers in (
        ("/api/v1/auth/login", {}),
        ("/api/v1/auth/wechat", {}),
        ("/api/v1/issues", intake_member(["resident"])),
    ):
        answer = intake.post(path, data=DEEP, content_type="application/json", headers=headers)
        _chinese_error(answer, 400)
    dispatch = dispatch_app.test_client()
    admin = dispatch_member(["admin"])
    for path in (f"/api/v1/issues/{uuid.uuid4()}/notes", "/api/v1/villages"):
        answer = dispatch.post(path, data=DEEP, content_type="application/json", headers=admin)
        _chinese_error(answer, 400)
    inside = '{"text": ' + DEEP + "}"
    answer = dispatch.post(
        f"/api/v1/issues/{uuid.uuid4()}/notes",
        data=inside,
        content_type="application/json",
        headers=admin,
    )
    _chinese_error(answer, 400)


@pytest.mark.parametrize("bad", ["\x00", "\ud800", "\udfff"], ids=["nul", "high", "low"])
def test_a_nul_or_a_lone_surrogate_in_text_is_422_in_both_services(
    intake_app, dispatch_app, intake_member, dispatch_member, village_id, bad
):
    intake = intake_app.test_client()
    # json.dumps writes them as the escapes \u0000 and \ud800 a client would send
    report = json.dumps(
        {"category": "water_power", "village_id": village_id, "description": f"水管破裂{bad}了"}
    )
    answer = intake.post(
        "/api/v1/issues",
        data=report,
        content_type="application/json",
        headers=intake_member(["resident"]),
    )
    _chinese_error(answer, 422)
    assert "description" in answer.get_json()["error"]["details"]
    login = json.dumps({"username": f"a{bad}b", "password": "whatever1"})
    answer = intake.post("/api/v1/auth/login", data=login, content_type="application/json")
    _chinese_error(answer, 422)

    dispatch = dispatch_app.test_client()
    village = json.dumps({"name": f"沙口集{bad}村"})
    answer = dispatch.post(
        "/api/v1/villages",
        data=village,
        content_type="application/json",
        headers=dispatch_member(["admin"]),
    )
    _chinese_error(answer, 422)
    assert answer.get_json()["error"]["details"] == {"name": [NOT_TEXT]}


def test_a_nul_in_a_query_string_or_a_path_is_a_4xx_in_both_services(
    intake_app, dispatch_app, intake_member, dispatch_member
):
    intake = intake_app.test_client()
    _chinese_error(intake.get("/api/v1/accounts?q=%00", headers=intake_member(["admin"])), 422)
    _chinese_error(intake.get("/open311/v2/requests/SKJ%00.json"), 400)
    _chinese_error(intake.get("/open311/v2/requests.json?service_request_id=%00"), 400)
    dispatch = dispatch_app.test_client()
    staff = dispatch.get("/api/v1/staff?role=%00", headers=dispatch_member(["admin"]))
    _chinese_error(staff, 422)


@pytest.mark.parametrize(
    "query",
    [
        "start_date=0001-01-01",
        "end_date=0001-01-01",
        "start_date=0001-01-01T00:00:00Z",
        "start_date=9999-12-31T23:59:59",
        "end_date=9999-12-31T23:59:59",
        "start_date=9999-12-31T23:59:59Z&end_date=9999-12-31T23:59:59Z",
        "start_date=0001-01-01T00:00:00Z&end_date=0001-01-02T00:00:00Z",
    ],
)
def test_open311_dates_at_the_calendar_limits_never_fail(intake_app, query):
    answer = intake_app.test_client().get(f"/open311/v2/requests.json?{query}")
    if answer.status_code != 200:
        _chinese_error(answer, 400)
    else:
        assert answer.get_json() == []


@pytest.mark.parametrize(
    "query",
    [
        "from=0001-01-01",
        "to=0001-01-01",
        "from=9999-12-31",
        "to=9999-12-31",
        "from=9999-12-31T23:59:59",
        "to=9999-12-31T23:59:59",
        "from=0001-01-01T00:00:00",
        "from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z",
    ],
)
def test_dispatch_stats_at_the_calendar_limits_never_fail(dispatch_app, dispatch_member, query):
    answer = dispatch_app.test_client().get(
        f"/api/v1/stats?{query}", headers=dispatch_member(["admin"])
    )
    if answer.status_code != 200:
        _chinese_error(answer, 422)


def test_a_due_time_before_year_one_is_422_not_500(dispatch_app, dispatch_member):
    answer = dispatch_app.test_client().post(
        f"/api/v1/issues/{uuid.uuid4()}/assign",
        json={"assignee_id": str(uuid.uuid4()), "due_at": "0001-01-01T00:00:00"},
        headers=dispatch_member(["admin"]),
    )
    _chinese_error(answer, 404, 422)


def test_every_service_caps_bodies_at_one_megabyte_but_photos_may_be_larger(
    intake_app, dispatch_app, intake_member, dispatch_member, village_id
):
    big = {"category": "water_power", "village_id": village_id, "description": "水" * 600_000}
    intake = intake_app.test_client()
    resident = intake_member(["resident"])
    _chinese_error(intake.post("/api/v1/issues", json=big, headers=resident), 413)
    _chinese_error(intake.post("/api/v1/auth/login", json={"username": "x" * 2_000_000}), 413)
    open311 = intake.post("/open311/v2/requests.json", data={"description": "水" * 600_000})
    _chinese_error(open311, 413)
    dispatch = dispatch_app.test_client()
    admin = dispatch_member(["admin"])
    village = dispatch.post("/api/v1/villages", json={"name": "x" * 2_000_000}, headers=admin)
    _chinese_error(village, 413)

    # A 3 MB photo is more than any JSON body but well under MEDIA_MAX_BYTES: not refused for size.
    photo = io.BytesIO(b"\xff\xd8\xff\xe0" + b"\0" * 3_000_000)
    upload = intake.post(
        "/api/v1/media",
        data={"file": (photo, "photo.jpg", "image/jpeg")},
        content_type="multipart/form-data",
        headers=resident,
    )
    assert upload.status_code != 413 and upload.status_code < 500, upload.get_data(True)
