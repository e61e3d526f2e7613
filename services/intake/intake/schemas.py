"""Marshmallow schemas for reports, photos, ratings, categories and villages."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from intake.domain import CATEGORIES, LEVELS, RATINGS, STATES
from shared.clock import LocalDateTime

MAX_PHOTOS = 9


class ReportIn(Schema):
    class Meta:
        unknown = EXCLUDE

    category = fields.String(required=True, validate=validate.OneOf(list(CATEGORIES)))
    description = fields.String(required=True, validate=validate.Length(min=5, max=2000))
    village_id = fields.UUID(required=True)
    address = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))
    lat = fields.Float(load_default=None, allow_none=True, validate=validate.Range(-90, 90))
    lon = fields.Float(load_default=None, allow_none=True, validate=validate.Range(-180, 180))
    photo_ids = fields.List(
        fields.UUID(), load_default=list, validate=validate.Length(max=MAX_PHOTOS)
    )

    @validates_schema
    def _coordinates_come_in_pairs(self, data, **_kwargs):
        if (data.get("lat") is None) != (data.get("lon") is None):
            raise ValidationError("经纬度需要同时提供。", field_name="lat")
        if data.get("description") is not None and len(data["description"].strip()) < 5:
            raise ValidationError("长度不能少于 5 个字符（项）。", field_name="description")


class MineQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    status = fields.String(load_default=None, validate=validate.OneOf(list(STATES)))
    cursor = fields.String(load_default=None)
    limit = fields.Integer(load_default=20, validate=validate.Range(1, 100))


class RatingIn(Schema):
    class Meta:
        unknown = EXCLUDE

    rating = fields.String(required=True, validate=validate.OneOf(list(RATINGS)))
    comment = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))


class MediaQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    size = fields.String(load_default="full", validate=validate.OneOf(["full", "thumb"]))


class MediaOut(Schema):
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


def photo_links(ids: list) -> list[dict]:
    return [
        {"id": str(i), "url": f"/api/v1/media/{i}", "thumb_url": f"/api/v1/media/{i}?size=thumb"}
        for i in ids
    ]


class StepOut(Schema):
    kind = fields.String()
    title = fields.String()
    note = fields.String(allow_none=True)
    actor_name = fields.String(allow_none=True)
    occurred_at = LocalDateTime()


class IssueSummaryOut(Schema):
    id = fields.UUID()
    ticket_no = fields.String()
    category = fields.String()
    category_label = fields.Function(lambda i: CATEGORIES.get(i.category, i.category))
    description = fields.String()
    status = fields.String()
    status_label = fields.Function(lambda i: STATES.get(i.status, i.status))
    level = fields.String()
    level_label = fields.Function(lambda i: LEVELS.get(i.level, i.level))
    handler_name = fields.String(attribute="assignee_name", allow_none=True)
    due_at = LocalDateTime(allow_none=True)
    reported_at = LocalDateTime()
    rating = fields.String(allow_none=True)


class IssueOut(IssueSummaryOut):
    village_id = fields.UUID()
    village_name = fields.String(allow_none=True)
    address = fields.String(allow_none=True)
    lat = fields.Float(allow_none=True)
    lon = fields.Float(allow_none=True)
    photos = fields.Function(lambda i: photo_links(i.photo_ids or []))
    resolution_note = fields.String(allow_none=True)
    resolution_photos = fields.Function(lambda i: photo_links(i.resolution_photo_ids or []))
    resolved_at = LocalDateTime(allow_none=True)
    reject_reason = fields.String(allow_none=True)
    closed_at = LocalDateTime(allow_none=True)
    can_rate = fields.Boolean()
    timeline = fields.List(fields.Nested(StepOut), attribute="steps")


class IssuePageOut(Schema):
    items = fields.List(fields.Nested(IssueSummaryOut))
    next_cursor = fields.String(allow_none=True)


class ReportCreatedOut(Schema):
    id = fields.UUID()
    ticket_no = fields.String()
    status = fields.String()
    reported_at = LocalDateTime()


class RatingOut(Schema):
    issue_id = fields.UUID()
    rating = fields.String()
    rating_label = fields.Function(lambda r: RATINGS.get(r.rating, r.rating))
    comment = fields.String(allow_none=True)
    rated_at = LocalDateTime()


class CategoryOut(Schema):
    code = fields.String()
    label = fields.String()


class VillageOut(Schema):
    id = fields.UUID()
    name = fields.String()
