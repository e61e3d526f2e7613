"""Routes for reports (我要办事), photos, categories and villages: HTTP only, no rules here."""

from __future__ import annotations

import uuid

from flask import Response, current_app, jsonify, request
from flask_smorest import Blueprint

from intake import services
from intake.limits import limiter, settings_limit, user_key
from intake.schemas import (
    CategoryOut,
    DetailsIn,
    IssueOut,
    IssuePageOut,
    IssueSummaryOut,
    MediaOut,
    MediaQuery,
    MineQuery,
    PhoneIn,
    PhoneOut,
    RatingIn,
    RatingOut,
    ReportCreatedOut,
    ReportIn,
    StepOut,
    UrgedOut,
    UrgeIn,
    VillageOut,
    WithdrawIn,
)
from intake.wechat import wechat_phone_for
from shared.auth import current_principal, require_roles
from shared.errors import BadRequest
from shared.web import file_responses

blp = Blueprint("reports", __name__, url_prefix="/api/v1", description="群众办事 Reports")
BEARER = [{"bearerAuth": []}]
# Built once: a schema deep-copies its fields when built; dumping keeps no state.
REPORT_CREATED = ReportCreatedOut()


def _db():
    return current_app.extensions["db"]


def _settings():
    return current_app.extensions["settings"]


def _storage():
    return current_app.extensions["media_storage"]


@blp.get("/categories")
@blp.response(200, CategoryOut(many=True))
def list_categories():
    """The six kinds of report, with Chinese labels."""
    return services.categories()


@blp.get("/villages")
@blp.response(200, VillageOut(many=True))
def list_villages():
    """The township's villages (for the report form)."""
    with _db().transaction() as session:
        return services.list_villages(session)


@blp.post("/media")
@require_roles()
@limiter.limit(settings_limit("rate_limit_uploads"), key_func=user_key)
@blp.doc(security=BEARER)
@blp.response(201, MediaOut)
def upload_media():
    """Upload one photo (multipart field ``file``): JPEG, PNG, WebP or HEIC, at most 10 MB."""
    upload = request.files.get("file")
    if upload is None:
        raise BadRequest("请以 multipart/form-data 上传照片，字段名为 file。", code="file_missing")
    data = upload.read(_settings().media_max_bytes + 1)
    return services.upload_photo(_db(), _settings(), _storage(), current_principal(), data)


