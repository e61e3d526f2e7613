"""Text that a database can store: no NUL character and no lone UTF-16 surrogate.

PostgreSQL refuses both in a text column (a 500 if nothing checks first). JSON can carry them
(``"\\u0000"``, ``"\\ud800"``), so every string a request brings is checked: at the edge by
``shared.request_guard`` (bodies, query strings, form fields, path values) and, where text is
loaded elsewhere (a command, a file), by the ``Text`` field.

Example::

    class NoteIn(Schema):
        text = Text(required=True, validate=validate.Length(min=1, max=500))

    text_problem("漏水\\x00")   # -> the Chinese message; None for text that is fine
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import Schema, fields, missing
from marshmallow.utils import get_value
from sqlalchemy.engine import Row

NOT_TEXT = "不能包含空字符（NUL）或无效的 Unicode 字符（单独的代理项）。"
# In a Python str every surrogate code point is a lone one: a valid pair decodes to one character.
_NOT_STORABLE = re.compile("[\x00\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """The Chinese message when ``value`` holds a NUL or a lone surrogate, else None."""
    return NOT_TEXT if _NOT_STORABLE.search(value) else None


class Text(fields.String):
    """A marshmallow string that refuses NUL and lone surrogates with a Chinese message."""

    default_error_messages = {"not_text": NOT_TEXT}

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if text_problem(text):
            raise self.make_error("not_text")
        return text


class Derived(fields.Function):
    """A dump-only value computed from the whole object by a one-argument function.

    ``fields.Function`` looks at its function's signature (``inspect.signature``) every time it
    serialises a value, to decide whether to pass a context: about 15 µs each, a tenth of the
    time of a 20-item list page with three computed labels per item. This one calls it directly.

    Example::

        category_label = Derived(lambda issue: CATEGORIES.get(issue.category, issue.category))
    """

    def _serialize(self, value, attr, obj, **kwargs):
        return self.serialize_func(obj)


class OutSchema(Schema):
    """A response schema that serialises with a plan made once per schema instance.

    Why: marshmallow reaches each value through four calls (``Field.serialize``,
    ``Field.get_value``, ``Schema.get_attribute``, ``utils.get_value``, which first tries
    ``obj[key]`` and catches the error on an object or a row), about 3.5 µs a field: a 20-item
    page of issues (47 fields each) spent 3.3 ms there. The plan keeps marshmallow's meaning
    (the same ``dump_fields``, ``attribute``, ``data_key``, ``dump_default``, hooks and each
    field's own ``_serialize``) and only looks values up directly: ``getattr`` on an object or
    a SQLAlchemy row (whose ``row[name]`` always fails), the key on a ``dict``;
    ``utils.get_value`` for anything else and for dotted attributes.

    Example::

        class IssueOut(OutSchema):
            id = fields.UUID()
            state_label = Derived(lambda issue: STATES[issue.state])
    """

    def _serialize(self, obj: Any, *, many: bool = False) -> Any:
        if many and obj is not None:
            return [self._serialize(each) for each in obj]
        plan = self.__dict__.get("_dump_plan")
        if plan is None:
            plan = self._dump_plan = self._plan_dump()
        if type(obj) is dict:
            look = _from_dict
        elif isinstance(obj, Row) or not hasattr(obj, "__getitem__"):
            look = getattr
        else:
            look = get_value
        out = self.dict_class()
        for key, name, field, serialize, reads in plan:
            if reads is None:  # Function, Method, Derived: computed from the whole object
                out[key] = serialize(None, name, obj)
                continue
            value = (look if reads else get_value)(obj, name, missing)
            if value is missing:
                default = field.dump_default
                value = default() if callable(default) else default
                if value is missing:
                    continue
            out[key] = serialize(value, name, obj)
        return out

    def _plan_dump(self) -> list[tuple[str, str, Any, Any, bool | None]]:
        """(answer key, attribute, field, the field's ``_serialize``, how it reads: None not at
        all, True directly, False through ``utils.get_value`` (a dotted attribute))."""
        plan = []
        for attr_name, field in self.dump_fields.items():
            name = attr_name if field.attribute is None else field.attribute
            key = field.data_key if field.data_key is not None else attr_name
            reads = ("." not in name) if field._CHECK_ATTRIBUTE else None
            plan.append((key, name, field, field._serialize, reads))
        return plan


def _from_dict(obj: dict, name: str, default: Any) -> Any:
    """``utils.get_value`` on a dict: the key, else (as marshmallow does) the attribute."""
    if name in obj:
        return obj[name]
    return getattr(obj, name, default)
