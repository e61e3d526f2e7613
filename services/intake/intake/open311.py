"""Open311 GeoReport v2 edge of intake: parse the request, call a use case, render JSON or XML.

Field names, shapes and error bodies follow http://wiki.open311.org/GeoReport_v2 exactly, so
that existing Open311 clients work unchanged; the use cases live in ``open311_services``.
The format comes from the path extension (``/services.xml``, ``/requests.json``).
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, request
from marshmallow import ValidationError
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from intake import domain
from intake.models import Village
from intake.open311_services import (
    SERVICE_TYPES,
    RequestQuery,
    RequestView,
    ServiceType,
    Submission,
    audience_for,
    catalogue_changeset,
    check_jurisdiction,
    client_for_key,
    find_requests,
    get_request,
    service_definition,
    service_type,
    submit_request,
)
from intake.schemas import ReportIn
from intake.settings import IntakeSettings
from shared.clock import SHANGHAI, to_local
from shared.db import Database
from shared.errors import BadRequest, DomainError, NotFound, TooManyRequests, http_error_response
from shared.logging import current_correlation_id

log = logging.getLogger(__name__)

PREFIX = "/open311/v2"
blp = Blueprint("open311", __name__, url_prefix=PREFIX)

SPECIFICATION = "http://wiki.open311.org/GeoReport_v2"
CONTENT_TYPES = {
    "xml": "text/xml; charset=utf-8",
    "json": "application/json; charset=utf-8",
}
# XML element of each item in a list (the Spark convention's mapping between XML and JSON).
LIST_ITEMS = {
    "services": "service",
    "attributes": "attribute",
    "values": "value",
    "endpoints": "endpoint",
    "formats": "format",
    "service_requests": "request",
    "errors": "error",
}
# Our field names as a client knows them, for error descriptions.
PARAM_NAMES = {
    "category": "service_code",
    "lon": "long",
    "address": "address_string",
    "village_id": "attribute[village_id]",
}
CONTACT = "沙口集乡“使命在线·服务365”平台，由沙口集乡人民政府网格化服务管理中心维护。"
KEY_SERVICE = (
    "提交诉求需要 api_key：请向沙口集乡人民政府网格总管理员申请。公开查询无需 api_key，"
    "但只列出公开类别的诉求，且只显示类别、状态、所在村、约 1 公里精度的位置和时间；"
    "不公开类别（如邻里纠纷、医疗养老）、诉求描述和精确位置需凭 api_key 查询。"
)
VILLAGE_ATTRIBUTE = "village_id"
_ATTRIBUTE_PARAM = re.compile(r"^attribute\[([^\[\]]+)\](\[\])?$")
# Characters XML 1.0 cannot carry at all, even escaped.
_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_SPACED_OFFSET = re.compile(r" (\d{2}:?\d{2})$")


def _db() -> Database:
    return current_app.extensions["db"]


def _settings() -> IntakeSettings:
    return current_app.extensions["settings"]


# --- routes ------------------------------------------------------------------------------------


@blp.get("/discovery.<fmt>")
def discovery(fmt: str) -> Response:
    """Service discovery: where the endpoint is, which formats it speaks, how to get a key."""
    fmt = _format(fmt)
    with _db().transaction() as session:
        changeset = _w3c(catalogue_changeset(session))
    return _render(
        fmt,
        "discovery",
        {
            "changeset": changeset,
            "contact": CONTACT,
            "key_service": KEY_SERVICE,
            "endpoints": [
                {
                    "specification": SPECIFICATION,
                    "url": request.url_root + PREFIX.lstrip("/"),
                    "changeset": changeset,
                    "type": "production",
                    "formats": ["text/xml", "application/json"],
                }
            ],
        },
    )


@blp.get("/services.<fmt>")
def services(fmt: str) -> Response:
    """GET Service List: our six categories."""
    fmt = _format(fmt)
    check_jurisdiction(_settings(), _arg("jurisdiction_id"))
    return _render(fmt, "services", [_service_doc(s) for s in SERVICE_TYPES.values()])


@blp.get("/services/<service_code>.<fmt>")
def service(service_code: str, fmt: str) -> Response:
    """GET Service Definition: the one attribute we need, the village."""
    fmt = _format(fmt)
    check_jurisdiction(_settings(), _arg("jurisdiction_id"))
    with _db().transaction() as session:
        found, villages = service_definition(session, service_code)
        doc = _definition_doc(found, villages)
    return _render(fmt, "service_definition", doc)


@blp.get("/requests.<fmt>")
def list_requests(fmt: str) -> Response:
    """GET Service Requests, filtered as the spec says."""
    fmt = _format(fmt)
    check_jurisdiction(_settings(), _arg("jurisdiction_id"))
    audience = audience_for(_settings(), _arg("api_key"))
    query = _request_query(request.args)
    with _db().transaction() as session:
        docs = [_request_doc(view) for view in find_requests(session, query, audience)]
    return _render(fmt, "service_requests", docs)


@blp.get("/requests/<service_request_id>.<fmt>")
def one_request(service_request_id: str, fmt: str) -> Response:
    """GET Service Request: an array holding the one request."""
    fmt = _format(fmt)
    check_jurisdiction(_settings(), _arg("jurisdiction_id"))
    audience = audience_for(_settings(), _arg("api_key"))
    with _db().transaction() as session:
        doc = _request_doc(get_request(session, service_request_id, audience))
    return _render(fmt, "service_requests", [doc])


@blp.post("/requests.<fmt>")
def create_request(fmt: str) -> Response:
    """POST Service Request (form-encoded, api_key required): one report, one transaction."""
    fmt = _format(fmt)
    settings = _settings()
    params = request.values  # the form, and the query string (some clients put api_key there)
    client = client_for_key(settings, _clean(params.get("api_key")))
    check_jurisdiction(settings, _clean(params.get("jurisdiction_id")))
    submission = _submission(params)
    with _db().transaction() as session:
        issue = submit_request(session, settings, client, submission)
        ticket_no = issue.ticket_no
    # The spec names no success status; its reference Swagger (open311/schema-validation)
    # documents 200 for this call (and every client accepts 200), so 200 it is.
    return _render(
        fmt,
        "service_requests",
        [
            {
                "service_request_id": ticket_no,
                "service_notice": (
                    f"诉求已受理，工单号 {ticket_no}。乡网格化服务管理中心将交办网格员办理，"
                    "可凭工单号查询进度。"
                ),
                "account_id": None,
            }
        ],
    )


# --- errors --------------------------------------------------------------------------------------


@blp.errorhandler(DomainError)
def _domain_error(exc: DomainError) -> Response:
    response = _error_response(_status(exc.status), _descriptions(exc))
    if isinstance(exc, TooManyRequests):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


@blp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return _open311_http_error(exc)


@blp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    # A bug: logged with its correlation id, answered in the client's format, never explained.
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _error_response(
        500, [f"系统内部错误，请稍后再试（编号 {current_correlation_id()}）。"], status_code=500
    )


@blp.app_errorhandler(404)
@blp.app_errorhandler(405)
def _routing_error(exc: HTTPException) -> Response:
    """No rule matched, so no blueprint is known: claim the errors under our prefix only."""
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        return _open311_http_error(exc)
    return http_error_response(exc)


def _open311_http_error(exc: HTTPException) -> Response:
    status = exc.code or 400
    if status == 404:
        description = f"未找到该资源：{request.path}。"
    elif status == 405:
        description = f"{request.path} 不支持 {request.method} 方法。"
    else:
        description = _HTTP_DESCRIPTIONS.get(status, "请求无法处理，请检查请求地址和参数。")
    response = _error_response(_status(status), [description])
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


_HTTP_DESCRIPTIONS = {
    400: "请求格式有误，请检查参数。",
    413: "请求内容太大。",
    415: "请以 application/x-www-form-urlencoded 提交。",
}


def _status(status: int) -> int:
    """GeoReport v2, Errors: "404 for resources that don't exist, 403 for errors because of
    wrong or missing api_key and basically 400 for any other error"."""
    if status in (401, 403):
        return 403
    if status in (404, 405, 413, 429):
        return status
    return 400


