"""Accounts and login: one function per thing a person does.

Residents sign in with WeChat (found or created by openid); staff sign in with a username and an
argon2 password; admins create and change staff accounts. Every change to an account writes
``account.upserted`` to the outbox in the same transaction, so the other services learn of it.
Admin use cases take the caller's ``Session`` (the caller owns the transaction, so the CLI can
seed many accounts in one); the sign-in use cases take the ``Database`` because a failed password
must commit its failure count and still answer an error.

A sign-in answers a short-lived access token and a refresh token. The refresh token is opaque,
kept only as its SHA-256, and rotates on use; showing a used one again (it was copied) revokes its
whole family. Both stop counting when the account is disabled, loses a role or gets a new
password (``tokens_valid_after``). Failed staff logins are counted per (username, client
address) with growing delays, so nobody can lock another person out from their own address.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from intake.domain import SHANGHAI, login_delay_seconds
from intake.models import LoginFailure, RefreshToken, User, Village
from intake.wechat import WeChatLogin
from shared.auth import TOKEN_REVOKED_MESSAGE, TokenIssuer
from shared.db import Database, utcnow
from shared.errors import Conflict, Forbidden, Invalid, NotFound, TooManyRequests, Unauthorized
from shared.events import emit
from shared.pagination import keyset_page

log = logging.getLogger(__name__)

ACCOUNT_UPSERTED = "account.upserted"
WRONG_CREDENTIALS = "用户名或密码错误。"
# Failed logins older than this are forgotten: the count of that address starts again.
FAILURE_MEMORY = timedelta(hours=24)

_hasher = PasswordHasher()


class LoginThrottled(TooManyRequests):
    """Too many wrong passwords from one address for one username: that address waits (a
    growing delay; ``Retry-After`` says how long); other addresses are not held back."""

    status, code, default_message = 429, "login_throttled", "登录失败次数过多，请稍后再试。"


@dataclass(frozen=True)
class LoginPolicy:
    """How failed staff logins slow an address down (settings ``LOGIN_*``)."""

    max_failures: int = 5
    delay_seconds: int = 30
    delay_max_seconds: int = 3600


@dataclass(frozen=True)
class SignedIn:
    """An access token, a refresh token and the account they belong to."""

    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    user: User
    token_type: str = "Bearer"


# --- passwords -------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@functools.cache
def _dummy_hash() -> str:
    """A hash nobody knows the password of: unknown usernames cost one verify too."""
    return _hasher.hash(secrets.token_urlsafe(24))


def _password_matches(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def normalize_username(username: str) -> str:
    return username.strip().lower()


# --- events ----------------------------------------------------------------------------------


def account_event_data(user: User) -> dict[str, Any]:
    """What ``account.upserted`` tells the other services (never a password hash)."""
    return {
        "user_id": user.id,
        "username": user.username,
        "name": user.name,
        "roles": sorted(user.roles),
        "phone": user.phone,
        "village_id": user.village_id,
        "active": user.active,
        "tokens_valid_after": user.tokens_valid_after,
        # Grows with every change: a consumer ignores a snapshot older than the one it holds.
        "revision": user.revision,
        # notify sends WeChat subscribe messages to residents, and only intake knows the openid.
        "openid": user.openid,
    }


def _announce(session: Session, user: User) -> None:
    """Announce a change of the account under its next ``revision``."""
    user.revision = (user.revision or 0) + 1
    session.flush()
    emit(session, ACCOUNT_UPSERTED, account_event_data(user))


def announce_all_accounts(session: Session) -> int:
    """Emit ``account.upserted`` again for every account (for a service added later).

    Each goes out under its current ``revision``: a consumer that holds it already ignores it.
    """
    count = 0
    for user in session.scalars(sa.select(User).order_by(User.created_at)).yield_per(500):
        emit(session, ACCOUNT_UPSERTED, account_event_data(user))
        count += 1
    return count


# --- residents -------------------------------------------------------------------------------


def sign_in_resident(
    db: Database, wechat: WeChatLogin, issuer: TokenIssuer, code: str, *, refresh_ttl: timedelta
) -> SignedIn:
    """WeChat login: the resident is created on first sign-in, found by openid afterwards."""
    identity = wechat.code_to_session(code)
    try:
        user = _find_or_create_resident(db, identity.openid, identity.unionid)
    except IntegrityError:
        # Two first sign-ins with the same openid at once: the other one created the resident.
        user = _find_or_create_resident(db, identity.openid, identity.unionid)
    if not user.active:
        raise Forbidden("该账号已停用，请联系村或乡镇管理员。", code="account_disabled")
    with db.transaction() as session:
        return _issue(session, issuer, user, refresh_ttl)


def _find_or_create_resident(db: Database, openid: str, unionid: str | None) -> User:
    with db.transaction() as session:
        user = session.scalars(sa.select(User).where(User.openid == openid)).one_or_none()
        if user is None:
            user = User(openid=openid, unionid=unionid, name="", roles=["resident"])
            session.add(user)
            _announce(session, user)
        elif unionid and user.unionid != unionid:
            user.unionid = unionid
    return user


# --- staff -----------------------------------------------------------------------------------


def sign_in_staff(
    db: Database,
    issuer: TokenIssuer,
    username: str,
    password: str,
    *,
    address: str,
    policy: LoginPolicy,
    refresh_ttl: timedelta,
) -> SignedIn:
    """Password login. A wrong username, a wrong password and a disabled account's right password
    answer alike; failures slow down only the address they come from, for that username."""
    with db.transaction() as session:
        outcome = _check_password(
            session,
            normalize_username(username)[:64],
            (address or "unknown")[:64],
            password,
            policy,
        )
        if not isinstance(outcome, Exception):
            return _issue(session, issuer, outcome, refresh_ttl)
    # Raised only now, so that the failure count above is committed.
    raise outcome


def _check_password(
    session: Session, username: str, address: str, password: str, policy: LoginPolicy
) -> User | Exception:
    now = utcnow()
    failure = _failures_of(session, username, address)
    if failure.blocked_until and failure.blocked_until > now:
        # Not even checked: a waiting address learns nothing, and costs no argon2 work.
        return _throttled(failure.blocked_until, now)
    user = session.scalars(sa.select(User).where(User.username == username)).one_or_none()
    # Same cost whether or not the user exists: no user enumeration by timing.
    matches = _password_matches(user.password_hash if user else None, password)
    if user is None or not matches or not user.active:
        # A disabled account's right password answers exactly as a wrong one (no hint that the
        # password is right) and counts as a failure too.
        if failure.last_failed_at and now - failure.last_failed_at > FAILURE_MEMORY:
            failure.failures = 0
        failure.failures += 1
        failure.last_failed_at = now
        delay = login_delay_seconds(
            failure.failures,
            free=policy.max_failures,
            first=policy.delay_seconds,
            most=policy.delay_max_seconds,
        )
        if delay:
            failure.blocked_until = now + timedelta(seconds=delay)
            log.warning(
                "login of %r from %s held back %ss after %s failures",
                username,
                address,
                delay,
                failure.failures,
            )
            return _throttled(failure.blocked_until, now)
        return Unauthorized(WRONG_CREDENTIALS, code="wrong_credentials")
    session.delete(failure)
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return user


def _failures_of(session: Session, username: str, address: str) -> LoginFailure:
    """The failure count of (username, address), made if missing and locked for this attempt,
    so that attempts from one address for one username are counted one after the other."""
    dialect = session.get_bind().dialect.name
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(LoginFailure)
    session.execute(
        insert.values(username=username, address=address, failures=0).on_conflict_do_nothing()
    )
    return session.scalars(
        sa.select(LoginFailure)
        .where(LoginFailure.username == username, LoginFailure.address == address)
        .with_for_update()
    ).one()


def _throttled(until: datetime, now: datetime) -> LoginThrottled:
    local = until.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
    return LoginThrottled(
        f"登录失败次数过多，请于 {local}（北京时间）后再试。",
        retry_after=max(1, math.ceil((until - now).total_seconds())),
        details={"retry_at": until.isoformat()},
    )


# --- tokens ----------------------------------------------------------------------------------


def _issue(
    session: Session,
    issuer: TokenIssuer,
    user: User,
    refresh_ttl: timedelta,
    family_id: uuid.UUID | None = None,
) -> SignedIn:
    """A new access token and a new refresh token (of ``family_id``, or of a new family)."""
    raw = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        RefreshToken(
            user_id=user.id,
            family_id=family_id or uuid.uuid4(),
            token_hash=_refresh_hash(raw),
            created_at=now,
            expires_at=now + refresh_ttl,
        )
    )
    token, expires_in = issuer.issue(user.id, user.roles, user.name, user.village_id)
    return SignedIn(
        access_token=token,
        expires_in=expires_in,
        refresh_token=raw,
        refresh_expires_in=int(refresh_ttl.total_seconds()),
        user=user,
    )


def _refresh_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def refresh_sign_in(
    db: Database, issuer: TokenIssuer, raw: str, *, refresh_ttl: timedelta
) -> SignedIn:
    """Trade a refresh token for a new access token and a new refresh token (rotation)."""
    with db.transaction() as session:
        outcome = _rotate(session, issuer, raw, refresh_ttl)
    # Raised only now, so that a family revoked on reuse stays revoked.
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _rotate(
    session: Session, issuer: TokenIssuer, raw: str, refresh_ttl: timedelta
) -> SignedIn | Exception:
    refused = Unauthorized(TOKEN_REVOKED_MESSAGE, code="invalid_refresh_token")
    row = session.scalars(
        sa.select(RefreshToken)
        .where(RefreshToken.token_hash == _refresh_hash(raw))
        .with_for_update()
    ).one_or_none()
    now = utcnow()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        return refused
    if row.used_at is not None:
        # A rotated token shown again: one of two holders copied it. Neither keeps the session.
        log.warning("refresh token of account %s used twice: family revoked", row.user_id)
        _revoke_family(session, row.family_id, now)
        return refused
    user = session.get(User, row.user_id)
    if (
        user is None
        or not user.active
        or (user.tokens_valid_after is not None and row.created_at < user.tokens_valid_after)
    ):
        _revoke_family(session, row.family_id, now)
        return refused
    row.used_at = now
    return _issue(session, issuer, user, refresh_ttl, family_id=row.family_id)


def sign_out(db: Database, raw: str) -> None:
    """Revoke the refresh token's family (an unknown token is nothing to do)."""
    with db.transaction() as session:
        family_id = session.scalar(
            sa.select(RefreshToken.family_id).where(RefreshToken.token_hash == _refresh_hash(raw))
        )
        if family_id is not None:
            _revoke_family(session, family_id, utcnow())


