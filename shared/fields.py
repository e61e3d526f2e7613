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

from marshmallow import fields

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