def _descriptions(exc: DomainError) -> list[str]:
    if isinstance(exc.details, dict) and exc.details:
        return [
            f"{PARAM_NAMES.get(field, field)}：{_joined(messages)}"
            for field, messages in exc.details.items()
        ]
    return [exc.message]


def _joined(messages: Any) -> str:
    if isinstance(messages, list | tuple):
        return "".join(str(m) for m in messages)
    if isinstance(messages, dict):
        return "；".join(f"{k}：{_joined(v)}" for k, v in messages.items())
    return str(messages)


def _error_response(code: int, descriptions: list[str], *, status_code: int | None = None):
    errors = [{"code": code, "description": d} for d in descriptions]
    return _render(_error_format(), "errors", errors, status=status_code or code)


def _error_format() -> str:
    """The format the client asked for; for an unknown one, its Accept header, else XML (the
    format the spec requires every server to speak)."""
    fmt = (request.view_args or {}).get("fmt")
    if fmt in CONTENT_TYPES:
        return fmt
    last = request.path.rsplit("/", 1)[-1]
    if "." in last and last.rsplit(".", 1)[1] in CONTENT_TYPES:
        return last.rsplit(".", 1)[1]
    best = request.accept_mimetypes.best_match(["text/xml", "application/json"])
    return "json" if best == "application/json" else "xml"


