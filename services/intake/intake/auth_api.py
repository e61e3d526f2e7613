"""Routes for login (WeChat for residents, password for staff), the caller's profile, and the
admins' account management. Each route loads its input, calls one use case in ``accounts``, dumps.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

from flask import current_app, make_response, request
from flask_smorest import Blueprint
from sqlalchemy.orm import Session

from intake import accounts
from intake.account_schemas import (
    AccountChangeSchema,
    AccountCreateSchema,
    AccountPageSchema,
    AccountQuerySchema,
    AccountSchema,
    PasswordLoginSchema,
    RefreshSchema,
    SignedInSchema,
    WeChatLoginSchema,
)
from intake.limits import limiter, login_username_key, settings_limit
from intake.wechat import wechat_login_for
from shared.auth import current_principal, require_roles

blp = Blueprint("auth", __name__, url_prefix="/api/v1", description="登录与账号 Login and accounts")

BEARER = [{"bearerAuth": []}]


def _db():
    return current_app.extensions["db"]


def _transaction() -> AbstractContextManager[Session]:
    return _db().transaction()


def _refresh_ttl() -> timedelta:
    return timedelta(days=current_app.extensions["settings"].refresh_token_ttl_days)


def no_store(view: Callable[..., Any]) -> Callable[..., Any]:
    """Token answers are never kept by a browser or a proxy cache (RFC 6749 §5.1)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        response = make_response(view(*args, **kwargs))
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        return response

    return wrapper


@blp.route("/auth/wechat", methods=["POST"])
@no_store
@limiter.limit(settings_limit("rate_limit_wechat_login_ip"))
@blp.arguments(WeChatLoginSchema)
@blp.response(200, SignedInSchema)
def wechat_login(body: dict[str, Any]):
    """居民微信登录 Resident sign-in with a ``wx.login()`` code; the first creates the account."""
    return accounts.sign_in_resident(
        _db(),
        wechat_login_for(current_app),
        current_app.extensions["token_issuer"],
        body["code"],
        refresh_ttl=_refresh_ttl(),
    )


@blp.route("/auth/login", methods=["POST"])
@no_store
@limiter.limit(settings_limit("rate_limit_login"), key_func=login_username_key)
@limiter.limit(settings_limit("rate_limit_login_ip"))
@blp.arguments(PasswordLoginSchema)
@blp.response(200, SignedInSchema)
def password_login(body: dict[str, Any]):
    """工作人员登录 Staff sign-in with username and password; failures slow down the address."""
    settings = current_app.extensions["settings"]
    return accounts.sign_in_staff(
        _db(),
        current_app.extensions["token_issuer"],
        body["username"],
        body["password"],
        address=request.remote_addr or "unknown",
        policy=accounts.LoginPolicy(
            max_failures=settings.login_max_failures,
            delay_seconds=settings.login_delay_seconds,
            delay_max_seconds=settings.login_delay_max_seconds,
        ),
        refresh_ttl=_refresh_ttl(),
    )


@blp.route("/auth/refresh", methods=["POST"])
@no_store
@blp.arguments(RefreshSchema)
@blp.response(200, SignedInSchema)
def refresh(body: dict[str, Any]):
    """续期 A new access token and refresh token for a refresh token (which is used up)."""
    return accounts.refresh_sign_in(
        _db(),
        current_app.extensions["token_issuer"],
        body["refresh_token"],
        refresh_ttl=_refresh_ttl(),
    )


@blp.route("/auth/logout", methods=["POST"])
@no_store
@blp.arguments(RefreshSchema)
@blp.response(204)
def logout(body: dict[str, Any]):
    """退出登录 Sign out: the refresh token (and every one rotated from it) stops counting."""
    accounts.sign_out(_db(), body["refresh_token"])


@blp.route("/me", methods=["GET"])
@require_roles()
@blp.response(200, AccountSchema)
@blp.doc(security=BEARER)
def me():
    """我的账号 The signed-in person's own account."""
    with _transaction() as session:
        return accounts.my_profile(session, current_principal().id)


@blp.route("/accounts", methods=["POST"])
@require_roles("admin")
@blp.arguments(AccountCreateSchema)
@blp.response(201, AccountSchema)
@blp.doc(security=BEARER)
def create_account(body: dict[str, Any]):
    """新建账号 Create a staff account (admins)."""
    with _transaction() as session:
        return accounts.create_account(session, **body)


@blp.route("/accounts", methods=["GET"])
@require_roles("admin")
@blp.arguments(AccountQuerySchema, location="query")
@blp.response(200, AccountPageSchema)
@blp.doc(security=BEARER)
def list_accounts(args: dict[str, Any]):
    """账号列表 Accounts, filtered by role, village or text, newest first (cursor pages)."""
    with _transaction() as session:
        items, next_cursor = accounts.list_accounts(session, **args)
    return {"items": items, "next_cursor": next_cursor}


@blp.route("/accounts/<uuid:user_id>", methods=["GET"])
@require_roles("admin")
@blp.response(200, AccountSchema)
@blp.doc(security=BEARER)
def get_account(user_id: uuid.UUID):
    """查看账号 One account (admins)."""
    with _transaction() as session:
        return accounts.get_account(session, user_id)


@blp.route("/accounts/<uuid:user_id>", methods=["PATCH"])
@require_roles("admin")
@blp.arguments(AccountChangeSchema)
@blp.response(200, AccountSchema)
@blp.doc(security=BEARER)
def change_account(body: dict[str, Any], user_id: uuid.UUID):
    """修改账号 Change an account's name, phone, roles, village, status or password (admins)."""
    with _transaction() as session:
        return accounts.change_account(session, user_id, body)
