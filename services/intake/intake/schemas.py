"""Marshmallow schemas for reports, photos, ratings, categories and villages."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from intake.domain import (
    CATEGORIES,
    LEVELS,
    RATINGS,
    STATES,
    STATUS_GROUPS,
    description_problem,
    masked_phone,
    mobile_number,
)
from shared.clock import LocalDateTime
from shared.fields import Derived, OutSchema, Text

MAX_PHOTOS = 9


class OnBehalfIn(Schema):
    """The resident a staff member reports for (代办/帮办): an account, or a name and phone."""

    class Meta:
        unknown = EXCLUDE

    resident_id = fields.UUID(load_default=None, allow_none=True)
    name = Text(load_default=None, allow_none=True, validate=validate.Length(max=64))
    phone = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=32))

    @validates_schema
    def _someone(self, data, **_kwargs):
        if data.get("resident_id") is None and not (data.get("name") or "").strip():
            raise ValidationError("请填写代办群众的姓名（或选择群众账号）。", field_name="name")
        if data.get("phone") and mobile_number(data["phone"]) is None:
            raise ValidationError("请填写正确的 11 位手机号码。", field_name="phone")


class ReportIn(Schema):
    class Meta:
        unknown = EXCLUDE

    category = fields.String(required=True, validate=validate.OneOf(list(CATEGORIES)))
    # With a photo a short description (2+) or none will do; without one it stays required.
    description = Text(load_default=None, allow_none=True, validate=validate.Length(max=2000))
    village_id = fields.UUID(required=True)
    address = Text(load_default=None, allow_none=True, validate=validate.Length(max=255))
    lat = fields.Float(load_default=None, allow_none=True, validate=validate.Range(-90, 90))
    lon = fields.Float(load_default=None, allow_none=True, validate=validate.Range(-180, 180))
    photo_ids = fields.List(
        fields.UUID(), load_default=list, validate=validate.Length(max=MAX_PHOTOS)
    )
    on_behalf_of = fields.Nested(OnBehalfIn, load_default=None, allow_none=True)

    @validates_schema
    def _coordinates_come_in_pairs(self, data, **_kwargs):
        if (data.get("lat") is None) != (data.get("lon") is None):
            raise ValidationError("经纬度需要同时提供。", field_name="lat")
        problem = description_problem(data.get("description"), bool(data.get("photo_ids")))
        if problem:
            raise ValidationError(problem, field_name="description")


class MineQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    # A state, or ``done`` (resolved and closed: 已办结事项) or ``open``.
    status = fields.String(load_default=None, validate=validate.OneOf([*STATES, *STATUS_GROUPS]))
    cursor = fields.String(load_default=None)
    limit = fields.Integer(load_default=20, validate=validate.Range(1, 100))


class DetailsIn(Schema):
    """补充说明: more words (and photos of the reporter's own) on an open report."""

    class Meta:
        unknown = EXCLUDE

    text = Text(required=True, validate=validate.Length(min=1, max=500))
    photo_ids = fields.List(
        fields.UUID(), load_default=list, validate=validate.Length(max=MAX_PHOTOS)
    )

    @validates_schema
    def _not_blank(self, data, **_kwargs):
        if not data["text"].strip():
            raise ValidationError("请填写补充说明。", field_name="text")


class UrgeIn(Schema):
    class Meta:
        unknown = EXCLUDE

    text = Text(load_default=None, allow_none=True, validate=validate.Length(max=200))


class WithdrawIn(Schema):
    class Meta:
        unknown = EXCLUDE

    reason = Text(required=True, validate=validate.Length(min=2, max=500))

    @validates_schema
    def _not_blank(self, data, **_kwargs):
        if len(data["reason"].strip()) < 2:
            raise ValidationError("请填写撤回的原因（至少 2 个字）。", field_name="reason")


class PhoneIn(Schema):
    """A contact phone: WeChat's ``getPhoneNumber`` code, or typed in and confirmed."""

    class Meta:
        unknown = EXCLUDE

    code = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 256))
    phone = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=32))
    confirm = fields.Boolean(load_default=False)

    @validates_schema
    def _one_way(self, data, **_kwargs):
        if data.get("code") and data.get("phone"):
            raise ValidationError("请只用一种方式提供手机号。", field_name="phone")
        if data.get("code"):
            return
        if not data.get("phone"):
            raise ValidationError("请填写手机号，或使用微信手机号快速填写。", field_name="phone")
        if mobile_number(data["phone"]) is None:
            raise ValidationError("请填写正确的 11 位手机号码。", field_name="phone")
        if not data.get("confirm"):
            raise ValidationError("请确认手机号无误后再提交。", field_name="confirm")


class PhoneOut(OutSchema):
    phone = Derived(lambda u: masked_phone(u.contact_phone))
    source = fields.String(attribute="contact_phone_source", allow_none=True)
    confirmed_at = LocalDateTime(attribute="contact_phone_confirmed_at", allow_none=True)


class UrgedOut(OutSchema):
    issue_id = fields.UUID(attribute="id")
    urge_count = fields.Integer()
    last_urged_at = LocalDateTime(allow_none=True)