def _revoke_family(session: Session, family_id: uuid.UUID, now: datetime) -> None:
    session.execute(
        sa.update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def my_profile(session: Session, user_id: uuid.UUID) -> User:
    """The signed-in person's own account."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("未找到您的账号，请重新登录。", code="account_not_found")
    return user


# --- admins manage accounts ------------------------------------------------------------------


def create_account(
    session: Session,
    *,
    username: str,
    name: str,
    roles: list[str],
    phone: str | None = None,
    village_id: uuid.UUID | None = None,
    password: str | None = None,
    active: bool = True,
) -> User:
    """A new staff account (no password means it cannot sign in until one is set)."""
    username = normalize_username(username)
    if session.scalars(sa.select(User.id).where(User.username == username)).first():
        raise Conflict(f"用户名 {username} 已被使用。", code="username_taken")
    _check_village(session, village_id)
    user = User(
        username=username,
        name=name,
        roles=sorted(set(roles)),
        phone=phone,
        village_id=village_id,
        active=active,
        password_hash=hash_password(password) if password else None,
    )
    session.add(user)
    try:
        _announce(session, user)
    except IntegrityError:
        raise Conflict(f"用户名 {username} 已被使用。", code="username_taken") from None
    return user


def change_account(session: Session, user_id: uuid.UUID, changes: dict[str, Any]) -> User:
    """Change name, phone, roles, village, active or password; announced when anything changed."""
    user = get_account(session, user_id, for_update=True)
    changed = access_changed = False
    if "village_id" in changes:
        _check_village(session, changes["village_id"])
    if "roles" in changes:
        changes = {**changes, "roles": sorted(set(changes["roles"]))}
    for field in ("name", "phone", "roles", "village_id", "active"):
        if field in changes and getattr(user, field) != changes[field]:
            setattr(user, field, changes[field])
            changed = True
            access_changed = access_changed or field in ("roles", "active")
    if changes.get("password"):
        user.password_hash = hash_password(changes["password"])
        if user.username:  # a new password also lifts the delays of earlier failures
            session.execute(sa.delete(LoginFailure).where(LoginFailure.username == user.username))
        changed = access_changed = True
    if access_changed:
        user.tokens_valid_after = utcnow()
    if changed:
        _announce(session, user)
    return user


def get_account(session: Session, user_id: uuid.UUID, *, for_update: bool = False) -> User:
    stmt = sa.select(User).where(User.id == user_id)
    user = session.scalars(stmt.with_for_update() if for_update else stmt).one_or_none()
    if user is None:
        raise NotFound("未找到该账号。", code="account_not_found")
    return user


def list_accounts(
    session: Session,
    *,
    role: str | None = None,
    village_id: uuid.UUID | None = None,
    q: str | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> tuple[list[User], str | None]:
    """Accounts, newest first, one keyset page at a time."""
    stmt = sa.select(User)
    if role:
        stmt = stmt.where(_holds_role(session, role))
    if village_id:
        stmt = stmt.where(User.village_id == village_id)
    if q and q.strip():
        pattern = "%" + _escape_like(q.strip()) + "%"
        stmt = stmt.where(
            sa.or_(
                User.name.ilike(pattern, escape="\\"),
                User.username.ilike(pattern, escape="\\"),
                User.phone.ilike(pattern, escape="\\"),
            )
        )
    return keyset_page(
        session,
        stmt,
        order=[User.created_at.desc(), User.id.desc()],
        key=lambda u: [u.created_at, u.id],
        cursor=cursor,
        limit=limit,
    )


def _holds_role(session: Session, role: str) -> sa.ColumnElement[bool]:
    """``role`` is in the JSON ``roles`` list (PostgreSQL jsonb containment, SQLite json_each)."""
    if session.get_bind().dialect.name == "postgresql":
        return sa.cast(User.roles, postgresql.JSONB).contains([role])
    each = sa.func.json_each(User.roles).table_valued("value")
    return sa.exists(sa.select(1).select_from(each).where(each.c.value == role))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _check_village(session: Session, village_id: uuid.UUID | None) -> None:
    if village_id is not None and session.get(Village, village_id) is None:
        raise Invalid(
            "所选村庄不存在。",
            code="unknown_village",
            details={"village_id": ["所选村庄不存在。"]},
        )
