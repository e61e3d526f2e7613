"""One guard in front of every route: bodies of a bounded size, JSON of a bounded depth, and
only text a database can store.

Bad input must be a 4xx with a Chinese message, never a 500. Before any view runs, the guard

* caps every request body at ``MAX_JSON_BODY_BYTES`` (413); a route that takes larger uploads
  (intake's photo upload) is named with ``allow_larger_body``;
* refuses JSON nested deeper than ``MAX_JSON_DEPTH`` (400), counted without parsing, so the
  parser never meets a ``RecursionError``;
* refuses a NUL or a lone surrogate (``"\\u0000"``, ``"\\ud800"``) in any JSON string or key,
  query parameter, form field or path value (422), since PostgreSQL cannot store them.

``create_service_app`` installs it in every service. Example::

    guard = app.extensions["request_guard"]
    guard.allow_larger_body("reports.upload_media", settings.media_max_bytes + 256 * 1024)
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

from flask import Flask, request

from shared.errors import BadRequest, Invalid
from shared.fields import NOT_TEXT, text_problem

# A JSON string with its escapes; one left open runs to the end. Possessive, and it never fails
# once it sees a quote, so scanning is linear whatever the body holds.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.S)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_LEVELS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
_MAX_REPORTED = 10  # fields named in one error
_UNSHOWABLE = re.compile("[\x00\ud800-\udfff]")


def json_depth(raw: bytes | str) -> int:
    """How deeply ``raw`` JSON nests arrays and objects (``[]`` is 1, ``{"a": [1]}`` is 2),
    counted without parsing, in linear time (the loops run in C).

    >>> json_depth(b'{"a": [1, "[[["]}')
    2
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    brackets = _STRING.sub(b"", raw).translate(_LEVELS, _NOT_BRACKETS)
    return max(itertools.accumulate(memoryview(brackets).cast("b"), initial=0))


def _bad_text(value: Any) -> Iterator[str]:
    """Paths (``notes.0.text``) of the strings and keys in parsed JSON that cannot be stored."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if text_problem(item):
                yield path or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                where = f"{path}.{key}" if path else str(key)
                if text_problem(key):
                    yield where
                stack.append((where, child))
        elif isinstance(item, list):
            stack.extend((f"{path}.{i}" if path else str(i), c) for i, c in enumerate(item))


class RequestGuard:
    """The checks above, as a ``before_request`` hook (see the module's docstring)."""

    def __init__(self, max_body_bytes: int, max_depth: int) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_depth = max_depth
        self.larger: dict[str, int] = {}

    def init_app(self, app: Flask) -> None:
        app.config["MAX_CONTENT_LENGTH"] = self.max_body_bytes
        app.extensions["request_guard"] = self
        app.before_request(self.check)

    def allow_larger_body(self, app: Flask, endpoint: str, max_bytes: int) -> None:
        """Let one route (by endpoint name, e.g. ``reports.upload_media``) take ``max_bytes``."""
        if endpoint not in app.view_functions:
            raise ValueError(f"no route with endpoint {endpoint!r}")
        self.larger[endpoint] = max_bytes

    def check(self) -> None:
        if request.endpoint in self.larger:
            request.max_content_length = self.larger[request.endpoint]
        bad: list[str] = []
        if request.is_json:
            raw = request.get_data(cache=True)  # 413 beyond the cap
            if json_depth(raw) > self.max_depth:
                raise BadRequest(
                    f"请求内容的嵌套层级过深（最多 {self.max_depth} 层）。", code="json_too_deep"
                )
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None  # malformed: the route's own parser says so
            bad.extend(_bad_text(parsed))
        forms = request.form if request.mimetype in _FORMS else None
        for source in (request.args, forms):
            for key, value in source.items(multi=True) if source else ():
                if text_problem(key) or text_problem(value):
                    bad.append(key)
        for key, value in (request.view_args or {}).items():
            if isinstance(value, str) and text_problem(value):
                bad.append(key)
        if bad:
            names = [_shown(name) for name in dict.fromkeys(bad)][:_MAX_REPORTED]
            raise Invalid(
                "提交的文字" + NOT_TEXT,
                code="invalid_text",
                details={name: [NOT_TEXT] for name in names},
            )


def _shown(name: str) -> str:
    """A field name fit to be shown back (the name itself may hold the bad character)."""
    return _UNSHOWABLE.sub("\ufffd", name)
