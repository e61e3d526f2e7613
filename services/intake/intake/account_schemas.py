"""What the login and account routes accept and answer (never a password hash or session key)."""

from __future__ import annotations

from flask import current_app
from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate

from shared.auth import ROLES
from shared.fields import Text

USERNAME = validate.Regexp(
    r"^[A-Za-z0-9_.-]{3,64}$", error="用户名应为 3 到 64 位字母、数字、下划线、点或连字符。"
)
PHONE = validate.Regexp(r"^[0-9+\- ]{5,20}$", error="请输入有效的电话号码。")


def _password_long_enough(value: str | None) -> None:
    """At least ``PASSWORD_MIN_LENGTH`` characters (a setting: 8 unless the operator says)."""
    if value is None:
        return
    minimum = current_app.extensions["settings"].password_min_length
    if not minimum <= len(value) <= 256:
        raise ValidationError(f"密码长度应在 {minimum} 到 256 个字符之间。")


PASSWORD = _password_long_enough
ROLE = validate.OneOf(ROLES, error="角色应为以下之一：{choices}。")


class WeChatLoginSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    code = fields.String(required=True, validate=validate.Length(min=1, max=128))


class PasswordLoginSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    password = fields.String(
        required=True, load_only=True, validate=validate.Length(min=1, max=256)
    )


class AccountSchema(Schema):
    """An account as staff and the account owner see it."""

    id = fields.UUID(dump_only=True)
    username = fields.String(allow_none=True)
    name = Text()
    phone = fields.String(allow_none=True)
    roles = fields.List(fields.String())
    village_id = fields.UUID(allow_none=True)
    active = fields.Boolean()
    has_password = fields.Method("_has_password", dump_only=True)
    created_at = fields.AwareDateTime(dump_only=True)
    updated_at = fields.AwareDateTime(dump_only=True)

    def _has_password(self, user) -> bool:
        return bool(user.password_hash)


class SignedInSchema(Schema):
    access_token = fields.String()
    token_type = fields.String()
    expires_in = fields.Integer(metadata={"description": "access token lifetime in seconds"})
    refresh_token = fields.String(
        metadata={"description": "opaque; POST /api/v1/auth/refresh trades it for a new pair"}
    )
    refresh_expires_in = fields.Integer(metadata={"description": "refresh token lifetime, s"})
    user = fields.Nested(AccountSchema)


class RefreshSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    refresh_token = fields.String(required=True, validate=validate.Length(min=1, max=256))


class AccountCreateSchema(Schema):
    class Meta:
        unknown = RAISE

    username = fields.String(required=True, validate=USERNAME)
    name = Text(required=True, validate=validate.Length(min=1, max=64))
    phone = fields.String(load_default=None, allow_none=True, validate=PHONE)
    roles = fields.List(
        fields.String(validate=ROLE), required=True, validate=validate.Length(min=1, max=8)
    )
    village_id = fields.UUID(load_default=None, allow_none=True)
    password = fields.String(load_default=None, allow_none=True, load_only=True, validate=PASSWORD)
    active = fields.Boolean(load_default=True)


class AccountChangeSchema(Schema):
    """Only the fields given are changed; ``village_id: null`` clears the village."""

    class Meta:
        unknown = RAISE

    name = Text(validate=validate.Length(min=1, max=64))
    phone = fields.String(allow_none=True, validate=PHONE)
    roles = fields.List(fields.String(validate=ROLE), validate=validate.Length(min=1, max=8))
    village_id = fields.UUID(allow_none=True)
    active = fields.Boolean()
    password = fields.String(load_only=True, validate=PASSWORD)


class AccountQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    role = fields.String(validate=ROLE)
    village_id = fields.UUID()
    q = fields.String(validate=validate.Length(max=64))
    cursor = fields.String(validate=validate.Length(max=512))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))


class AccountPageSchema(Schema):
    items = fields.List(fields.Nested(AccountSchema))
    next_cursor = fields.String(allow_none=True)