# --- parsing -------------------------------------------------------------------------------------


def _format(fmt: str) -> str:
    if fmt not in CONTENT_TYPES:
        raise NotFound(f"不支持的格式「{fmt}」：请使用 .xml 或 .json。", code="unknown_format")
    return fmt


def _clean(value: str | None) -> str | None:
    """The spec's "optional": an empty parameter is the same as one not sent."""
    value = (value or "").strip()
    return value or None


def _arg(name: str) -> str | None:
    return _clean(request.args.get(name))


def _list_arg(args: MultiDict, name: str) -> tuple[str, ...]:
    """Comma-delimited, and the parameter may also be repeated."""
    return tuple(
        dict.fromkeys(
            part.strip()
            for value in args.getlist(name)
            for part in value.split(",")
            if part.strip()
        )
    )


def _request_query(args: MultiDict) -> RequestQuery:
    ticket_nos = _list_arg(args, "service_request_id")
    if ticket_nos:
        # "This overrides all other arguments": the others are not even read.
        return RequestQuery(ticket_nos=ticket_nos)
    statuses = _list_arg(args, "status")
    wrong = [s for s in statuses if s not in ("open", "closed")]
    if wrong:
        raise BadRequest(f"status 只能是 open 或 closed，收到「{'、'.join(wrong)}」。")
    return RequestQuery(
        service_codes=_list_arg(args, "service_code"),
        statuses=statuses,
        start=_datetime_arg(args, "start_date"),
        end=_datetime_arg(args, "end_date"),
    )


def _datetime_arg(args: MultiDict, name: str) -> datetime | None:
    """A W3C/ISO-8601 time; without a zone it is read as Asia/Shanghai."""
    value = _clean(args.get(name))
    if value is None:
        return None
    # An unencoded "+08:00" in a query string arrives as " 08:00".
    value = _SPACED_OFFSET.sub(r"+\1", value)
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=SHANGHAI)
        return moment.astimezone(UTC)
    except ValueError:
        raise BadRequest(
            f"{name} 应为 W3C 格式的时间，例如 2026-11-28T21:00:00+08:00，收到「{value}」。"
        ) from None
    except OverflowError:  # 0001-01-01T00:00 in Shanghai is before year 1 in UTC
        raise BadRequest(f"{name} 超出可用的时间范围，收到「{value}」。") from None


def _attributes(params: MultiDict) -> dict[str, list[str]]:
    """``attribute[code]=value`` and, for multi-value lists, ``attribute[code][]=value``."""
    found: dict[str, list[str]] = {}
    for key in dict.fromkeys(params.keys()):
        match = _ATTRIBUTE_PARAM.match(key)
        if match:
            values = [v.strip() for v in params.getlist(key) if v.strip()]
            found.setdefault(match.group(1), []).extend(values)
    return found


def _submission(params: MultiDict) -> Submission:
    code = _clean(params.get("service_code"))
    if code is None:
        raise BadRequest("缺少参数 service_code。")
    service_type(code)  # "404 - service_code ... was not found"
    lat, lon = _clean(params.get("lat")), _clean(params.get("long"))
    address, address_id = _clean(params.get("address_string")), _clean(params.get("address_id"))
    if (lat is None) != (lon is None):
        raise BadRequest("lat 与 long 需要同时提供。")
    if lat is None and address is None and address_id is None:
        raise BadRequest("缺少位置：请提供 lat 和 long，或 address_string，或 address_id。")
    village = _attributes(params).get(VILLAGE_ATTRIBUTE) or []
    if not village:
        raise BadRequest(
            f"缺少参数 attribute[{VILLAGE_ATTRIBUTE}]：请按 services/{code} 的定义选择村庄。"
        )
    if len(village) > 1:
        raise BadRequest(f"attribute[{VILLAGE_ATTRIBUTE}] 只能选择一个村庄。")
    try:
        payload = {
            "category": code,
            "village_id": village[0],
            "address": address or (f"地址编号：{address_id}" if address_id else None),
            "lat": lat,
            "lon": lon,
        }
        if params.get("description") is not None:
            payload["description"] = params.get("description")
        loaded = ReportIn().load(payload)
    except ValidationError as exc:
        raise BadRequest(details=exc.messages) from None
    return Submission(
        service_code=code,
        description=loaded["description"],
        village_id=loaded["village_id"],
        address=loaded["address"],
        lat=loaded["lat"],
        lon=loaded["lon"],
        contact_name=_contact_name(params),
        contact_phone=_limited(params, "phone", 32),
    )


