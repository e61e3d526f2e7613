"""Chinese texts for marshmallow's validation messages, which residents and staff read."""

from __future__ import annotations

from marshmallow import fields, validate

_FIELD_MESSAGES = {
    "required": "此项为必填。",
    "null": "此项不能为空。",
    "validator_failed": "此项的值无效。",
}

_TYPE_MESSAGES = {
    fields.String: {"invalid": "应为文字。"},
    fields.Integer: {"invalid": "应为整数。"},
    fields.Float: {"invalid": "应为数字。"},
    fields.Number: {"invalid": "应为数字。"},
    fields.Boolean: {"invalid": "应为是或否（true/false）。"},
    fields.UUID: {"invalid_uuid": "应为有效的编号（UUID）。"},
    fields.DateTime: {"invalid": "应为 ISO-8601 格式的时间。"},
    fields.List: {"invalid": "应为列表。"},
    fields.Dict: {"invalid": "应为对象。"},
    fields.Nested: {"type": "格式有误。"},
    fields.Email: {"invalid": "应为有效的电子邮箱地址。"},
}


def install_chinese_messages() -> None:
    """Replace marshmallow's English defaults once per process (idempotent)."""
    fields.Field.default_error_messages.update(_FIELD_MESSAGES)
    for cls, messages in _TYPE_MESSAGES.items():
        cls.default_error_messages = {**cls.default_error_messages, **messages}
    validate.Length.message_min = "长度不能少于 {min} 个字符（项）。"
    validate.Length.message_max = "长度不能超过 {max} 个字符（项）。"
    validate.Length.message_all = "长度应在 {min} 到 {max} 个字符（项）之间。"
    validate.Length.message_equal = "长度应为 {equal}。"
    # Range formats these twice: first {min_op}/{max_op}, then {min}/{max} (hence the {{ }}).
    validate.Range.message_min = "应{min_op} {{min}}。"
    validate.Range.message_max = "应{max_op} {{max}}。"
    validate.Range.message_all = "应{min_op} {{min}} 且{max_op} {{max}}。"
    validate.Range.message_gte = "不小于"
    validate.Range.message_gt = "大于"
    validate.Range.message_lte = "不大于"
    validate.Range.message_lt = "小于"
    validate.OneOf.default_message = "应为以下之一：{choices}。"
    validate.Regexp.default_message = "格式不正确。"
    validate.Email.default_message = "应为有效的电子邮箱地址。"


install_chinese_messages()
