"""Access tokens: EdDSA-signed JWTs that only intake issues and every service verifies.

Example::

    @blp.route("/queue")
    @require_roles("admin")
    def queue(): ...
    principal = current_principal()   # id, roles, name, village_id
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask, current_app, g, request

from shared.errors import Forbidden, Unauthorized

ALGORITHM = "EdDSA"
ROLES = (
    "resident",
    "party_member",
    "grid_worker",
    "grid_leader",
    "admin",
    "area_leader",
    "supervisor",
    "publicist",
)
STAFF_ROLES = frozenset(ROLES) - {"resident", "party_member"}


@dataclass(frozen=True)
class Principal:
    """Who is asking: the token's subject and what it may do."""

    id: uuid.UUID
    roles: frozenset[str] = field(default_factory=frozenset)
    name: str = ""
    village_id: uuid.UUID | None = None

    def has(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))

    @property
    def is_staff(self) -> bool:
        return bool(self.roles & STAFF_ROLES)


def ensure_keypair(private_path: Path, public_path: Path) -> None:
    """Create an Ed25519 key pair for development if none exists (never used in production)."""
    if private_path.exists() and public_path.exists():
        return
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class TokenIssuer:
    """Signs access tokens (intake only: it alone holds the private key)."""

    def __init__(self, private_key_pem: bytes, *, issuer: str, audience: str, ttl_seconds: int):
        self._key = serialization.load_pem_private_key(private_key_pem, password=None)
        self.issuer, self.audience, self.ttl = issuer, audience, ttl_seconds

    def issue(
        self,
        user_id: uuid.UUID,
        roles: Iterable[str],
        name: str = "",
        village_id: uuid.UUID | None = None,
    ) -> tuple[str, int]:
        now = datetime.now(UTC)
        claims = {
            "sub": str(user_id),
            "roles": sorted(set(roles)),
            "name": name,
            "village_id": str(village_id) if village_id else None,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + timedelta(seconds=self.ttl),
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM), self.ttl


class TokenVerifier:
    """Checks signature (EdDSA only), expiry, issuer and audience; returns the Principal."""

    def __init__(self, public_key_pem: bytes, *, issuer: str, audience: str):
        self._key = serialization.load_pem_public_key(public_key_pem)
        self.issuer, self.audience = issuer, audience

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("登录已过期，请重新登录。", code="token_expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("登录凭证无效，请重新登录。", code="invalid_token") from None
        try:
            return Principal(
                id=uuid.UUID(claims["sub"]),
                roles=frozenset(r for r in claims.get("roles", []) if r in ROLES),
                name=claims.get("name") or "",
                village_id=uuid.UUID(claims["village_id"]) if claims.get("village_id") else None,
            )
        except (ValueError, TypeError):
            raise Unauthorized("登录凭证无效，请重新登录。", code="invalid_token") from None


def init_auth(app: Flask, verifier: TokenVerifier) -> None:
    app.extensions["token_verifier"] = verifier


def current_principal(optional: bool = False) -> Principal | None:
    """The caller of this request, from its Bearer token (401 when missing or bad)."""
    if "principal" in g:
        return g.principal
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        if optional:
            return None
        raise Unauthorized()
    verifier: TokenVerifier = current_app.extensions["token_verifier"]
    g.principal = verifier.verify(token.strip())
    return g.principal


F = TypeVar("F", bound=Callable[..., Any])


def require_roles(*roles: str) -> Callable[[F], F]:
    """Let the view run only for a signed-in caller holding one of ``roles`` (any if none)."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {unknown}")

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = current_principal()
            assert principal is not None
            if roles and not principal.has(*roles):
                raise Forbidden()
            return view(*args, **kwargs)

        wrapper._required_roles = roles  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