def _limited(params: MultiDict, name: str, longest: int) -> str | None:
    value = _clean(params.get(name))
    if value is not None and len(value) > longest:
        raise BadRequest(f"{name}：长度不能超过 {longest} 个字符。")
    return value


def _contact_name(params: MultiDict) -> str | None:
    """first_name and last_name as one name: family name first when it is written in Chinese."""
    first, last = _limited(params, "first_name", 64), _limited(params, "last_name", 64)
    parts = [p for p in (first, last) if p]
    if not parts:
        return None
    if any("\u4e00" <= ch <= "\u9fff" for ch in "".join(parts)):
        name = "".join(p for p in (last, first) if p)
    else:
        name = " ".join(parts)
    if len(name) > 64:
        raise BadRequest("first_name、last_name：姓名合计不能超过 64 个字符。")
    return name


# --- rendering -----------------------------------------------------------------------------------


def _w3c(moment: datetime | None) -> str | None:
    """``2026-11-28T21:00:00+08:00``: W3C date-time with its zone, in Asia/Shanghai."""
    return to_local(moment).isoformat(timespec="seconds") if moment else None


def _service_doc(service: ServiceType) -> dict[str, Any]:
    return {
        "service_code": service.code,
        "service_name": service.name,
        "description": service.description,
        "metadata": True,
        "type": "realtime",
        "keywords": service.keywords,
        "group": service.group,
    }


def _definition_doc(service: ServiceType, villages: Iterable[Village]) -> dict[str, Any]:
    return {
        "service_code": service.code,
        "attributes": [
            {
                "variable": True,
                "code": VILLAGE_ATTRIBUTE,
                "datatype": "singlevaluelist",
                "required": True,
                "datatype_description": "从列表中选择一个行政村。",
                "order": 1,
                "description": "问题发生在哪个行政村？",
                "values": [{"key": str(v.id), "name": v.name} for v in villages],
            }
        ],
    }


def _request_doc(view: RequestView) -> dict[str, Any]:
    """A report as its reader may see it (``RequestView``: without an api_key no free text and
    a rounded location); never the reporter's id, name, phone or openid, nor the contact
    details an Open311 client sent."""
    issue = view.issue
    return {
        "service_request_id": issue.ticket_no,
        "status": view.status,
        "status_notes": view.status_notes,
        "service_name": domain.CATEGORIES.get(issue.category, issue.category),
        "service_code": issue.category,
        "description": view.description,
        "agency_responsible": view.agency_responsible,
        "service_notice": view.service_notice,
        "requested_datetime": _w3c(issue.reported_at),
        "updated_datetime": _w3c(view.updated_at),
        "expected_datetime": _w3c(issue.due_at),
        "address": view.address,
        "address_id": None,
        "zipcode": None,
        "lat": view.lat,
        "long": view.lon,
        # Residents' photos show homes and faces and are served only to signed-in users who
        # may see the report, so public Open311 output never links them.
        "media_url": None,
    }


def _render(fmt: str, root: str, data: Any, status: int = 200) -> Response:
    body = json.dumps(data, ensure_ascii=False) if fmt == "json" else _xml(root, data)
    return Response(body, status=status, content_type=CONTENT_TYPES[fmt])


def _xml(root: str, data: Any) -> str:
    element = ET.Element(root)
    _fill(element, root, data)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(element, encoding="unicode")


def _fill(element: ET.Element, name: str, value: Any) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            _fill(ET.SubElement(element, key), key, child)
    elif isinstance(value, list):
        item = LIST_ITEMS[name]
        for child in value:
            _fill(ET.SubElement(element, item), item, child)
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    elif value is not None:
        element.text = _NOT_XML.sub("", str(value))
