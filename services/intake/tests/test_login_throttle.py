"""Nobody can lock another person out: failed staff logins slow down only the address they come
from (for that username), with growing delays; behind a trusted proxy the client's address is
the one the proxy saw; both logins are limited per address."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from intake.accounts import hash_password
from intake.app import create_app
from intake.domain import login_delay_seconds
from intake.models import LoginFailure, User
from shared.db import utcnow
from shared.retention import RetentionPolicy, purge

LOGIN = "/api/v1/auth/login"
WECHAT = "/api/v1/auth/wechat"
PASSWORD = "admin-password-365"
ATTACKER, ADMIN_DESK = "203.0.113.66", "198.51.100.7"


@pytest.fixture
def admin(db) -> User:
    with db.transaction() as session:
        user = User(
            username="admin",
            name="乡管理员",
            roles=["admin"],
            password_hash=hash_password(PASSWORD),
        )
        session.add(user)
    return user


def attempt(client, password: str, address: str, username: str = "admin", **headers):
    """One login; the answer remembers when it was asked (``sent_at``), so that a wait it
    announces is measured from then, however slow the machine is afterwards."""
    sent_at = utcnow()
    response = client.post(
        LOGIN,
        json={"username": username, "password": password},
        environ_base={"REMOTE_ADDR": address},
        headers=headers,
    )
    response.sent_at = sent_at
    return response


def let_the_wait_run_out(db) -> None:
    """As if the refusal's time had passed (the count of failures stays)."""
    with db.transaction() as session:
        session.execute(
            sa.update(LoginFailure).values(blocked_until=utcnow() - timedelta(seconds=1))
        )


def assert_throttled(response, low: int, high: int) -> None:
    """A 429 telling the address to wait between ``low`` and ``high`` seconds."""
    assert response.status_code == 429
    error = response.get_json()["error"]
    assert error["code"] == "login_throttled"
    assert "登录失败次数过多" in error["message"] and "北京时间" in error["message"]
    retry_at = datetime.fromisoformat(error["details"]["retry_at"])
    wait = (retry_at - getattr(response, "sent_at", utcnow())).total_seconds()
    assert low - 1 <= wait <= high + 1
    # flask-limiter may raise Retry-After to the end of its own window, never lower it.
    assert int(response.headers["Retry-After"]) >= low


def test_an_attacker_from_one_address_cannot_lock_the_admin_out_of_another(client, admin, settings):
    for _ in range(8):
        attempt(client, "guess-guess", ATTACKER)

    assert attempt(client, PASSWORD, ATTACKER).status_code == 429  # the attacker waits
    assert attempt(client, PASSWORD, ADMIN_DESK).status_code == 200  # the admin does not


def test_repeated_failures_from_one_address_get_growing_refusals(client, db, admin, settings):
    settings.login_max_failures = 3
    settings.login_delay_seconds = 30
    settings.login_delay_max_seconds = 100

    first, second = attempt(client, "guess-1", ATTACKER), attempt(client, "guess-2", ATTACKER)
    third = attempt(client, "guess-3", ATTACKER)
    right_while_waiting = attempt(client, PASSWORD, ATTACKER)
    let_the_wait_run_out(db)
    fourth = attempt(client, "guess-4", ATTACKER)
    let_the_wait_run_out(db)
    fifth = attempt(client, "guess-5", ATTACKER)
    let_the_wait_run_out(db)
    sixth = attempt(client, "guess-6", ATTACKER)

    assert (first.status_code, second.status_code) == (401, 401)
    assert_throttled(third, 29, 30)
    assert_throttled(right_while_waiting, 1, 30)  # not even checked while waiting
    assert_throttled(fourth, 59, 60)
    assert_throttled(fifth, 99, 100)  # 120 s, held to the maximum
    assert_throttled(sixth, 99, 100)


def test_the_right_password_after_the_wait_signs_in_and_clears_the_count(
    client, db, admin, settings
):
    settings.login_max_failures = 2
    attempt(client, "guess-1", ATTACKER)
    assert attempt(client, "guess-2", ATTACKER).status_code == 429
    let_the_wait_run_out(db)

    assert attempt(client, PASSWORD, ATTACKER).status_code == 200

    with db.transaction() as session:
        assert session.scalars(sa.select(LoginFailure)).all() == []
    assert attempt(client, "guess-3", ATTACKER).status_code == 401  # counting starts afresh


