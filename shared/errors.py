"""Domain errors, the one table that maps them to HTTP, and the JSON error body of DESIGN.md.

Every error a person sees is ``{"error": {"code", "message", "details"}}`` with a Chinese message.
Example::

    raise Conflict("该事项已办结，不能再次办结。", code="wrong_state")
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from shared.consumer import is_database_outage
from shared.logging import current_correlation_id

log = logging.getLogger(__name__)


class DomainError(Exception):
    """A rule of the township was broken; ``status`` says how HTTP reports it."""

    status = 400
    code = "bad_request"
    default_message = "请求有误。"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        if code:
            self.code = code
        self.details = details


class BadRequest(DomainError):
    status, code, default_message = 400, "bad_request", "请求有误。"


class Unauthorized(DomainError):
    status, code, default_message = 401, "unauthorized", "请先登录。"


class Forbidden(DomainError):
    status, code, default_message = 403, "forbidden", "您没有权限进行此操作。"


class NotFound(DomainError):
    status, code, default_message = 404, "not_found", "未找到该内容。"


class Conflict(DomainError):
    status, code, default_message = 409, "conflict", "当前状态不允许此操作。"


class PayloadTooLarge(DomainError):
    status, code, default_message = 413, "payload_too_large", "上传的内容太大。"


class UnsupportedMedia(DomainError):
    status, code, default_message = 415, "unsupported_media_type", "不支持的文件类型。"


class Invalid(DomainError):
    status, code, default_message = 422, "invalid", "提交的内容有误，请检查后重试。"


class TooManyRequests(DomainError):
    status, code, default_message = 429, "too_many_requests", "操作太频繁，请稍后再试。"

    def __init__(self, message: str | None = None, *, retry_after: int = 60, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServiceUnavailable(DomainError):
    status, code, default_message = 503, "unavailable", "服务暂时不可用，请稍后再试。"


# Chinese texts for the HTTP errors Flask raises itself (unknown route, wrong method, ...).
HTTP_MESSAGES = {
    400: ("bad_request", "请求格式有误。"),
    401: ("unauthorized", "请先登录。"),
    403: ("forbidden", "您没有权限进行此操作。"),
    404: ("not_found", "未找到该内容。"),
    405: ("method_not_allowed", "不支持该请求方法。"),
    406: ("not_acceptable", "不支持请求的返回格式。"),
    409: ("conflict", "当前状态不允许此操作。"),
    413: ("payload_too_large", "上传的内容太大。"),
    415: ("unsupported_media_type", "不支持的内容类型。"),
    422: ("invalid", "提交的内容有误，请检查后重试。"),
    429: ("too_many_requests", "操作太频繁，请稍后再试。"),
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def domain_error_response(exc: DomainError):
    response = jsonify(error_body(exc.code, exc.message, exc.details))
    response.status_code = exc.status
    if isinstance(exc, TooManyRequests):
        response.headers["Retry-After"] = str(exc.retry_after)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="service365"'
    return response


def http_error_response(exc: HTTPException):
    status = exc.code or 500
    code, message = HTTP_MESSAGES.get(status, ("error", "请求无法完成。"))
    details = None
    data = getattr(exc, "data", None)
    if isinstance(data, dict) and "messages" in data:
        # webargs/marshmallow validation: keep the field-level messages as details.
        details = data["messages"]
        if status == 422:
            code, message = "invalid", "提交的内容有误，请检查后重试。"
    elif status == 400 and exc.description and "JSON" in exc.description:
        code, message = "malformed_json", "请求内容不是有效的 JSON。"
    response = jsonify(error_body(code, message, details))
    response.status_code = status
    if status == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    if status == 429:
        # flask-limiter (headers enabled) replaces this with the window's real remaining time.
        response.headers["Retry-After"] = str(getattr(exc, "retry_after", None) or 60)
    return response


def register_error_handlers(app: Flask) -> None:
    """Answer every error as the JSON body of DESIGN.md; a 5xx is logged, never explained."""
    app.register_error_handler(DomainError, domain_error_response)
    app.register_error_handler(HTTPException, http_error_response)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if _database_unreachable(exc):
            # An outage, not a bug: the person may try again later; /readyz says the same.
            log.warning(
                "database unreachable on %s %s (%s): answered 503",
                request.method,
                request.path,
                type(exc).__name__,
            )
            return domain_error_response(ServiceUnavailable())
        cid = current_correlation_id()
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = jsonify(
            error_body("internal_error", f"系统内部错误，请稍后再试（编号 {cid}）。")
        )
        response.status_code = 500
        return response


def _database_unreachable(exc: Exception) -> bool:
    """A connection-level error while the app's database does not answer a ping: 503, not 500."""
    db = current_app.extensions.get("db")
    if db is None:
        return False
    return is_database_outage(db, exc)
