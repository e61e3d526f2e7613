"""Access tokens through HTTP: only a valid EdDSA token from our issuer lets a caller in."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from shared.auth import TokenIssuer
from shared.tests.tinyapp import TinySettings, build_app, make_keys

ISSUER = "service365-intake"
AUDIENCE = "service365"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def client(keys, postgres_server):
    _private, public = keys
    settings = TinySettings(
        app_env="test",
        database_url=postgres_server.create_database("shared"),
        jwt_public_key_file=public,
        log_format="text",
    )
    app = build_app(settings)
    app.config["TESTING"] = True
    return app.test_client()


def _issuer(private_path, audience: str = AUDIENCE, ttl: int = 300) -> TokenIssuer:
    return TokenIssuer(private_path.read_bytes(), issuer=ISSUER, audience=audience, ttl_seconds=ttl)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _claims(**overrides) -> dict:
    now = datetime.now(UTC)
    claims = {
        "sub": str(uuid.uuid4()),
        "roles": ["admin"],
        "name": "李四",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=5)).timestamp()),
    }
    claims.update(overrides)
    return claims


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_401(response, code: str) -> None:
    assert response.status_code == 401
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    error = response.get_json()["error"]
    assert error["code"] == code
    assert "登录" in error["message"]


def test_a_valid_token_makes_the_caller_its_principal(client, keys):
    user_id = uuid.uuid4()
    token, _ = _issuer(keys[0]).issue(user_id, ["resident", "party_member"], "张三")

    response = client.get("/api/v1/me", headers=_bearer(token))

    assert response.status_code == 200
    assert response.get_json() == {
        "id": str(user_id),
        "roles": ["party_member", "resident"],
        "name": "张三",
    }


def test_an_expired_token_is_refused_with_token_expired(client, keys):
    token, _ = _issuer(keys[0], ttl=-120).issue(uuid.uuid4(), ["admin"])

    _assert_401(client.get("/api/v1/me", headers=_bearer(token)), "token_expired")


def test_a_token_whose_claims_were_edited_is_refused(client, keys):
    token, _ = _issuer(keys[0]).issue(uuid.uuid4(), ["resident"])
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["admin"]
    forged = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"

    _assert_401(client.get("/api/v1/township", headers=_bearer(forged)), "invalid_token")


def test_an_unsigned_token_with_alg_none_is_refused(client):
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims()).encode())

    _assert_401(client.get("/api/v1/me", headers=_bearer(f"{header}.{payload}.")), "invalid_token")


def test_a_token_signed_with_another_ed25519_key_is_refused(client, tmp_path):
    other_private, _ = make_keys(tmp_path)
    token, _ = _issuer(other_private).issue(uuid.uuid4(), ["admin"])

    _assert_401(client.get("/api/v1/me", headers=_bearer(token)), "invalid_token")


def test_an_hs256_token_keyed_with_our_public_key_is_refused(client, keys):
    # The classic algorithm-confusion attack: HMAC keyed with the public key the server holds.
    public_pem = keys[1].read_bytes()
    serialization.load_pem_public_key(public_pem)  # it is the real public key
    signing_input = ".".join(
        [
            _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()),
            _b64(json.dumps(_claims()).encode()),
        ]
    )
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()

    response = client.get("/api/v1/township", headers=_bearer(f"{signing_input}.{_b64(mac)}"))

    _assert_401(response, "invalid_token")


def test_a_token_for_another_audience_is_refused(client, keys):
    token, _ = _issuer(keys[0], audience="another-system").issue(uuid.uuid4(), ["admin"])

    _assert_401(client.get("/api/v1/me", headers=_bearer(token)), "invalid_token")


def test_a_token_from_another_issuer_is_refused(client, keys):
    private = serialization.load_pem_private_key(keys[0].read_bytes(), password=None)
    token = jwt.encode(_claims(iss="someone-else"), private, algorithm="EdDSA")

    _assert_401(client.get("/api/v1/me", headers=_bearer(token)), "invalid_token")


def test_a_caller_without_the_role_is_forbidden(client, keys):
    token, _ = _issuer(keys[0]).issue(uuid.uuid4(), ["resident"])

    response = client.get("/api/v1/township", headers=_bearer(token))

    assert response.status_code == 403
    error = response.get_json()["error"]
    assert error["code"] == "forbidden"
    assert error["message"] == "您没有权限进行此操作。"


def test_a_caller_with_the_role_is_let_in(client, keys):
    token, _ = _issuer(keys[0]).issue(uuid.uuid4(), ["grid_worker", "admin"])

    response = client.get("/api/v1/township", headers=_bearer(token))

    assert response.status_code == 200


@pytest.mark.parametrize("header", [None, "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt"])
def test_a_request_without_a_usable_bearer_token_is_unauthorized(client, header):
    headers = {"Authorization": header} if header is not None else {}

    response = client.get("/api/v1/me", headers=headers)

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] in ("unauthorized", "invalid_token")