def test_an_unknown_username_is_slowed_down_exactly_like_a_known_one(client, admin, settings):
    settings.login_max_failures = 2

    known = [attempt(client, "guess", ATTACKER, "admin") for _ in range(2)]
    unknown = [attempt(client, "guess", ATTACKER, "nobody99") for _ in range(2)]

    assert [r.status_code for r in known] == [r.status_code for r in unknown] == [401, 429]
    assert known[0].get_json() == unknown[0].get_json()


def test_the_growing_delay_starts_after_the_free_failures_and_stops_at_the_maximum():
    delays = [login_delay_seconds(n, free=5, first=30, most=3600) for n in range(1, 14)]

    assert delays == [0, 0, 0, 0, 30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert login_delay_seconds(10**6, free=5, first=30, most=3600) == 3600


@pytest.fixture
def proxied(settings):
    """Intake behind one trusted proxy (nginx), which adds the client's X-Forwarded-For."""
    app = create_app(settings.model_copy(update={"trusted_proxy_hops": 1}))
    app.config["TESTING"] = True
    yield app.test_client()
    app.extensions["db"].dispose()


def test_behind_a_trusted_proxy_failures_count_per_forwarded_client_address(
    proxied, db, admin, settings
):
    proxy = "10.0.0.2"
    for _ in range(6):
        attempt(proxied, "guess", proxy, **{"X-Forwarded-For": ATTACKER})

    attacker = attempt(proxied, PASSWORD, proxy, **{"X-Forwarded-For": ATTACKER})
    the_admin = attempt(proxied, PASSWORD, proxy, **{"X-Forwarded-For": ADMIN_DESK})

    assert attacker.status_code == 429
    assert the_admin.status_code == 200
    with db.transaction() as session:
        assert session.scalars(sa.select(LoginFailure.address)).all() == [ATTACKER]


def test_without_a_trusted_proxy_a_forged_forwarded_address_changes_nothing(
    client, db, admin, settings
):
    settings.login_max_failures = 2
    for n in range(2):
        attempt(client, "guess", ATTACKER, **{"X-Forwarded-For": f"192.0.2.{n}"})

    forged_again = attempt(client, PASSWORD, ATTACKER, **{"X-Forwarded-For": "192.0.2.99"})

    assert forged_again.status_code == 429
    with db.transaction() as session:
        assert session.scalars(sa.select(LoginFailure.address)).all() == [ATTACKER]


def test_wechat_login_is_limited_per_address(client, settings):
    settings.rate_limit_wechat_login_ip = "3 per minute"

    answers = [
        client.post(WECHAT, json={"code": f"resident-{n}"}, environ_base={"REMOTE_ADDR": ATTACKER})
        for n in range(4)
    ]
    elsewhere = client.post(
        WECHAT, json={"code": "resident-9"}, environ_base={"REMOTE_ADDR": ADMIN_DESK}
    )

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[3].get_json()["error"]["message"] == "操作太频繁，请稍后再试。"
    assert int(answers[3].headers["Retry-After"]) > 0
    assert elsewhere.status_code == 200


def test_behind_a_trusted_proxy_the_rate_limit_keys_on_the_forwarded_address(proxied):
    proxied.application.extensions["settings"].rate_limit_wechat_login_ip = "2 per minute"

    def wechat(code: str, client_address: str):
        return proxied.post(
            WECHAT,
            json={"code": code},
            environ_base={"REMOTE_ADDR": "10.0.0.2"},
            headers={"X-Forwarded-For": client_address},
        )

    busy = [wechat(f"r{n}", ATTACKER).status_code for n in range(3)]

    assert busy == [200, 200, 429]
    assert wechat("r9", ADMIN_DESK).status_code == 200


def test_the_worker_purges_failure_counts_once_even_the_longest_wait_is_over(
    client, db, admin, settings
):
    attempt(client, "guess", ATTACKER)
    attempt(client, "guess", ADMIN_DESK)
    with db.transaction() as session:
        session.execute(
            sa.update(LoginFailure)
            .where(LoginFailure.address == ATTACKER)
            .values(last_failed_at=utcnow() - timedelta(days=8, minutes=1))
        )

    purge(db, RetentionPolicy(), service="intake")

    with db.transaction() as session:
        assert session.scalars(sa.select(LoginFailure.address)).all() == [ADMIN_DESK]
