"""Marshmallow schemas for dispatch's routes: what each accepts and answers (Asia/Shanghai)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from dispatch.domain import CATEGORIES, LEVEL_LABELS, LEVELS, OPEN_STATES, STATES, is_overdue
from dispatch.services import LEDGER_STATUSES
from shared.clock import SHANGHAI, LocalDateTime, utcnow

UUIDS = fields.List(fields.UUID(), load_default=list, validate=validate.Length(max=9))


class _In(Schema):
    class Meta:
        unknown = RAISE


class _Query(Schema):
    class Meta:
        unknown = EXCLUDE


# --- life cycle in -------------------------------------------------------------------------------


class VersionIn(_In):
    version = fields.Integer(load_default=None, allow_none=True)


class AssignIn(VersionIn):
    assignee_id = fields.UUID(required=True)
    difficulty = fields.Integer(required=True, validate=validate.Range(min=1, max=5))
    due_at = LocalDateTime(load_default=None, allow_none=True)
    due_in_hours = fields.Float(
        load_default=None, allow_none=True, validate=validate.Range(min=0.5, max=24 * 90)
    )
    reassign = fields.Boolean(load_default=False)

    @validates_schema
    def _one_deadline(self, data, **_kw):
        if data.get("due_at") is not None and data.get("due_in_hours") is not None:
            raise ValidationError("截止时间和办理时限只能填写一项。", field_name="due_at")


class ReasonIn(VersionIn):
    reason = fields.String(required=True, validate=validate.Length(min=2, max=1000))


class ReopenIn(_In):
    reason = fields.String(required=True, validate=validate.Length(min=2, max=1000))
    due_in_hours = fields.Float(
        load_default=None, allow_none=True, validate=validate.Range(min=0.5, max=24 * 90)
    )


class NoteIn(_In):
    text = fields.String(required=True, validate=validate.Length(min=1, max=2000))
    media_ids = UUIDS
    meeting_called = fields.Boolean(load_default=False)


class ResolveIn(VersionIn):
    note = fields.String(required=True, validate=validate.Length(min=1, max=2000))
    media_ids = UUIDS


class EscalateIn(VersionIn):
    to_level = fields.String(required=True, validate=validate.OneOf(LEVELS))
    reason = fields.String(required=True, validate=validate.Length(min=2, max=1000))
    department = fields.UUID(load_default=None, allow_none=True)
    admin_override = fields.Boolean(load_default=False)


class CallbackIn(_In):
    method = fields.String(required=True, validate=validate.OneOf(["phone", "visit"]))
    lawful = fields.Boolean(required=True)
    implemented = fields.Boolean(required=True)
    accepted = fields.Boolean(required=True)
    notes = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))


# --- queries -------------------------------------------------------------------------------------


class PageQuery(_Query):
    cursor = fields.String(load_default=None, validate=validate.Length(max=512))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


class QueueQuery(PageQuery):
    village_id = fields.UUID(load_default=None)
    village = fields.UUID(load_default=None)
    category = fields.String(load_default=None, validate=validate.OneOf(list(CATEGORIES)))
    level = fields.String(load_default=None, validate=validate.OneOf(LEVELS))
    state = fields.String(load_default=None, validate=validate.OneOf(sorted(OPEN_STATES)))
    overdue = fields.Boolean(load_default=None, allow_none=True)


class TasksQuery(PageQuery):
    following = fields.Boolean(load_default=False)


class LedgerQuery(PageQuery):
    status = fields.String(load_default=None, validate=validate.OneOf(list(LEDGER_STATUSES)))
    department_id = fields.UUID(load_default=None)


class ExportQuery(_Query):
    format = fields.String(load_default="csv", validate=validate.OneOf(["csv", "xlsx"]))
    status = fields.String(load_default=None, validate=validate.OneOf(list(LEDGER_STATUSES)))


class LocalDay(fields.Field):
    """A day (``2026-11-28``, Asia/Shanghai) or a full ISO-8601 time, loaded as UTC."""

    default_error_messages = {"invalid": "应为日期（YYYY-MM-DD）或 ISO-8601 时间。"}

    def __init__(self, *, end: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.end = end

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            if len(value) == 10:
                day = datetime.fromisoformat(value).date()
                if self.end:  # ``to`` names the last day counted
                    day = day + timedelta(days=1)
                return datetime.combine(day, time(), SHANGHAI).astimezone(UTC)
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise self.make_error("invalid") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=SHANGHAI)
        return moment.astimezone(UTC)


class StatsQuery(_Query):
    from_ = LocalDay(data_key="from", load_default=None)
    to = LocalDay(end=True, load_default=None)
    village_id = fields.UUID(load_default=None)
    category = fields.String(load_default=None, validate=validate.OneOf(list(CATEGORIES)))


class StaffQuery(_Query):
    role = fields.String(load_default=None)


class GridQuery(_Query):
    village_id = fields.UUID(load_default=None)


# --- life cycle out ------------------------------------------------------------------------------


class IssueOut(Schema):
    id = fields.UUID()
    ticket_no = fields.String(allow_none=True)
    state = fields.String()
    state_label = fields.Function(lambda i: STATES.get(i.state, i.state))
    level = fields.String()
    level_label = fields.Function(lambda i: LEVEL_LABELS.get(i.level, i.level))
    category = fields.String()
    category_label = fields.Function(lambda i: CATEGORIES.get(i.category, i.category))
    description = fields.String()
    village_id = fields.UUID()
    village_name = fields.Function(lambda i: getattr(i, "village_name", None))
    address = fields.String(allow_none=True)
    lat = fields.Float(allow_none=True)
    lon = fields.Float(allow_none=True)
    photo_ids = fields.List(fields.String())
    reporter_id = fields.UUID()
    reported_at = LocalDateTime()
    assignee_id = fields.UUID(allow_none=True)
    assignee_name = fields.Function(lambda i: getattr(i, "assignee_name", None))
    grid_id = fields.UUID(allow_none=True)
    grid_leader_id = fields.UUID(allow_none=True)
    handler_id = fields.UUID(allow_none=True)
    follower_id = fields.UUID(allow_none=True)
    department_id = fields.UUID(allow_none=True)
    difficulty = fields.Integer(allow_none=True)
    due_at = LocalDateTime(allow_none=True)
    overdue = fields.Function(lambda i: is_overdue(i, utcnow()))
    assigned_at = LocalDateTime(allow_none=True)
    started_at = LocalDateTime(allow_none=True)
    resolved_at = LocalDateTime(allow_none=True)
    resolved_on_time = fields.Boolean(allow_none=True)
    resolution_note = fields.String(allow_none=True)
    resolution_photo_ids = fields.List(fields.String())
    closed_at = LocalDateTime(allow_none=True)
    rating = fields.String(allow_none=True)
    reject_reason = fields.String(allow_none=True)
    callback_status = fields.String(allow_none=True)
    version = fields.Integer()


class IssuePageOut(Schema):
    items = fields.List(fields.Nested(IssueOut))
    next_cursor = fields.String(allow_none=True)


class HistoryOut(Schema):
    seq = fields.Integer()
    action = fields.String()
    from_state = fields.String(allow_none=True)
    to_state = fields.String()
    from_level = fields.String(allow_none=True)
    to_level = fields.String()
    actor_id = fields.UUID(allow_none=True)
    actor_name = fields.String(allow_none=True)
    note = fields.String(allow_none=True)
    details = fields.Dict()
    occurred_at = LocalDateTime()


class CallbackOut(Schema):
    id = fields.UUID()
    issue_id = fields.UUID()
    supervisor_id = fields.UUID()
    method = fields.String()
    lawful = fields.Boolean()
    implemented = fields.Boolean()
    accepted = fields.Boolean()
    passed = fields.Boolean()
    notes = fields.String(allow_none=True)
    recorded_at = LocalDateTime()


# --- ledger --------------------------------------------------------------------------------------


class LedgerProgressIn(_In):
    text = fields.String(required=True, validate=validate.Length(min=1, max=2000))
    status = fields.String(load_default=None, validate=validate.OneOf(list(LEDGER_STATUSES)))


class LedgerProgressOut(Schema):
    id = fields.UUID()
    text = fields.String()
    status = fields.String(allow_none=True)
    author_id = fields.UUID(allow_none=True)
    author_name = fields.String(allow_none=True)
    created_at = LocalDateTime()


class LedgerEntryOut(Schema):
    id = fields.UUID()
    ledger_no = fields.String()
    issue_id = fields.UUID()
    department_id = fields.UUID()
    department = fields.Function(lambda e: e.department.name)
    reason = fields.String()
    status = fields.String()
    status_label = fields.Function(lambda e: LEDGER_STATUSES.get(e.status, e.status))
    referred_at = LocalDateTime()
    updated_at = LocalDateTime()
    progress = fields.List(fields.Nested(LedgerProgressOut))


class LedgerPageOut(Schema):
    items = fields.List(fields.Nested(LedgerEntryOut))
    next_cursor = fields.String(allow_none=True)


# --- organisation --------------------------------------------------------------------------------


class VillageIn(_In):
    id = fields.UUID(load_default=None)
    code = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=16))
    name = fields.String(required=True, validate=validate.Length(min=1, max=64))
    area_leader_id = fields.UUID(load_default=None, allow_none=True)


class VillageChangeIn(_In):
    code = fields.String(allow_none=True, validate=validate.Length(max=16))
    name = fields.String(validate=validate.Length(min=1, max=64))
    area_leader_id = fields.UUID(allow_none=True)


class VillageOut(Schema):
    id = fields.UUID()
    code = fields.String(allow_none=True)
    name = fields.String()
    area_leader_id = fields.UUID(allow_none=True)
    updated_at = LocalDateTime()


class GridIn(_In):
    id = fields.UUID(load_default=None)
    code = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=16))
    village_id = fields.UUID(required=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=64))
    leader_id = fields.UUID(load_default=None, allow_none=True)
    member_ids = fields.List(fields.UUID(), load_default=list)


class GridChangeIn(_In):
    code = fields.String(allow_none=True, validate=validate.Length(max=16))
    village_id = fields.UUID()
    name = fields.String(validate=validate.Length(min=1, max=64))
    leader_id = fields.UUID(allow_none=True)
    member_ids = fields.List(fields.UUID())


class MembersIn(_In):
    user_ids = fields.List(fields.UUID(), required=True)


class MemberIn(_In):
    user_id = fields.UUID(required=True)


class GridOut(Schema):
    id = fields.UUID()
    code = fields.String(allow_none=True)
    village_id = fields.UUID()
    name = fields.String()
    leader_id = fields.UUID(allow_none=True)
    member_ids = fields.Function(lambda g: [str(m.user_id) for m in g.members])


class AreaLeaderIn(_In):
    village_ids = fields.List(fields.UUID(), required=True)


class VillageRefOut(Schema):
    id = fields.UUID()
    code = fields.String(allow_none=True)
    name = fields.String()


class AreaLeaderOut(Schema):
    user_id = fields.UUID()
    name = fields.String(allow_none=True)
    villages = fields.List(fields.Nested(VillageRefOut))


class DepartmentIn(_In):
    id = fields.UUID(load_default=None)
    code = fields.String(required=True, validate=validate.Length(min=1, max=32))
    name = fields.String(required=True, validate=validate.Length(min=1, max=64))
    active = fields.Boolean(load_default=True)


class DepartmentChangeIn(_In):
    code = fields.String(validate=validate.Length(min=1, max=32))
    name = fields.String(validate=validate.Length(min=1, max=64))
    active = fields.Boolean()


class DepartmentOut(Schema):
    id = fields.UUID()
    code = fields.String()
    name = fields.String()
    active = fields.Boolean()


class StaffOut(Schema):
    id = fields.UUID()
    name = fields.String()
    phone = fields.String(allow_none=True)
    roles = fields.List(fields.String())
    village_id = fields.UUID(allow_none=True)
    active = fields.Boolean()
