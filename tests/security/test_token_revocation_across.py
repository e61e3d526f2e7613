"""A token stops counting everywhere, not only at intake: an admin disables or demotes an account
at intake, ``account.upserted`` crosses the real broker, and dispatch refuses the old token."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from dispatch.app import create_app as create_dispatch
from dispatch.handlers import SUBSCRIPTIONS as DISPATCH_SUBSCRIPTIONS
from dispatch.handlers import use_settings
from dispatch.models import Staff
from dispatch.settings import DispatchSettings
from intake.accounts import hash_password
from intake.models import User
from shared.consumer import Consumer
from shared.testing import wait_for

PASSWORD = "boss-password-365"


@pytest.fixture
def dispatch(fresh_database, amqp_url, jwt_keys) -> Iterator[dict]:
    """dispatch's web app and its consumer on the test's vhost."""
    settings = DispatchSettings(
        app_env="test",
        database_url=fresh_database("dispatch"),
        rabbitmq_url=amqp_url,
        jwt_public_key_file=jwt_keys[1],
        log_format="text",
    )
    app = create_dispatch(settings)
    use_settings(settings)
    db = app.extensions["db"]
    consumer = Consumer(
        db,
        amqp_url,
        settings.events_exchange,
        service="dispatch",
        subscriptions=DISPATCH_SUBSCRIPTIONS,
        retry_delays_ms=[50, 100],
    )
    consumer.declare()
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run_forever, args=(stop,), daemon=True)
    thread.start()
    yield {"client": app.test_client(), "db": db}
    stop.set()
    thread.join(timeout=15)
    use_settings(None)
    db.dispose()


def _sign_in(intake, username: str, password: str) -> dict[str, str]:
    answer = intake["client"].post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    )
    assert answer.status_code == 200, answer.get_json()
    return {"Authorization": f"Bearer {answer.get_json()['access_token']}"}


def _staff(dispatch, user_id: str) -> Staff | None:
    with dispatch["db"].transaction() as session:
        return session.get(Staff, uuid.UUID(user_id))


@pytest.fixture
def boss(intake) -> dict[str, str]:
    with intake["db"].transaction() as session:
        session.add(
            User(
                username="boss",
                name="乡管理员",
                roles=["admin"],
                password_hash=hash_password(PASSWORD),
            )
        )
    return _sign_in(intake, "boss", PASSWORD)


def _new_admin(intake, dispatch, boss) -> tuple[str, dict[str, str]]:
    """A second admin, known to dispatch and signed in."""
    body = {"username": "zgly02", "name": "副管理员", "roles": ["admin"], "password": PASSWORD}
    created = intake["client"].post("/api/v1/accounts", json=body, headers=boss)
    assert created.status_code == 201
    user_id = created.get_json()["id"]
    wait_for(lambda: _staff(dispatch, user_id), timeout=15)
    headers = _sign_in(intake, "zgly02", PASSWORD)
    assert dispatch["client"].get("/api/v1/queue", headers=headers).status_code == 200
    return user_id, headers


def _assert_token_revoked(response) -> None:
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "token_revoked"
    assert response.get_json()["error"]["message"] == "登录已失效，请重新登录。"


def test_an_account_disabled_at_intake_is_refused_by_dispatch(intake, dispatch, boss):
    user_id, headers = _new_admin(intake, dispatch, boss)

    intake["client"].patch(f"/api/v1/accounts/{user_id}", json={"active": False}, headers=boss)

    wait_for(lambda: _staff(dispatch, user_id).active is False, timeout=15)
    _assert_token_revoked(dispatch["client"].get("/api/v1/queue", headers=headers))
    _assert_token_revoked(intake["client"].get("/api/v1/accounts", headers=headers))


def test_an_admin_demoted_at_intake_is_refused_by_dispatch_until_signing_in_again(
    intake, dispatch, boss
):
    user_id, old = _new_admin(intake, dispatch, boss)

    intake["client"].patch(
        f"/api/v1/accounts/{user_id}", json={"roles": ["grid_worker"]}, headers=boss
    )

    wait_for(lambda: _staff(dispatch, user_id).roles == ["grid_worker"], timeout=15)
    _assert_token_revoked(dispatch["client"].get("/api/v1/queue", headers=old))
    fresh = _sign_in(intake, "zgly02", PASSWORD)
    assert intake["client"].get("/api/v1/me", headers=fresh).get_json()["roles"] == ["grid_worker"]
    assert dispatch["client"].get("/api/v1/tasks/mine", headers=fresh).status_code == 200


def test_a_new_password_set_at_intake_ends_the_old_token_at_dispatch(intake, dispatch, boss):
    user_id, old = _new_admin(intake, dispatch, boss)

    intake["client"].patch(
        f"/api/v1/accounts/{user_id}", json={"password": "another-pass-1"}, headers=boss
    )

    wait_for(lambda: _staff(dispatch, user_id).tokens_valid_after is not None, timeout=15)
    _assert_token_revoked(dispatch["client"].get("/api/v1/queue", headers=old))
    fresh = _sign_in(intake, "zgly02", "another-pass-1")
    assert dispatch["client"].get("/api/v1/queue", headers=fresh).status_code == 200
