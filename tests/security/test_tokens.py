"""Bad access tokens are refused by every one of the five services, each running as its real
processes, on a route that answers 200 to the same person's good token.

Tokens are EdDSA JWTs that only intake signs (shared/auth.py). A token altered after signing, one
that has expired, one that says ``alg: none`` or ``HS256`` (signed with the public key as an HMAC
secret), one signed by another key, and the token of an account an admin has since disabled at
intake (``account.upserted`` reaches each service over the broker): each is a 401 with a Chinese
message, never a 200 and never a 5xx.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from shared.testing import wait_for
from tests.e2e.harness import PASSWORD, Api, Harness, Township, staff_login

# The whole system runs for these (tests/security/conftest.py): a minute to start on two cores.
pytestmark = pytest.mark.slow

# Each service: a route a signed-in grid worker reads with 200, and the table that holds the
# service's own copy of the account (``account.upserted``).
ROUTES = {
    "intake": ("/api/v1/me", "users"),
    "dispatch": ("/api/v1/tasks/mine", "staff"),
    "scoring": ("/api/v1/points/mine", "people"),
    "notify": ("/api/v1/notifications", "people"),
    "feed": ("/api/v1/posts", "people"),
}
TIMEOUT = 30


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, claims: dict) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


def call(harness: Harness, service: str, token: str) -> requests.Response:
    path, _table = ROUTES[service]
    headers = {"Authorization": f"Bearer {token}"}
    return requests.get(harness.url(service) + path, headers=headers, timeout=15)


def refusals(harness: Harness, token: str, code: str) -> list[str]:
    """The services that did not answer ``token`` with a 401 of ``code`` and a Chinese message."""
    wrong = []
    for service in ROUTES:
        answer = call(harness, service, token)
        if answer.status_code != 401:
            wrong.append(f"{service}: {answer.status_code} {answer.text[:200]}")
            continue
        error = answer.json()["error"]
        if error["code"] != code or not any("\u4e00" <= c <= "\u9fff" for c in error["message"]):
            wrong.append(f"{service}: {error}")
    return wrong


@pytest.fixture(scope="module")
def worker(township: Township) -> Api:
    """A grid worker of the township, signed in, whom every service has heard of."""
    harness = township.harness
    body = {
        "username": "sec-tok-worker",
        "name": "杨晓东",
        "roles": ["grid_worker"],
        "village_id": township.village_id,
        "password": PASSWORD,
    }
    user_id = township.admin.post("/api/v1/accounts", body, expect=201)["id"]
    for service, (_path, table) in ROUTES.items():
        sql = f"SELECT count(*) FROM {table} WHERE id = :id AND active"
        wait_for(lambda s=service, q=sql: harness.scalar(s, q, id=user_id) == 1, timeout=TIMEOUT)
    return staff_login(harness.url("intake"), "sec-tok-worker", PASSWORD)


@pytest.fixture(scope="module")
def claims(worker: Api) -> dict:
    """The good token's claims, for tokens forged from them."""
    return jwt.decode(worker.token, options={"verify_signature": False})


@pytest.fixture(scope="module")
def real_key(harness: Harness):
    """intake's own signing key: a token it signs with a defect is still refused."""
    return load_pem_private_key(harness.private_key.read_bytes(), password=None)


def test_the_good_token_is_let_in_by_every_service(harness, worker):
    """The baseline each refusal below is measured against."""
    for service in ROUTES:
        assert call(harness, service, worker.token).status_code == 200, service


def test_a_token_with_a_changed_signature_is_refused_everywhere(harness, worker):
    head, body, signature = worker.token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[10] ^= 0x01
    tampered = f"{head}.{body}.{b64(bytes(raw))}"

    assert refusals(harness, tampered, "invalid_token") == []


def test_a_token_whose_roles_were_raised_to_admin_after_signing_is_refused_everywhere(
    harness, worker, claims
):
    head, _body, signature = worker.token.split(".")
    raised = {**claims, "roles": ["admin", "grid_worker"]}
    tampered = f"{head}.{b64(json.dumps(raised).encode())}.{signature}"

    assert refusals(harness, tampered, "invalid_token") == []


def test_an_expired_token_signed_by_intake_is_refused_everywhere(harness, worker, claims, real_key):
    now = datetime.now(UTC)
    old = {
        **claims,
        "iat": (now - timedelta(hours=2)).timestamp(),
        "nbf": int((now - timedelta(hours=2)).timestamp()),
        "exp": int((now - timedelta(minutes=5)).timestamp()),
        "jti": str(uuid.uuid4()),
    }
    expired = jwt.encode(old, real_key, algorithm="EdDSA")

    assert refusals(harness, expired, "token_expired") == []


def test_a_token_that_says_alg_none_is_refused_everywhere(harness, worker, claims):
    for alg in ("none", "None", "NONE"):
        token = unsigned({"alg": alg, "typ": "JWT"}, claims) + "."
        assert refusals(harness, token, "invalid_token") == [], alg


def test_a_token_signed_with_the_public_key_as_an_hmac_secret_is_refused_everywhere(
    harness, worker, claims
):
    """The old key-confusion attack: the public key is no secret, so HS256 must never count."""
    message = unsigned({"alg": "HS256", "typ": "JWT"}, claims)
    secret = harness.public_key.read_bytes()
    signature = hmac.new(secret, message.encode(), hashlib.sha256).digest()

    assert refusals(harness, f"{message}.{b64(signature)}", "invalid_token") == []


def test_a_token_signed_by_another_key_is_refused_everywhere(harness, worker, claims):
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA")

    assert refusals(harness, forged, "invalid_token") == []


def test_a_disabled_accounts_token_is_refused_everywhere_once_the_news_arrives(
    harness, township, worker
):
    """Runs last in this module: it ends the worker's account."""
    user_id = worker.user["id"]
    for service in ROUTES:
        assert call(harness, service, worker.token).status_code == 200, service

    township.admin.patch(f"/api/v1/accounts/{user_id}", {"active": False})

    for service, (_path, table) in ROUTES.items():
        sql = f"SELECT count(*) FROM {table} WHERE id = :id AND NOT active"
        wait_for(lambda s=service, q=sql: harness.scalar(s, q, id=user_id) == 1, timeout=TIMEOUT)
    assert refusals(harness, worker.token, "token_revoked") == []
    login = requests.post(
        harness.url("intake") + "/api/v1/auth/login",
        json={"username": "sec-tok-worker", "password": PASSWORD},
        timeout=15,
    )
    assert login.status_code == 401 and login.json()["error"]["code"] == "wrong_credentials"
