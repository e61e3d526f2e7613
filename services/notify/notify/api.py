"""Notify's routes: HTTP only. Each loads its input, calls one use case, dumps the answer."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app
from flask_smorest import Blueprint

from notify import deliveries, services
from notify.schemas import (
    DeliveryOut,
    DeliveryPage,
    DeliveryQuery,
    InboxPage,
    InboxQuery,
    NotificationOut,
    PreferencesIn,
    PreferencesOut,
    ReadAllOut,
    UnreadOut,
)
from notify.settings import NotifySettings
from shared.auth import current_principal, require_roles
from shared.web import request_transaction

blp = Blueprint("notify", __name__, url_prefix="/api/v1", description="消息通知 Notify")
BEARER = [{"bearerAuth": []}]


def _settings() -> NotifySettings:
    return current_app.extensions["settings"]


_transaction = request_transaction


def _me():
    principal = current_principal()
    assert principal is not None
    return principal


# --- the inbox: everyone signed in, their own messages only ------------------------------------


@blp.get("/notifications")
@require_roles()
@blp.arguments(InboxQuery, location="query")
@blp.response(200, InboxPage)
@blp.doc(security=BEARER)
def list_notifications(args: dict[str, Any]):
    """我的消息：最新的在前；unread=true 只看未读。每条链接到它所说的事项、新闻或动态。"""
    with _transaction() as session:
        items, cursor = services.inbox(
            session,
            _me().id,
            unread=args["unread"],
            cursor=args["cursor"],
            limit=args["limit"] or _settings().inbox_default_limit,
        )
        return {"items": items, "next_cursor": cursor}


@blp.get("/notifications/unread-count")
@require_roles()
@blp.response(200, UnreadOut)
@blp.doc(security=BEARER)
def unread_count():
    """未读消息数（小程序角标）。实时更新请用 /api/v1/notifications/stream。"""
    with _transaction() as session:
        return {"unread": services.unread_count(session, _me().id)}


@blp.post("/notifications/<uuid:notification_id>/read")
@require_roles()
@blp.response(200, NotificationOut)
@blp.doc(security=BEARER)
def read_notification(notification_id: uuid.UUID):
    """把自己的一条消息标为已读（别人的消息答 404）。"""
    with _transaction() as session:
        return services.mark_read(session, _me().id, notification_id)


@blp.post("/notifications/read-all")
@require_roles()
@blp.response(200, ReadAllOut)
@blp.doc(security=BEARER)
def read_all():
    """把自己的全部未读消息标为已读。"""
    with _transaction() as session:
        return {"updated": services.mark_all_read(session, _me().id)}


# --- preferences ---------------------------------------------------------------------------------


@blp.get("/preferences")
@require_roles()
@blp.response(200, PreferencesOut)
@blp.doc(security=BEARER)
def get_preferences():
    """我的提醒设置：每类消息的微信、短信开关（站内消息始终开启）、免打扰时段、是否关注新闻。"""
    me = _me()
    with _transaction() as session:
        return services.preferences(session, me.id, me.roles)


@blp.put("/preferences")
@require_roles()
@blp.arguments(PreferencesIn)
@blp.response(200, PreferencesOut)
@blp.doc(security=BEARER)
def put_preferences(body: dict[str, Any]):
    """修改提醒设置：只改提交的部分。"""
    me = _me()
    with _transaction() as session:
        return services.change_preferences(session, me.id, me.roles, body)


# --- deliveries: the township admins ---------------------------------------------------------


@blp.get("/deliveries")
@require_roles("admin")
@blp.arguments(DeliveryQuery, location="query")
@blp.response(200, DeliveryPage)
@blp.doc(security=BEARER)
def list_deliveries(args: dict[str, Any]):
    """发送记录（微信、短信、webhook）：按渠道、状态、用户筛选，最新的在前。"""
    with _transaction() as session:
        items, cursor = services.list_deliveries(
            session,
            channel=args["channel"],
            status=args["status"],
            user_id=args["user_id"],
            cursor=args["cursor"],
            limit=args["limit"] or 50,
        )
        return {"items": items, "next_cursor": cursor}


@blp.post("/deliveries/<uuid:delivery_id>/retry")
@require_roles("admin")
@blp.response(200, DeliveryOut)
@blp.doc(security=BEARER)
def retry_delivery(delivery_id: uuid.UUID):
    """重发一条失败的消息：回到待发送，立即可发，重试次数清零。"""
    with _transaction() as session:
        return deliveries.retry_delivery(session, delivery_id)
