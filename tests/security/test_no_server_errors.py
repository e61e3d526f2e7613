"""Generated requests (schemathesis, from each service's own OpenAPI) never get a 5xx, and every
answer is the one its document promises, on a township with real data in it.

All five services run in this process on real PostgreSQL databases and RabbitMQ, seeded through
their own code with the demo township and issues in every state (``tests/security/seeded.py``).
A generated request names a real issue, account, article, ledger entry... about half of the
time (schemathesis' ``flatmap_path_parameters`` hook), so it reaches the handlers instead of
stopping at a 404; each is sent as the admin, a grid worker, a resident and anonymously, and
each service's test counts the 2xx answers per route and caller to prove it. The hand-written
bad inputs a review found follow.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dispatch.app import create_app as create_dispatch
from dispatch.settings import DispatchSettings
from intake.app import create_app as create_intake
from intake.models import User, Village
from intake.settings import IntakeSettings
from shared.fields import NOT_TEXT
from tests.security.seeded import SERVICES, SeededTownship, Workers, make_settings, seed

EXAMPLES = 12  # generated requests per route, each sent as four callers
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
CALLERS = ("admin", "grid_worker", "resident", "anonymous")
ORDER = {"get": 0, "delete": 2}  # everything else: 1

# At least this many 2xx answers per caller in each service: what each may do there (a resident
# has no dispatch routes but the public figures; scoring and notify have nothing anonymous).
AT_LEAST: dict[str, dict[str, int]] = {
    "intake": {"admin": 10, "grid_worker": 5, "resident": 10, "anonymous": 2},
    "dispatch": {"admin": 10, "grid_worker": 5, "resident": 1, "anonymous": 1},
    "scoring": {"admin": 5, "grid_worker": 5, "resident": 1},
    "notify": {"admin": 5, "grid_worker": 5, "resident": 5},
    "feed": {"admin": 10, "grid_worker": 5, "resident": 5, "anonymous": 2},
}

# Routes that read one object by its id, and the callers who may read the seeded ones: each must
# get at least one 2xx, or the generated requests never reached that handler.
READERS: dict[str, dict[str, tuple[str, ...]]] = {
    "intake": {
        "GET /api/v1/issues/{issue_id}": ("admin", "grid_worker", "resident"),
        "GET /api/v1/accounts/{user_id}": ("admin",),
        "GET /api/v1/media/{media_id}": ("admin", "resident"),
    },
    "dispatch": {
        "GET /api/v1/issues/{issue_id}": ("admin", "grid_worker"),
        "GET /api/v1/issues/{issue_id}/history": ("admin", "grid_worker"),
        "GET /api/v1/issues/{issue_id}/duplicates": ("admin",),
    },
    "scoring": {
        "GET /api/v1/workers/{worker_id}/points": ("admin", "grid_worker"),
    },
    "notify": {},
    "feed": {
        "GET /api/v1/news/{article_id}": CALLERS,
        "GET /api/v1/news/{article_id}/comments": CALLERS,
        "GET /api/v1/news/{article_id}/edit": ("admin",),
        "GET /api/v1/posts/{post_id}": ("admin", "grid_worker", "resident"),
        "GET /api/v1/posts/{post_id}/comments": ("admin", "grid_worker", "resident"),
    },
}


@pytest.fixture(scope="module")
def seeded(migrated_database, rabbit_server, jwt_keys, tmp_path_factory) -> Iterator:
    """The five services on fresh databases and one vhost, seeded (see ``seeded.py``); their
    workers stop once the seed has arrived everywhere."""
    amqp_url = rabbit_server.create_vhost("schema")
    media = tmp_path_factory.mktemp("schema-media")
    config = {
        service: make_settings(
            service,
            migrated_database(service, prefix=f"schema_{service}"),
            amqp_url,
            jwt_keys,
            media,
        )
        for service in SERVICES
    }
    apps = {
        service: importlib.import_module(f"{service}.app").create_app(config[service])
        for service in SERVICES
    }
    workers = Workers()
    for service in SERVICES:
        workers.add(service, config[service])
    town = SeededTownship(apps)
    workers.start()
    try:
        seed(town, config)
    finally:
        workers.stop()
    yield town
    apps["feed"].extensions["view_counter"].close()
    for app in apps.values():
        app.extensions["db"].dispose()


def test_the_seeded_township_has_issues_in_every_state_and_level(seeded) -> None:
    """What the generated requests meet: dispatch holds the resident's reports in every state of
    the life cycle and at the escalation levels, all made by the services' own steps."""
    assert seeded.states == {
        "reported": ("reported", "grid"),
        "assigned": ("assigned", "grid"),
        "in_progress": ("in_progress", "grid"),
        "resolved": ("resolved", "grid"),
        "closed": ("closed", "grid"),
        "reopened_unsatisfied": ("reopened", "grid"),
        "reopened_callback": ("reopened", "grid"),
        "escalated_township": ("in_progress", "township"),
        "escalated_county": ("in_progress", "county"),
        "rejected_duplicate": ("rejected", "grid"),
        "withdrawn": ("withdrawn", "grid"),
        "neighbour": ("reported", "grid"),
    }
    assert len(seeded.ids[("dispatch", "entry_id")]) == 1  # the county referral's ledger entry
    assert len(seeded.ids[("feed", "post_id")]) == 2  # a party post and this month's 红黑榜


