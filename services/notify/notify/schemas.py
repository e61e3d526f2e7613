"""Marshmallow schemas for notify's routes: what each accepts and answers (Asia/Shanghai)."""

from __future__ import annotations

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from notify.templates import KINDS
from shared.clock import LocalDateTime
from shared.fields import OutSchema

HHMM = validate.Regexp(
    r"^([01]\d|2[0-3]):[0-5]\d$", error="时间格式应为 HH:MM（北京时间），如 22:00。"
)


class _In(Schema):
    class Meta:
        unknown = RAISE


class _Query(Schema):
    class Meta:
        unknown = EXCLUDE


class PageQuery(_Query):
    cursor = fields.String(load_default=None, validate=validate.Length(max=1400))
    limit = fields.Integer(load_default=None, validate=validate.Range(min=1, max=100))


class InboxQuery(PageQuery):
    unread = fields.Boolean(
        load_default=None,
        metadata={"description": "true 只看未读，false 只看已读，不填全部。"},
    )


class LinkOut(OutSchema):
    type = fields.String(
        allow_none=True,
        metadata={
            "description": "issue 事项 / news 新闻 / post 党建动态 / board 积分榜 / callbacks 回访"
        },
    )
    id = fields.String(allow_none=True)


class NotificationOut(OutSchema):
    id = fields.UUID()
    kind = fields.String(metadata={"enum": list(KINDS)})
    title = fields.String()
    body = fields.String()
    link = fields.Method("_link")
    read = fields.Method("_read")
    created_at = LocalDateTime()
    read_at = LocalDateTime(allow_none=True)

    def _link(self, n) -> dict:
        return {"type": n.link_type, "id": n.link_id}

    def _read(self, n) -> bool:
        return n.read_at is not None


class InboxPage(OutSchema):
    items = fields.List(fields.Nested(NotificationOut))
    next_cursor = fields.String(allow_none=True)


class UnreadOut(OutSchema):
    unread = fields.Integer()


class ReadAllOut(OutSchema):
    updated = fields.Integer(metadata={"description": "本次标为已读的条数"})


class KindChoice(Schema):
    class Meta:
        unknown = RAISE

    kind = fields.String(required=True, validate=validate.OneOf(KINDS, error="没有这种消息类型。"))
    inbox = fields.Boolean(load_default=None, metadata={"description": "站内消息，始终开启"})
    wechat = fields.Boolean(load_default=None, allow_none=True)
    sms = fields.Boolean(load_default=None, allow_none=True)


class QuietHours(Schema):
    class Meta:
        unknown = RAISE

    start = fields.String(required=True, validate=HHMM)
    end = fields.String(required=True, validate=HHMM)


class PreferencesIn(_In):
    kinds = fields.List(fields.Nested(KindChoice), validate=validate.Length(max=len(KINDS) * 2))
    quiet_hours = fields.Nested(
        QuietHours,
        allow_none=True,
        metadata={
            "description": "免打扰时段（北京时间），期间不发微信和短信（超期预警除外）；null 取消。"
        },
    )
    follow_news = fields.Boolean(metadata={"description": "关注镇村新闻（魅力沙口集）"})

    @validates_schema
    def _something(self, data, **_kwargs) -> None:
        if not data:
            raise ValidationError("请至少提交一项设置。", field_name="_schema")


class KindOut(OutSchema):
    kind = fields.String()
    label = fields.String()
    inbox = fields.Boolean()
    wechat = fields.Boolean()
    sms = fields.Boolean()


class PreferencesOut(OutSchema):
    kinds = fields.List(fields.Nested(KindOut))
    quiet_hours = fields.Nested(QuietHours, allow_none=True)
    follow_news = fields.Boolean()


class DeliveryQuery(PageQuery):
    channel = fields.String(
        load_default=None,
        validate=validate.OneOf(("wechat", "sms", "webhook"), error="没有这个渠道。"),
    )
    status = fields.String(
        load_default=None,
        validate=validate.OneOf(
            ("pending", "sent", "failed"), error="状态应为 pending、sent 或 failed。"
        ),
    )
    user_id = fields.UUID(load_default=None)


class DeliveryOut(OutSchema):
    id = fields.UUID()
    notification_id = fields.UUID()
    event_id = fields.UUID()
    user_id = fields.UUID()
    channel = fields.String()
    kind = fields.String()
    status = fields.String(metadata={"enum": ["pending", "sent", "failed"]})
    urgent = fields.Boolean()
    attempts = fields.Integer()
    next_attempt_at = LocalDateTime(allow_none=True)
    last_error = fields.String(allow_none=True)
    created_at = LocalDateTime()
    sent_at = LocalDateTime(allow_none=True)


class DeliveryPage(OutSchema):
    items = fields.List(fields.Nested(DeliveryOut))
    next_cursor = fields.String(allow_none=True)
