"""Access tokens: EdDSA-signed JWTs that only intake issues and every service verifies.

Example::

    @blp.route("/queue")
    @require_roles("admin")
    def queue(): ...
    principal = current_principal()   # id, roles, name, village_id

A service also says whether a signed token still speaks for its account (the account may have
been disabled, demoted or re-passworded since the token was issued)::

    def check(principal: Principal) -> str | None:
        account = accounts.get(principal.id)
        return refusal_reason(principal, active=account.active, roles=account.roles,
                              tokens_valid_after=account.tokens_valid_after)

    init_auth(app, verifier, account_check=check)   # None: the token counts; else 401
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import jwt
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask, current_app, g, request

from shared.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)

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
    # Staff of a township department (分管部门) or a county department: they handle the items
    # their department holds (dispatch's department members).
    "department_staff",
)
STAFF_ROLES = frozenset(ROLES) - {"resident", "party_member"}


@dataclass(frozen=True)
class Principal:
    """Who is asking: the token's subject and what it may do."""

    id: uuid.UUID
    roles: frozenset[str] = field(default_factory=frozenset)
    name: str = ""
    village_id: uuid.UUID | None = None
    # The token's ``iat`` (UTC): compared with the account's ``tokens_valid_after``.
    issued_at: datetime | None = None

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
            # With its microseconds (a JSON number may have a fraction, RFC 7519 §2), so that a
            # token is told apart from a change of its account made in the same second.
            "iat": now.timestamp(),
            "nbf": now,
            "exp": now + timedelta(seconds=self.ttl),
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM), self.ttl


class TokenVerifier:
    """Checks signature (EdDSA only), expiry, issuer and audience; returns the Principal.

    A token that verified is remembered with its Principal and expiry, up to ``remember`` tokens
    per process (the oldest forgotten first), because a mini-program sends the same token with
    every request and the same bytes always verify the same way: the signature check and the
    claims' parsing were a tenth of a small read's CPU. Expiry is still checked on every use, and
    the account check (``init_auth``) still runs on every request. A refused token is not
    remembered.
    """

    def __init__(self, public_key_pem: bytes, *, issuer: str, audience: str, remember: int = 4096):
        self._key = serialization.load_pem_public_key(public_key_pem)
        self.issuer, self.audience = issuer, audience
        self._remember = remember
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None:
            principal, expires_at = known
            # PyJWT's own rule: expired once ``exp`` <= now.
            if expires_at <= time.time():
                raise Unauthorized("登录已过期，请重新登录。", code="token_expired")
            return principal
        principal, expires_at = self._decode(token)
        if self._remember > 0:
            with self._lock:
                while len(self._verified) >= self._remember:
                    self._verified.pop(next(iter(self._verified)))
                self._verified[token] = (principal, expires_at)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
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
            principal = Principal(
                id=uuid.UUID(claims["sub"]),
                roles=frozenset(r for r in claims.get("roles", []) if r in ROLES),
                name=claims.get("name") or "",
                village_id=uuid.UUID(claims["village_id"]) if claims.get("village_id") else None,
                issued_at=datetime.fromtimestamp(float(claims["iat"]), UTC),
            )
            return principal, float(claims["exp"])
        except (ValueError, TypeError, OverflowError, OSError):
            raise Unauthorized("登录凭证无效，请重新登录。", code="invalid_token") from None


AccountCheck = Callable[[Principal], str | None]

TOKEN_REVOKED_MESSAGE = "登录已失效，请重新登录。"


def refusal_reason(
    principal: Principal,
    *,
    active: bool,
    roles: Iterable[str],
    tokens_valid_after: datetime | None,
) -> str | None:
    """Why a verified token no longer speaks for its account (None: it still does).

    ``account_inactive``: the account was disabled; ``roles_reduced``: the token claims a role the
    account no longer holds; ``issued_before_change``: the token is older than the account's last
    password, role or status change (intake's clock stamps both).
    """
    if not active:
        return "account_inactive"
    if principal.roles - set(roles):
        return "roles_reduced"
    if (
        tokens_valid_after is not None
        and principal.issued_at is not None
        and principal.issued_at < tokens_valid_after
    ):
        return "issued_before_change"
    return None


def snapshot_account_check(
    db: Any,
    model: type,
    *,
    known: Any = None,
    refuse_unknown: bool = False,
) -> AccountCheck:
    """The account check of a service that keeps accounts (a ``model`` row per user id with
    ``active``, ``roles`` and ``tokens_valid_after``): a token whose account has since been
    disabled, demoted or re-passworded is refused.

    An account not heard of yet (no row, or a row whose ``known`` SQL expression is false: only
    a placeholder) is let in on its signed token alone, since its ``account.upserted`` may still
    be on the way; the service that owns the accounts (intake) passes ``refuse_unknown``.

    Runs on every request with a token, so it is one Core SELECT of four columns in autocommit
    (``Database.read``): no ORM instance, no BEGIN/COMMIT round trips.

    Example: ``snapshot_account_check(db, Person, known=Person.account_known)``.
    """
    columns = [model.active, model.roles, model.tokens_valid_after]
    if known is not None:
        columns.append(sa.case((known, True), else_=False).label("known"))
    query = sa.select(*columns).where(model.id == sa.bindparam("user_id"))

    def check(principal: Principal) -> str | None:
        with db.read() as conn:
            row = conn.execute(query, {"user_id": principal.id}).first()
        if row is None:
            return "account_unknown" if refuse_unknown else None
        if known is not None and not row.known:
            return None
        return refusal_reason(
            principal,
            active=row.active,
            roles=row.roles or [],
            tokens_valid_after=row.tokens_valid_after,
        )

    return check


def init_auth(
    app: Flask, verifier: TokenVerifier, account_check: AccountCheck | None = None
) -> None:
    """Let ``current_principal`` verify tokens; ``account_check`` (principal → refusal reason or
    None) refuses a signed token whose account has changed since it was issued."""
    app.extensions["token_verifier"] = verifier
    app.extensions["account_check"] = account_check


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
    principal = verifier.verify(token.strip())
    account_check: AccountCheck | None = current_app.extensions.get("account_check")
    if account_check is not None:
        reason = account_check(principal)
        if reason:
            log.info("token of account %s refused: %s", principal.id, reason)
            raise Unauthorized(TOKEN_REVOKED_MESSAGE, code="token_revoked")
    g.principal = principal
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
