"""Residents sign in with a WeChat login code, against a local server that plays WeChat."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from intake.app import create_app
from intake.models import User

WECHAT_LOGIN = "/api/v1/auth/wechat"
APP_ID, APP_SECRET = "wx0123456789abcdef", "test-app-secret"
SESSION_KEY = "tiHsd5f1bQ+session-key-never-leaves"

# What the fake WeChat answers for each js_code: (HTTP status, body).
ANSWERS: dict[str, tuple[int, object]] = {
    "bad-code": (200, {"errcode": 40029, "errmsg": "invalid code"}),
    "used-code": (200, {"errcode": 40163, "errmsg": "code been used"}),
    "too-fast": (200, {"errcode": 45011, "errmsg": "api minute-quota reach limit"}),
    "risky": (200, {"errcode": 40226, "errmsg": "high risk user"}),
    "busy": (200, {"errcode": -1, "errmsg": "system error"}),
    "bad-secret": (200, {"errcode": 40125, "errmsg": "invalid appsecret"}),
    "crash": (500, "<html>Internal Server Error</html>"),
    "html": (200, "<html>maintenance</html>"),
}


class FakeWeChat:
    """A local ``jscode2session`` that records each query and answers like WeChat does.

    A code ``ok-<name>`` signs in openid ``o-<name>`` (with unionid ``u-<name>``); the codes in
    ``ANSWERS`` give WeChat's errors.
    """

    def __init__(self) -> None:
        self.queries: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.queries.append({"path": url.path, **query})
                code = query.get("js_code", "")
                if url.path != "/sns/jscode2session":
                    status, body = 404, {"errcode": 404, "errmsg": "not found"}
                elif code.startswith("ok-"):
                    name = code.removeprefix("ok-")
                    status, body = (
                        200,
                        {
                            "openid": f"o-{name}",
                            "session_key": SESSION_KEY,
                            "unionid": f"u-{name}",
                        },
                    )
                else:
                    status, body = ANSWERS.get(code, (200, {"errcode": 40029, "errmsg": "?"}))
                raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                # WeChat answers JSON with a text/plain content type.
                self.send_header("Content-Type", "text/plain" if status == 200 else "text/html")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeWeChat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def wechat() -> Iterator[FakeWeChat]:
    with FakeWeChat() as fake:
        yield fake


def real_app(settings, base_url: str, **changes):
    return create_app(
        settings.model_copy(
            update={
                "wechat_mode": "real",
                "wechat_api_base": base_url,
                "wechat_app_id": APP_ID,
                "wechat_app_secret": APP_SECRET,
                "wechat_timeout_seconds": 0.5,
                **changes,
            }
        )
    )


@pytest.fixture
def real_client(settings, wechat):
    return real_app(settings, wechat.url).test_client()


def error_of(response) -> dict:
    return response.get_json()["error"]


def test_first_login_creates_the_resident_and_sends_wechat_what_it_needs(
    real_client, wechat, db, outbox_rows
):
    response = real_client.post(WECHAT_LOGIN, json={"code": "ok-zhang"})

    assert response.status_code == 200
    assert wechat.queries == [
        {
            "path": "/sns/jscode2session",
            "appid": APP_ID,
            "secret": APP_SECRET,
            "js_code": "ok-zhang",
            "grant_type": "authorization_code",
        }
    ]
    body = response.get_json()
    assert body["token_type"] == "Bearer" and body["access_token"] and body["expires_in"] > 0
    assert body["user"]["roles"] == ["resident"]
    with db.transaction() as session:
        user = session.scalars(sa.select(User).where(User.openid == "o-zhang")).one()
    assert str(user.id) == body["user"]["id"]
    assert user.unionid == "u-zhang"
    [event] = outbox_rows("account.upserted")
    assert event["envelope"]["data"]["user_id"] == str(user.id)
    assert event["envelope"]["data"]["roles"] == ["resident"]


def test_second_login_with_the_same_openid_is_the_same_resident_and_announces_nothing_new(
    real_client, db, outbox_rows
):
    first = real_client.post(WECHAT_LOGIN, json={"code": "ok-li"}).get_json()
    second = real_client.post(WECHAT_LOGIN, json={"code": "ok-li"}).get_json()

    assert first["user"]["id"] == second["user"]["id"]
    assert first["access_token"] != second["access_token"]
    assert len(outbox_rows("account.upserted")) == 1


def test_the_session_key_is_never_returned_or_stored(real_client, db, outbox_rows):
    response = real_client.post(WECHAT_LOGIN, json={"code": "ok-wang"})

    assert SESSION_KEY not in response.get_data(as_text=True)
    with db.engine.connect() as conn:
        users = [str(row) for row in conn.execute(sa.select(User.__table__))]
    events = [json.dumps(row["envelope"]) for row in outbox_rows()]
    assert not [text for text in users + events if SESSION_KEY in text]


def test_the_token_is_accepted_by_me(real_client):
    token = real_client.post(WECHAT_LOGIN, json={"code": "ok-zhao"}).get_json()["access_token"]

    me = real_client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})

    assert me.status_code == 200 and me.get_json()["roles"] == ["resident"]


@pytest.mark.parametrize(
    ("code", "status", "error_code"),
    [
        ("bad-code", 401, "wechat_code_invalid"),
        ("used-code", 401, "wechat_code_invalid"),
        ("too-fast", 429, "wechat_rate_limited"),
        ("risky", 403, "wechat_user_blocked"),
        ("busy", 503, "wechat_unavailable"),
        ("bad-secret", 503, "wechat_unavailable"),
        ("crash", 503, "wechat_unavailable"),
        ("html", 503, "wechat_unavailable"),
    ],
)
def test_wechat_errors_are_told_to_the_resident_in_chinese_and_create_nobody(
    real_client, db, code, status, error_code, outbox_rows
):
    response = real_client.post(WECHAT_LOGIN, json={"code": code})

    assert response.status_code == status
    assert error_of(response)["code"] == error_code
    assert "微信" in error_of(response)["message"]
    if status == 429:
        assert int(response.headers["Retry-After"]) > 0
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(User)).scalar_one() == 0
    assert outbox_rows() == []


def test_invalid_code_answer_tells_the_resident_to_try_again(real_client):
    response = real_client.post(WECHAT_LOGIN, json={"code": "bad-code"})

    assert error_of(response)["message"] == "微信登录凭证无效或已过期，请重新进入小程序后再试。"


def test_wechat_that_does_not_answer_in_time_is_503(settings):
    # A socket that listens but never accepts: the connection opens, no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        base_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = real_app(settings, base_url, wechat_timeout_seconds=0.2).test_client()

        response = client.post(WECHAT_LOGIN, json={"code": "ok-slow"})

    assert response.status_code == 503
    assert error_of(response)["message"] == "微信登录服务暂时不可用，请稍后再试。"


def test_wechat_that_cannot_be_reached_is_503(settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    client = real_app(settings, f"http://127.0.0.1:{closed_port}").test_client()

    response = client.post(WECHAT_LOGIN, json={"code": "ok-nobody"})

    assert response.status_code == 503


def test_real_mode_without_app_id_or_secret_is_503_and_calls_nobody(settings, wechat):
    client = real_app(settings, wechat.url, wechat_app_id="", wechat_app_secret="").test_client()

    response = client.post(WECHAT_LOGIN, json={"code": "ok-zhang"})

    assert response.status_code == 503
    assert error_of(response)["code"] == "wechat_not_configured"
    assert "AppID" in error_of(response)["message"]
    assert wechat.queries == []


def test_missing_code_is_422(real_client):
    response = real_client.post(WECHAT_LOGIN, json={})

    assert response.status_code == 422
    assert error_of(response)["details"]["json"]["code"] == ["此项为必填。"]


def test_dev_mode_takes_the_code_as_the_openid(client, db):
    first = client.post(WECHAT_LOGIN, json={"code": "demo-resident-1"})
    second = client.post(WECHAT_LOGIN, json={"code": "demo-resident-1"})

    assert first.status_code == second.status_code == 200
    assert first.get_json()["user"]["id"] == second.get_json()["user"]["id"]
    with db.transaction() as session:
        user = session.scalars(sa.select(User).where(User.openid == "demo-resident-1")).one()
    assert str(user.id) == first.get_json()["user"]["id"]


def test_two_first_logins_at_once_make_one_resident(app, outbox_rows):
    barrier = threading.Barrier(4)
    answers: list[str] = []

    def sign_in() -> None:
        own_client = app.test_client()
        barrier.wait()
        response = own_client.post(WECHAT_LOGIN, json={"code": "same-phone"})
        answers.append(f"{response.status_code} {response.get_json()['user']['id']}")

    threads = [threading.Thread(target=sign_in) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(answers) == 4 and len(set(answers)) == 1 and answers[0].startswith("200 ")
    assert len(outbox_rows("account.upserted")) == 1


def test_disabled_resident_cannot_sign_in(client, make_user):
    make_user(roles=["resident"], openid="demo-resident-9", active=False)

    response = client.post(WECHAT_LOGIN, json={"code": "demo-resident-9"})

    assert response.status_code == 403
    assert error_of(response)["code"] == "account_disabled"
