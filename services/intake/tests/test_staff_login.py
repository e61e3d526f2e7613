"""Staff sign in with username and password: argon2, no user enumeration, rate limits."""

from __future__ import annotations

import statistics
import time

import sqlalchemy as sa
from argon2 import PasswordHasher

from intake.accounts import hash_password
from intake.models import User

PASSWORD = "correct-horse-365"
LOGIN = "/api/v1/auth/login"


def make_staff(db, username="worker01", roles=("grid_worker",), **fields) -> User:
    with db.transaction() as session:
        user = User(
            username=username,
            name="王建国",
            roles=list(roles),
            password_hash=fields.pop("password_hash", None) or hash_password(PASSWORD),
            **fields,
        )
        session.add(user)
    return user


def sign_in(client, password: str = PASSWORD):
    return client.post(LOGIN, json={"username": "worker01", "password": password})


def reload(db, user_id) -> User:
    with db.transaction() as session:
        return session.get(User, user_id)


def test_staff_member_signs_in_and_gets_a_bearer_token_for_their_roles(client, db, app):
    staff = make_staff(db, roles=("grid_worker", "party_member"))

    response = client.post(LOGIN, json={"username": "worker01", "password": PASSWORD})

    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == app.extensions["settings"].access_token_ttl_seconds
    assert body["user"]["id"] == str(staff.id)
    assert "password_hash" not in body["user"] and "password" not in body["user"]
    principal = app.extensions["token_verifier"].verify(body["access_token"])
    assert principal.id == staff.id
    assert principal.roles == {"grid_worker", "party_member"}


def test_username_is_matched_without_regard_to_case_or_spaces(client, db):
    make_staff(db)

    response = client.post(LOGIN, json={"username": " Worker01 ", "password": PASSWORD})

    assert response.status_code == 200


def test_wrong_password_and_unknown_username_get_the_same_answer(client, db):
    make_staff(db)

    wrong_password = client.post(LOGIN, json={"username": "worker01", "password": "nope-nope"})
    unknown_user = client.post(LOGIN, json={"username": "nobody99", "password": "nope-nope"})

    assert wrong_password.status_code == unknown_user.status_code == 401
    assert wrong_password.get_json() == unknown_user.get_json()
    assert wrong_password.get_json()["error"]["message"] == "用户名或密码错误。"


def test_unknown_username_takes_about_as_long_as_a_wrong_password(client, db):
    make_staff(db)

    def timed(username: str) -> float:
        started = time.perf_counter()
        response = client.post(LOGIN, json={"username": username, "password": "wrong-pass"})
        assert response.status_code == 401
        return time.perf_counter() - started

    timed("nobody99")  # the dummy hash is made once per process; keep that out of the figures
    wrong_password = statistics.median(timed("worker01") for _ in range(3))
    unknown_user = statistics.median(timed("nobody99") for _ in range(3))

    # Both pay one argon2 verification; without the dummy hash the unknown name is ~100x faster.
    assert unknown_user > 0.4 * wrong_password


def test_a_disabled_accounts_right_password_answers_exactly_as_a_wrong_one(client, db):
    make_staff(db, active=False)

    right = client.post(LOGIN, json={"username": "worker01", "password": PASSWORD})
    wrong = client.post(LOGIN, json={"username": "worker01", "password": "wrong-pass"})

    assert right.status_code == wrong.status_code == 401
    assert right.get_json() == wrong.get_json()
    assert right.get_json()["error"]["message"] == "用户名或密码错误。"
    assert "access_token" not in right.get_json()


def test_resident_without_a_password_cannot_use_password_login(client, make_user):
    make_user(roles=["resident"], username="resident1")

    response = client.post(LOGIN, json={"username": "resident1", "password": "anything1"})

    assert response.status_code == 401


def test_an_old_password_hash_is_upgraded_on_sign_in(client, db):
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    staff = make_staff(db, password_hash=weak)

    assert sign_in(client).status_code == 200

    upgraded = reload(db, staff.id).password_hash
    assert upgraded != weak
    assert not PasswordHasher().check_needs_rehash(upgraded)
    assert sign_in(client).status_code == 200


def test_too_many_attempts_for_one_username_get_429_with_retry_after(client, db, settings):
    settings.rate_limit_login = "3 per minute"  # limits are read from settings per request
    settings.login_max_failures = 50
    make_staff(db)
    bad = {"username": "worker01", "password": "wrong-pass"}

    answers = [client.post(LOGIN, json=bad).status_code for _ in range(3)]
    limited = client.post(LOGIN, json={"username": "worker01", "password": PASSWORD})
    other_user = client.post(LOGIN, json={"username": "someone2", "password": "wrong-pass"})

    assert answers == [401, 401, 401]
    assert limited.status_code == 429
    assert limited.get_json()["error"]["code"] == "too_many_requests"
    assert limited.get_json()["error"]["message"] == "操作太频繁，请稍后再试。"
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    assert other_user.status_code == 401  # another username from the same address is not limited
    from_elsewhere = client.post(
        LOGIN,
        json={"username": "worker01", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "10.9.8.7"},
    )
    assert from_elsewhere.status_code == 200  # nor the same username from another address


def test_too_many_attempts_from_one_address_get_429_whatever_the_username(client, db, settings):
    settings.rate_limit_login_ip = "4 per minute"
    answers = [
        client.post(LOGIN, json={"username": f"user{i:02d}", "password": "wrong-pass"}).status_code
        for i in range(5)
    ]
    from_elsewhere = client.post(
        LOGIN,
        json={"username": "user99", "password": "wrong-pass"},
        environ_base={"REMOTE_ADDR": "10.1.2.3"},
    )

    assert answers == [401, 401, 401, 401, 429]
    assert from_elsewhere.status_code == 401


def test_login_without_a_password_is_422_in_chinese(client):
    response = client.post(LOGIN, json={"username": "worker01"})

    assert response.status_code == 422
    assert response.get_json()["error"]["details"]["json"]["password"] == ["此项为必填。"]


def test_me_returns_the_callers_own_account_without_secrets(client, db, app):
    staff = make_staff(db, roles=("supervisor",), phone="13800000000")
    token = client.post(LOGIN, json={"username": "worker01", "password": PASSWORD}).get_json()[
        "access_token"
    ]

    response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == str(staff.id)
    assert body["roles"] == ["supervisor"] and body["phone"] == "13800000000"
    assert not {"password_hash", "openid", "unionid", "failed_logins"} & body.keys()


def test_me_without_a_token_is_401(client):
    response = client.get("/api/v1/me")

    assert response.status_code == 401
    assert response.get_json()["error"]["message"] == "请先登录。"


def test_me_for_a_resident_token_is_the_residents_account(client, make_user):
    resident, headers = make_user(roles=["resident"])

    body = client.get("/api/v1/me", headers=headers).get_json()

    assert body["id"] == str(resident.id) and body["roles"] == ["resident"]


def test_passwords_are_stored_only_as_argon2id_hashes(db):
    staff = make_staff(db)
    with db.engine.connect() as conn:
        stored = conn.execute(sa.select(User.password_hash).where(User.id == staff.id)).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
