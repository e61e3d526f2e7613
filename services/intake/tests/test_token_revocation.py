"""Tokens do not outlive the account: a disabled, demoted or re-passworded account's access and
refresh tokens stop counting; refresh tokens rotate, and a copied one revokes its family."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from intake.accounts import hash_password
from intake.models import RefreshToken, User
from shared.db import utcnow
from shared.retention import RetentionPolicy, purge

LOGIN = "/api/v1/auth/login"
WECHAT = "/api/v1/auth/wechat"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ACCOUNTS = "/api/v1/accounts"
PASSWORD = "admin-password-365"


def make_staff(db, username: str, roles=("admin",), **fields) -> User:
    with db.transaction() as session:
        user = User(
            username=username,
            name="乡管理员",
            roles=list(roles),
            password_hash=hash_password(PASSWORD),
            **fields,
        )
        session.add(user)
    return user


def sign_in(client, username: str, password: str = PASSWORD) -> dict:
    response = client.post(LOGIN, json={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def bearer(signed_in: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {signed_in['access_token']}"}


def assert_token_revoked(response) -> None:
    assert response.status_code == 401
    error = response.get_json()["error"]
    assert error["code"] == "token_revoked"
    assert error["message"] == "登录已失效，请重新登录。"


def assert_refresh_refused(response) -> None:
    assert response.status_code == 401
    error = response.get_json()["error"]
    assert error["code"] == "invalid_refresh_token"
    assert error["message"] == "登录已失效，请重新登录。"


@pytest.fixture
def boss(db, client) -> tuple[User, dict[str, str]]:
    """Another admin, who makes the changes."""
    user = make_staff(db, "boss")
    return user, bearer(sign_in(client, "boss"))


def test_a_sign_in_answers_a_short_access_token_and_a_refresh_token_never_cached(
    client, db, settings
):
    make_staff(db, "admin1")

    response = client.post(LOGIN, json={"username": "admin1", "password": PASSWORD})

    body = response.get_json()
    assert body["expires_in"] == settings.access_token_ttl_seconds == 15 * 60
    assert len(body["refresh_token"]) >= 40
    assert body["refresh_expires_in"] == 30 * 86400
    assert response.headers["Cache-Control"] == "no-store"
    with db.transaction() as session:
        [stored] = session.scalars(sa.select(RefreshToken)).all()
    assert stored.token_hash != body["refresh_token"] and len(stored.token_hash) == 64


def test_a_resident_sign_in_also_answers_a_refresh_token_never_cached(client):
    response = client.post(WECHAT, json={"code": "resident-7"})

    assert response.status_code == 200
    assert response.get_json()["refresh_token"]
    assert response.headers["Cache-Control"] == "no-store"


def test_a_disabled_admins_token_no_longer_lists_accounts_or_creates_an_admin(client, db, boss):
    admin = make_staff(db, "admin1")
    signed_in = sign_in(client, "admin1")
    assert client.get(ACCOUNTS, headers=bearer(signed_in)).status_code == 200

    client.patch(f"{ACCOUNTS}/{admin.id}", json={"active": False}, headers=boss[1])

    assert_token_revoked(client.get(ACCOUNTS, headers=bearer(signed_in)))
    new_admin = {"username": "mole01", "name": "内鬼", "roles": ["admin"]}
    assert_token_revoked(client.post(ACCOUNTS, json=new_admin, headers=bearer(signed_in)))
    assert_token_revoked(client.get("/api/v1/me", headers=bearer(signed_in)))


def test_a_demoted_admins_token_is_refused_and_a_fresh_sign_in_has_the_new_roles(client, db, boss):
    admin = make_staff(db, "admin1")
    old = sign_in(client, "admin1")

    client.patch(f"{ACCOUNTS}/{admin.id}", json={"roles": ["grid_worker"]}, headers=boss[1])

    assert_token_revoked(client.get(ACCOUNTS, headers=bearer(old)))
    fresh = sign_in(client, "admin1")
    assert client.get("/api/v1/me", headers=bearer(fresh)).get_json()["roles"] == ["grid_worker"]
    assert client.get(ACCOUNTS, headers=bearer(fresh)).status_code == 403


def test_a_token_issued_before_a_new_password_is_refused_even_in_the_same_second(client, db, boss):
    admin = make_staff(db, "admin1")
    old = sign_in(client, "admin1")

    client.patch(f"{ACCOUNTS}/{admin.id}", json={"password": "brand-new-pass"}, headers=boss[1])

    assert_token_revoked(client.get(ACCOUNTS, headers=bearer(old)))
    fresh = sign_in(client, "admin1", "brand-new-pass")
    assert client.get(ACCOUNTS, headers=bearer(fresh)).status_code == 200


def test_a_token_of_an_account_intake_does_not_hold_is_refused(client, app):
    token, _ = app.extensions["token_issuer"].issue(uuid.uuid4(), ["admin"], "无此人")

    assert_token_revoked(client.get(ACCOUNTS, headers={"Authorization": f"Bearer {token}"}))


def test_a_refresh_token_gives_a_new_pair_and_is_used_up(client, db):
    make_staff(db, "admin1")
    first = sign_in(client, "admin1")

    response = client.post(REFRESH, json={"refresh_token": first["refresh_token"]})

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    second = response.get_json()
    assert second["refresh_token"] != first["refresh_token"]
    assert client.get(ACCOUNTS, headers=bearer(second)).status_code == 200
    assert client.post(REFRESH, json={"refresh_token": second["refresh_token"]}).status_code == 200


def test_a_rotated_refresh_token_shown_again_revokes_the_whole_family(client, db):
    make_staff(db, "admin1")
    first = sign_in(client, "admin1")
    second = client.post(REFRESH, json={"refresh_token": first["refresh_token"]}).get_json()

    # Someone copied the first token and uses it after its owner did.
    assert_refresh_refused(client.post(REFRESH, json={"refresh_token": first["refresh_token"]}))

    assert_refresh_refused(client.post(REFRESH, json={"refresh_token": second["refresh_token"]}))


def test_a_refresh_token_stops_counting_when_the_account_is_disabled_or_re_passworded(
    client, db, boss
):
    admin = make_staff(db, "admin1")
    worker = make_staff(db, "worker1", roles=("grid_worker",))
    admin_refresh = sign_in(client, "admin1")["refresh_token"]
    worker_refresh = sign_in(client, "worker1")["refresh_token"]

    client.patch(f"{ACCOUNTS}/{admin.id}", json={"active": False}, headers=boss[1])
    client.patch(f"{ACCOUNTS}/{worker.id}", json={"password": "brand-new-pass"}, headers=boss[1])

    assert_refresh_refused(client.post(REFRESH, json={"refresh_token": admin_refresh}))
    assert_refresh_refused(client.post(REFRESH, json={"refresh_token": worker_refresh}))


def test_a_demoted_accounts_refresh_token_is_refused(client, db, boss):
    admin = make_staff(db, "admin1")
    refresh = sign_in(client, "admin1")["refresh_token"]

    client.patch(f"{ACCOUNTS}/{admin.id}", json={"roles": ["grid_worker"]}, headers=boss[1])

    assert_refresh_refused(client.post(REFRESH, json={"refresh_token": refresh}))


def test_an_expired_or_unknown_refresh_token_is_refused(client, db):
    make_staff(db, "admin1")
    refresh = sign_in(client, "admin1")["refresh_token"]
    with db.transaction() as session:
        session.execute(sa.update(RefreshToken).values(expires_at=utcnow() - timedelta(seconds=1)))

    assert_refresh_refused(client.post(REFRESH, json={"refresh_token": refresh}))
    assert_refresh_refused(client.post(REFRESH, json={"refresh_token": "made-up-token"}))


def test_logout_revokes_the_refresh_token_and_its_family(client, db):
    make_staff(db, "admin1")
    first = sign_in(client, "admin1")
    second = client.post(REFRESH, json={"refresh_token": first["refresh_token"]}).get_json()

    response = client.post(LOGOUT, json={"refresh_token": second["refresh_token"]})

    assert response.status_code == 204
    assert_refresh_refused(client.post(REFRESH, json={"refresh_token": second["refresh_token"]}))
    # Logging out twice, or with a token nobody knows, is fine too.
    assert client.post(LOGOUT, json={"refresh_token": second["refresh_token"]}).status_code == 204
    assert client.post(LOGOUT, json={"refresh_token": "made-up-token"}).status_code == 204


def test_refresh_without_a_token_is_422_in_chinese(client):
    response = client.post(REFRESH, json={})

    assert response.status_code == 422
    assert response.get_json()["error"]["details"]["json"]["refresh_token"] == ["此项为必填。"]


def test_the_worker_purges_refresh_tokens_a_day_past_their_expiry(client, db):
    make_staff(db, "admin1")
    old, recent = sign_in(client, "admin1"), sign_in(client, "admin1")
    with db.transaction() as session:
        session.execute(
            sa.update(RefreshToken)
            .where(RefreshToken.token_hash == _hash(old["refresh_token"]))
            .values(expires_at=utcnow() - timedelta(days=1, minutes=1))
        )

    purge(db, RetentionPolicy(), service="intake")

    with db.transaction() as session:
        left = session.scalars(sa.select(RefreshToken.token_hash)).all()
    assert left == [_hash(recent["refresh_token"])]


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()
