"""Generated requests (schemathesis, from each service's own OpenAPI) never get a 5xx.

The apps run in-process on real PostgreSQL databases; the caller is an admin (every staff route
is reachable) or a resident (the report routes). Bad input must be a 4xx with a message.
"""

from __future__ import annotations

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
def sign(issuer):
    """``sign(["admin"])``: headers with a token for a new user holding those roles."""

    def headers(roles: list[str]) -> dict[str, str]:
        token, _ = issuer.issue(uuid.uuid4(), roles, "测试")
        return {"Authorization": f"Bearer {token}"}

    return headers


@pytest.fixture(scope="module")
def intake_schema(intake_app):
    return schemathesis.openapi.from_wsgi("/openapi.json", intake_app)


@pytest.fixture(scope="module")
def dispatch_schema(dispatch_app):
    return schemathesis.openapi.from_wsgi("/openapi.json", dispatch_app)


intake_api = schemathesis.pytest.from_fixture("intake_schema")
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
