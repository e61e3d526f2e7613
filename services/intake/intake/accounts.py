"""Accounts and login: one function per thing a person does.

Residents sign in with WeChat (found or created by openid); staff sign in with a username and an
argon2 password; admins create and change staff accounts. Every change to an account writes
``account.upserted`` to the outbox in the same transaction, so the other services learn of it.
Admin use cases take the caller's ``Session`` (the caller owns the transaction, so the CLI can
seed many accounts in one); the sign-in use cases take the ``Database`` because a failed password
must commit its failure count and still answer an error.
"""

from __future__ import annotations

import functools
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
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from intake.domain import SHANGHAI
from intake.models import User, Village
from intake.wechat import WeChatLogin
from shared.auth import TokenIssuer
from shared.db import Database, utcnow
from shared.errors import Conflict, Forbidden, Invalid, NotFound, TooManyRequests, Unauthorized
from shared.events import emit
from shared.pagination import keyset_page

log = logging.getLogger(__name__)

ACCOUNT_UPSERTED = "account.upserted"
WRONG_CREDENTIALS = "用户名或密码错误。"

_hasher = PasswordHasher()


class AccountLocked(TooManyRequests):
    """Too many wrong passwords: the account waits; ``Retry-After`` says how long."""

    status, code, default_message = 423, "account_locked", "账号已锁定，请稍后再试。"


@dataclass(frozen=True)
class SignedIn:
    """An access token and the account it belongs to."""

    access_token: str
    expires_in: int
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


def sign_in_resident(db: Database, wechat: WeChatLogin, issuer: TokenIssuer, code: str) -> SignedIn:
    """WeChat login: the resident is created on first sign-in, found by openid afterwards."""
    identity = wechat.code_to_session(code)
    try:
        user = _find_or_create_resident(db, identity.openid, identity.unionid)
    except IntegrityError:
        # Two first sign-ins with the same openid at once: the other one created the resident.
        user = _find_or_create_resident(db, identity.openid, identity.unionid)
    if not user.active:
        raise Forbidden("该账号已停用，请联系村或乡镇管理员。", code="account_disabled")
    return _issue(issuer, user)


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
    max_failures: int,
    lockout_minutes: int,
) -> SignedIn:
    """Password login: a wrong username looks like a wrong password; failures lock the account."""
    with db.transaction() as session:
        outcome = _check_password(
            session, normalize_username(username), password, max_failures, lockout_minutes
        )
    # Raised only now, so that the failure count above is committed.
    if isinstance(outcome, Exception):
        raise outcome
    return _issue(issuer, outcome)


def _check_password(
    session: Session, username: str, password: str, max_failures: int, lockout_minutes: int
) -> User | Exception:
    user = session.scalars(
        sa.select(User).where(User.username == username).with_for_update()
    ).one_or_none()
    now = utcnow()
    if user is None or not user.password_hash:
        _password_matches(None, password)  # same cost as a real check: no user enumeration
        return Unauthorized(WRONG_CREDENTIALS, code="wrong_credentials")
    if user.locked_until and user.locked_until > now:
        return _locked(user.locked_until, now)
    if not _password_matches(user.password_hash, password):
        if user.locked_until:  # an earlier lock has run out: count afresh
            user.failed_logins, user.locked_until = 0, None
        user.failed_logins += 1
        if user.failed_logins >= max_failures:
            user.locked_until = now + timedelta(minutes=lockout_minutes)
            log.warning("account %s locked after %s failed logins", user.id, user.failed_logins)
            return _locked(user.locked_until, now)
        return Unauthorized(WRONG_CREDENTIALS, code="wrong_credentials")
    if not user.active:
        return Forbidden("该账号已停用，请联系管理员。", code="account_disabled")
    user.failed_logins, user.locked_until = 0, None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return user


def _locked(until: datetime, now: datetime) -> AccountLocked:
    local = until.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
    return AccountLocked(
        f"密码错误次数过多，账号已锁定，请于 {local}（北京时间）后再试。",
        retry_after=max(1, math.ceil((until - now).total_seconds())),
        details={"locked_until": until.isoformat()},
    )


def _issue(issuer: TokenIssuer, user: User) -> SignedIn:
    token, expires_in = issuer.issue(user.id, user.roles, user.name, user.village_id)
    return SignedIn(access_token=token, expires_in=expires_in, user=user)


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
        user.failed_logins, user.locked_until = 0, None  # a new password also lifts a lock
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
