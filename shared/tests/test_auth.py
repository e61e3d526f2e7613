"""Access tokens through HTTP: only a valid EdDSA token from our issuer lets a caller in."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from shared.auth import Principal, TokenIssuer, TokenVerifier, refusal_reason
from shared.errors import Unauthorized
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


# --- a token must still speak for its account (account_check) --------------------------------


@pytest.fixture(scope="module")
def checked_client(keys, postgres_server):
    """The tiny service with an account check: ``REFUSED`` maps account ids to a reason."""
    settings = TinySettings(
        app_env="test",
        database_url=postgres_server.create_database("shared"),
        jwt_public_key_file=keys[1],
        log_format="text",
    )
    app = build_app(settings, account_check=lambda principal: REFUSED.get(principal.id))
    app.config["TESTING"] = True
    return app.test_client()


REFUSED: dict[uuid.UUID, str] = {}


def test_a_token_the_account_check_refuses_is_401_asking_to_sign_in_again(checked_client, keys):
    user_id = uuid.uuid4()
    REFUSED[user_id] = "account_inactive"
    token, _ = _issuer(keys[0]).issue(user_id, ["admin"])

    for path in ("/api/v1/me", "/api/v1/township"):
        response = checked_client.get(path, headers=_bearer(token))

        _assert_401(response, "token_revoked")
        assert response.get_json()["error"]["message"] == "登录已失效，请重新登录。"


def test_a_token_the_account_check_lets_through_is_let_in(checked_client, keys):
    token, _ = _issuer(keys[0]).issue(uuid.uuid4(), ["admin"])

    assert checked_client.get("/api/v1/township", headers=_bearer(token)).status_code == 200


def test_a_token_carries_its_issue_time_to_the_microsecond(keys):
    before = datetime.now(UTC)
    token, _ = _issuer(keys[0]).issue(uuid.uuid4(), ["admin"])
    public = serialization.load_pem_public_key(keys[1].read_bytes())
    claims = jwt.decode(token, public, algorithms=["EdDSA"], audience=AUDIENCE)

    assert isinstance(claims["iat"], float)
    assert before.timestamp() <= claims["iat"] <= datetime.now(UTC).timestamp()


def _principal(roles=("admin",), issued_at=None) -> Principal:
    return Principal(
        id=uuid.uuid4(), roles=frozenset(roles), issued_at=issued_at or datetime.now(UTC)
    )


def test_refusal_reason_refuses_a_disabled_account():
    reason = refusal_reason(_principal(), active=False, roles=["admin"], tokens_valid_after=None)

    assert reason == "account_inactive"


def test_refusal_reason_refuses_a_token_claiming_a_role_the_account_lost():
    principal = _principal(roles=("admin", "grid_worker"))

    assert (
        refusal_reason(principal, active=True, roles=["grid_worker"], tokens_valid_after=None)
        == "roles_reduced"
    )
    # Holding more roles than the token claims is fine: the token only says less.
    assert (
        refusal_reason(
            principal,
            active=True,
            roles=["admin", "grid_worker", "supervisor"],
            tokens_valid_after=None,
        )
        is None
    )


def test_refusal_reason_refuses_a_token_issued_before_the_accounts_last_change():
    issued = datetime.now(UTC)
    principal = _principal(issued_at=issued)

    before = refusal_reason(
        principal,
        active=True,
        roles=["admin"],
        tokens_valid_after=issued + timedelta(microseconds=5),
    )
    after = refusal_reason(
        principal,
        active=True,
        roles=["admin"],
        tokens_valid_after=issued - timedelta(microseconds=5),
    )

    assert (before, after) == ("issued_before_change", None)


# --- verified tokens are remembered -------------------------------------------------------------


def _verifier(public_path, remember: int = 4096) -> TokenVerifier:
    return TokenVerifier(
        public_path.read_bytes(), issuer=ISSUER, audience=AUDIENCE, remember=remember
    )


def test_a_remembered_token_answers_with_its_own_principal(keys):
    private, public = keys
    verifier = _verifier(public)
    first, _ = _issuer(private).issue(uuid.uuid4(), ["resident"], "张三")
    second, _ = _issuer(private).issue(uuid.uuid4(), ["admin"], "李四")

    for _ in range(2):  # the second round answers from memory
        assert verifier.verify(first).name == "张三"
        assert verifier.verify(second).roles == frozenset({"admin"})


def test_a_remembered_token_is_refused_once_it_expires(keys, monkeypatch):
    private, public = keys
    verifier = _verifier(public)
    token, ttl = _issuer(private, ttl=60).issue(uuid.uuid4(), ["resident"])
    assert verifier.verify(token).roles == frozenset({"resident"})

    later = time.time() + ttl + 1
    monkeypatch.setattr(time, "time", lambda: later)

    with pytest.raises(Unauthorized) as refused:
        verifier.verify(token)
    assert refused.value.code == "token_expired"


def test_a_refused_token_is_refused_again_and_not_remembered(keys):
    private, public = keys
    verifier = _verifier(public)
    token, _ = _issuer(private).issue(uuid.uuid4(), ["resident"])
    header, payload, _signature = token.split(".")
    forged = f"{header}.{payload}.{_b64(b'not the signature')}"

    for _ in range(2):
        with pytest.raises(Unauthorized) as refused:
            verifier.verify(forged)
        assert refused.value.code == "invalid_token"
    assert verifier.verify(token).roles == frozenset({"resident"})


def test_the_memory_keeps_at_most_its_size_forgetting_the_oldest_first(keys, monkeypatch):
    private, public = keys
    verifier = _verifier(public, remember=2)
    tokens = [_issuer(private).issue(uuid.uuid4(), ["resident"])[0] for _ in range(3)]
    for token in tokens:
        verifier.verify(token)
    decoded = []
    original = jwt.decode

    def counting_decode(token, *args, **kwargs):
        decoded.append(token)
        return original(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)

    verifier.verify(tokens[2])
    verifier.verify(tokens[1])
    assert decoded == []  # the two newest answer from memory
    verifier.verify(tokens[0])
    assert decoded == [tokens[0]]  # the oldest was forgotten and is checked again