@blp.get("/media/<uuid:media_id>")
@blp.doc(
    security=[{}, {"bearerAuth": []}],
    responses=file_responses("照片", "image/jpeg", "image/png", "image/webp"),
)
@blp.arguments(MediaQuery, location="query")
def get_media(query, media_id: uuid.UUID):
    """A photo (``?size=thumb`` for the thumbnail), for those who may see its report; a photo of
    published news or a party post for anyone, without signing in."""
    with _db().transaction() as session:
        data, content_type, public = services.read_photo(
            session, _storage(), current_principal(optional=True), media_id, query["size"]
        )
    response = Response(data, mimetype=content_type)
    response.headers["Cache-Control"] = (
        "public, max-age=3600" if public else "private, max-age=3600"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@blp.post("/issues")
@require_roles("resident", "party_member", "grid_worker", "grid_leader", "admin")
@limiter.limit(settings_limit("rate_limit_reports"), key_func=user_key)
@blp.doc(
    security=BEARER,
    parameters=[{"in": "header", "name": "Idempotency-Key", "schema": {"type": "string"}}],
)
@blp.arguments(ReportIn)
@blp.alt_response(201, schema=ReportCreatedOut, description="受理成功")
def report_issue(data):
    """Report a problem; the same Idempotency-Key and body give the same answer again.

    Grid workers, grid leaders and admins report for a resident with ``on_behalf_of`` (代办).
    """
    key = request.headers.get("Idempotency-Key", "").strip() or None
    if key is not None and len(key) > 128:
        raise BadRequest("Idempotency-Key 不能超过 128 个字符。", code="bad_idempotency_key")
    on_behalf = data.get("on_behalf_of")
    report = services.NewReport(
        category=data["category"],
        description=data.get("description") or "",
        village_id=data["village_id"],
        address=data.get("address"),
        lat=data.get("lat"),
        lon=data.get("lon"),
        photo_ids=tuple(data.get("photo_ids") or ()),
        on_behalf_of=services.OnBehalf(**on_behalf) if on_behalf else None,
    )
    answer = services.report_issue_once(
        _db(),
        _settings(),
        current_principal(),
        report,
        idempotency_key=key,
        fingerprint=services.body_fingerprint(request.get_json(silent=True)),
        render=REPORT_CREATED.dump,
    )
    return jsonify(answer.body), answer.status


@blp.get("/issues/mine")
@require_roles()
@blp.doc(security=BEARER)
@blp.arguments(MineQuery, location="query")
@blp.response(200, IssuePageOut)
def my_issues(query):
    """The caller's own reports, newest first; ``cursor`` from ``next_cursor``."""
    with _db().read() as conn:
        items, next_cursor = services.my_issues(
            conn,
            current_principal(),
            status=query["status"],
            cursor=query["cursor"],
            limit=query["limit"],
        )
        return {"items": items, "next_cursor": next_cursor}


@blp.get("/issues/<uuid:issue_id>")
@require_roles()
@blp.doc(security=BEARER)
@blp.response(200, IssueOut)
def get_issue(issue_id: uuid.UUID):
    """One report with its state, handler, due time, result and timeline (reporter or staff)."""
    with _db().transaction() as session:
        return services.visible_issue(session, current_principal(), issue_id)


@blp.post("/issues/<uuid:issue_id>/rating")
@require_roles()
@blp.doc(security=BEARER)
@blp.arguments(RatingIn)
@blp.response(201, RatingOut)
def rate_issue(data, issue_id: uuid.UUID):
    """The reporter rates a resolved issue, once per resolution."""
    with _db().transaction() as session:
        return services.rate_issue(
            session, current_principal(), issue_id, data["rating"], data.get("comment")
        )


@blp.post("/issues/<uuid:issue_id>/details")
@require_roles()
@blp.doc(security=BEARER)
@blp.arguments(DetailsIn)
@blp.response(201, StepOut)
def add_details(data, issue_id: uuid.UUID):
    """补充说明: more words and photos on an open report (its reporter)."""
    with _db().transaction() as session:
        return services.add_details(
            session, current_principal(), issue_id, data["text"], tuple(data["photo_ids"])
        )


@blp.post("/issues/<uuid:issue_id>/urge")
@require_roles()
@blp.doc(security=BEARER)
@blp.arguments(UrgeIn)
@blp.response(200, UrgedOut)
def urge_issue(data, issue_id: uuid.UUID):
    """催办 an open report (its reporter), at most once per ``URGE_INTERVAL_HOURS``."""
    with _db().transaction() as session:
        return services.urge(session, _settings(), current_principal(), issue_id, data["text"])


@blp.post("/issues/<uuid:issue_id>/withdraw")
@require_roles()
@blp.doc(security=BEARER)
@blp.arguments(WithdrawIn)
@blp.response(200, IssueSummaryOut)
def withdraw_issue(data, issue_id: uuid.UUID):
    """撤回 a report not yet assigned (its reporter), with a reason."""
    with _db().transaction() as session:
        return services.withdraw(session, current_principal(), issue_id, data["reason"])


@blp.get("/me/phone")
@require_roles()
@blp.doc(security=BEARER)
@blp.response(200, PhoneOut)
def my_phone():
    """The caller's contact phone for callbacks (masked), and how it was confirmed."""
    with _db().transaction() as session:
        return services.my_phone(session, current_principal())


@blp.put("/me/phone")
@require_roles()
@blp.doc(security=BEARER)
@blp.arguments(PhoneIn)
@blp.response(200, PhoneOut)
def set_my_phone(data):
    """联系电话: WeChat's ``getPhoneNumber`` code, or a number typed in with ``confirm: true``."""
    return services.confirm_contact_phone(
        _db(),
        wechat_phone_for(current_app),
        current_principal(),
        code=data.get("code"),
        phone=data.get("phone"),
    )