class RatingIn(Schema):
    class Meta:
        unknown = EXCLUDE

    rating = fields.String(required=True, validate=validate.OneOf(list(RATINGS)))
    comment = Text(load_default=None, allow_none=True, validate=validate.Length(max=500))


class MediaQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    size = fields.String(load_default="full", validate=validate.OneOf(["full", "thumb"]))


class MediaOut(OutSchema):
    id = fields.UUID()
    content_type = fields.String()
    width = fields.Integer()
    height = fields.Integer()
    byte_size = fields.Integer()
    url = fields.Method("_url")
    thumb_url = fields.Method("_thumb_url")
    created_at = LocalDateTime()

    def _url(self, media) -> str:
        return f"/api/v1/media/{media.id}"

    def _thumb_url(self, media) -> str:
        return f"/api/v1/media/{media.id}?size=thumb"


def photo_links(ids: list | None) -> list[dict]:
    return [
        {"id": str(i), "url": f"/api/v1/media/{i}", "thumb_url": f"/api/v1/media/{i}?size=thumb"}
        for i in ids or []
    ]


class StepOut(OutSchema):
    kind = fields.String()
    title = fields.String()
    note = Text(allow_none=True)
    actor_name = fields.String(allow_none=True)
    occurred_at = LocalDateTime()


class IssueSummaryOut(OutSchema):
    id = fields.UUID()
    ticket_no = fields.String()
    category = fields.String()
    category_label = Derived(lambda i: CATEGORIES.get(i.category, i.category))
    description = Text()
    status = fields.String()
    status_label = Derived(lambda i: STATES.get(i.status, i.status))
    level = fields.String()
    level_label = Derived(lambda i: LEVELS.get(i.level, i.level))
    handler_name = fields.String(attribute="assignee_name", allow_none=True)
    due_at = LocalDateTime(allow_none=True)
    reported_at = LocalDateTime()
    rating = fields.String(allow_none=True)


class ProgressStepOut(OutSchema):
    title = fields.String()
    occurred_at = LocalDateTime()


class OriginalProgressOut(OutSchema):
    """The original of a duplicate report, as its reporter may follow it: progress only."""

    ticket_no = fields.String(allow_none=True)
    category = fields.String(allow_none=True)
    category_label = Derived(lambda d: CATEGORIES.get(d.get("category"), d.get("category")))
    status = fields.String(allow_none=True)
    status_label = Derived(lambda d: STATES.get(d.get("status"), d.get("status")))
    level = fields.String(allow_none=True)
    level_label = Derived(lambda d: LEVELS.get(d.get("level"), d.get("level")))
    handler_name = fields.String(allow_none=True)
    reported_at = LocalDateTime(allow_none=True)
    due_at = LocalDateTime(allow_none=True)
    resolved_at = LocalDateTime(allow_none=True)
    closed_at = LocalDateTime(allow_none=True)
    timeline = fields.List(fields.Nested(ProgressStepOut))


class IssueOut(IssueSummaryOut):
    village_id = fields.UUID()
    village_name = fields.String(allow_none=True)
    address = Text(allow_none=True)
    lat = fields.Float(allow_none=True)
    lon = fields.Float(allow_none=True)
    # Only photos attached to the report (``services.visible_issue`` sets ``shown_*``).
    photos = Derived(lambda i: photo_links(getattr(i, "shown_photo_ids", i.photo_ids)))
    resolution_note = fields.String(allow_none=True)
    resolution_photos = Derived(
        lambda i: photo_links(getattr(i, "shown_resolution_photo_ids", i.resolution_photo_ids))
    )
    resolved_at = LocalDateTime(allow_none=True)
    reject_reason = fields.String(allow_none=True)
    closed_at = LocalDateTime(allow_none=True)
    can_rate = fields.Boolean()
    contact_name = Text(allow_none=True)
    contact_phone = Derived(lambda i: masked_phone(i.contact_phone))
    submitted_by = fields.UUID(allow_none=True)
    urge_count = fields.Integer()
    last_urged_at = LocalDateTime(allow_none=True)
    timeline = fields.List(fields.Nested(StepOut), attribute="timeline_rows")
    # Rejected as a duplicate: the original's number and progress (its reporter's data stays out).
    duplicate_of = fields.Nested(OriginalProgressOut, allow_none=True)


class IssuePageOut(OutSchema):
    items = fields.List(fields.Nested(IssueSummaryOut))
    next_cursor = fields.String(allow_none=True)


class ReportCreatedOut(OutSchema):
    id = fields.UUID()
    ticket_no = fields.String()
    status = fields.String()
    reported_at = LocalDateTime()


class RatingOut(OutSchema):
    issue_id = fields.UUID()
    rating = fields.String()
    rating_label = Derived(lambda r: RATINGS.get(r.rating, r.rating))
    comment = Text(allow_none=True)
    rated_at = LocalDateTime()


class CategoryOut(OutSchema):
    code = fields.String()
    label = fields.String()


class VillageOut(OutSchema):
    id = fields.UUID()
    name = Text()
