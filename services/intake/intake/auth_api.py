"""Routes for login (WeChat for residents, password for staff), the caller's profile, and the
admins' account management. Each route loads its input, calls one use case in ``accounts``, dumps.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from typing import Any

from flask import current_app
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


@blp.route("/auth/wechat", methods=["POST"])
@blp.arguments(WeChatLoginSchema)
@blp.response(200, SignedInSchema)
def wechat_login(body: dict[str, Any]):
    """居民微信登录 Resident sign-in with a ``wx.login()`` code; the first creates the account."""
    return accounts.sign_in_resident(
        _db(), wechat_login_for(current_app), current_app.extensions["token_issuer"], body["code"]
    )


@blp.route("/auth/login", methods=["POST"])
@limiter.limit(settings_limit("rate_limit_login"), key_func=login_username_key)
@limiter.limit(settings_limit("rate_limit_login_ip"))
@blp.arguments(PasswordLoginSchema)
@blp.response(200, SignedInSchema)
def password_login(body: dict[str, Any]):
    """工作人员登录 Staff sign-in with username and password; rate-limited, locks on failures."""
    settings = current_app.extensions["settings"]
    return accounts.sign_in_staff(
        _db(),
        current_app.extensions["token_issuer"],
        body["username"],
        body["password"],
        max_failures=settings.login_max_failures,
        lockout_minutes=settings.login_lockout_minutes,
    )


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