def real_ids_hook(town: SeededTownship, service: str) -> Callable:
    """``flatmap_path_parameters``: the generated ids, or (as often) ids of seeded objects."""

    def flatmap_path_parameters(_context, path_parameters):
        real = {
            name: st.sampled_from(town.ids[(service, name)])
            for name in path_parameters or {}
            if town.ids.get((service, name))
        }
        if not real:
            return st.just(path_parameters)
        named = st.fixed_dictionaries(
            {**{k: st.just(v) for k, v in path_parameters.items()}, **real}
        )
        return st.one_of(named, st.just(path_parameters))

    return flatmap_path_parameters


# Body fields that name an object, and the pool of seeded ids (``SeededTownship.ids``) a
# generated body may take its value from: a list field takes a list of them.
BODY_POOLS = {
    "assignee_id": "user_id",
    "leader_id": "user_id",
    "area_leader_id": "user_id",
    "member_ids": "user_id",
    "village_id": "village_id",
    "department": "department_id",
    "department_id": "department_id",
    "duplicate_of": "issue_id",
    "photo_ids": "media_id",
}


def _pool(town: SeededTownship, service: str, name: str) -> list[str]:
    """The service's own pool of ``name``, else another service's (ids are the township's)."""
    return town.ids.get((service, name)) or next(
        (ids for (_svc, pool), ids in town.ids.items() if pool == name and ids), []
    )


def real_body_ids_hook(town: SeededTownship, service: str) -> Callable:
    """``flatmap_body``: the generated body, or (as often) the same body naming seeded objects
    in its id fields, so that assign, escalate, reject, grids and departments reach their rules
    instead of stopping at "not found"."""

    def flatmap_body(_context, body):
        if not isinstance(body, dict):
            return st.just(body)
        real = {}
        for name, value in body.items():
            pool = _pool(town, service, BODY_POOLS.get(name, ""))
            if not pool:
                continue
            one = st.sampled_from(pool)
            real[name] = st.lists(one, max_size=2, unique=True) if isinstance(value, list) else one
        if not real:
            return st.just(body)
        named = st.fixed_dictionaries({**{k: st.just(v) for k, v in body.items()}, **real})
        return st.one_of(named, st.just(body))

    return flatmap_body


def fuzz(town: SeededTownship, service: str) -> Counter:
    """Every route of ``service``: ``EXAMPLES`` generated requests (valid and invalid ones),
    each sent by every caller and checked; returns the count of answers by
    (route, caller, status class)."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", town.apps[service])
    schema.hooks.register_hook_with_name(real_ids_hook(town, service), "flatmap_path_parameters")
    schema.hooks.register_hook_with_name(real_body_ids_hook(town, service), "flatmap_body")
    answers: Counter = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    # Reads first, then changes, deletions last: a generated DELETE of a seeded post must not
    # leave the reads of that post nothing to find.
    for operation in sorted(operations, key=lambda op: ORDER.get(op.method.lower(), 1)):
        fuzz_operation(town, operation, answers)
    return answers


def fuzz_operation(
    town: SeededTownship, operation: schemathesis.APIOperation, answers: Counter
) -> None:
    """One route: generated cases (about half of them with real ids), each sent by every caller
    and checked; counts the answers."""
    label = f"{operation.method.upper()} {operation.path}"
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        for caller in CALLERS:
            response = case.call_and_validate(headers=town.callers[caller], checks=CHECKS)
            answers[(label, caller, response.status_code // 100)] += 1

    run()


@pytest.mark.parametrize("service", SERVICES)
def test_generated_requests_on_the_seeded_township_never_fail_and_match_the_document(
    seeded, service
) -> None:
    """Zero 5xx and documented answers for admin, grid worker, resident and anonymous; and the
    requests reached the handlers: each caller got 2xx answers, and every route that reads one
    object got a 2xx for each caller who may read the seeded ones."""
    answers = fuzz(seeded, service)
    got = {
        caller: sum(n for (_, who, kind), n in answers.items() if who == caller and kind == 2)
        for caller in CALLERS
    }
    short = {
        caller: got[caller] for caller, floor in AT_LEAST[service].items() if got[caller] < floor
    }
    assert not short, f"{service}: too few 2xx answers {short} (floors {AT_LEAST[service]})"
    missed = [
        (route, caller)
        for route, callers in READERS[service].items()
        for caller in callers
        if not answers[(route, caller, 2)]
    ]
    assert not missed, f"{service}: never reached with a real id: {missed}"


# --- the bad inputs a review found, each over both services (issue 7, Access 9) -----------------


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
