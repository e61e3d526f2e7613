"""Marshmallow schemas for dispatch's routes: what each accepts and answers (Asia/Shanghai)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from dispatch.domain import CATEGORIES, LEVEL_LABELS, LEVELS, OPEN_STATES, STATES, is_overdue
from dispatch.models import DEPARTMENT_KINDS
from dispatch.services import LEDGER_STATUSES
from shared.auth import STAFF_ROLES
from shared.clock import SHANGHAI, LocalDateTime, utcnow
from shared.fields import Derived, OutSchema, Text

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
    # One of the two: a grid worker or leader, or (admins only) a township department.
    assignee_id = fields.UUID(load_default=None, allow_none=True)
    department_id = fields.UUID(load_default=None, allow_none=True)
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

    @validates_schema
    def _one_holder(self, data, **_kw):
        if (data.get("assignee_id") is None) == (data.get("department_id") is None):
            raise ValidationError(
                "请指定办理人（网格员）或分管部门，二者选一。", field_name="assignee_id"
            )


class ReasonIn(VersionIn):
    reason = Text(required=True, validate=validate.Length(min=2, max=1000))


class RejectIn(ReasonIn):
    # Rejected as a duplicate of this report (open or done, same village): its reporter follows it.
    duplicate_of = fields.UUID(load_default=None, allow_none=True)


class ReopenIn(_In):
    reason = Text(required=True, validate=validate.Length(min=2, max=1000))
    due_in_hours = fields.Float(
        load_default=None, allow_none=True, validate=validate.Range(min=0.5, max=24 * 90)
    )


class NoteIn(_In):
    text = Text(required=True, validate=validate.Length(min=1, max=2000))
    media_ids = UUIDS
    meeting_called = fields.Boolean(load_default=False)


class ResolveIn(VersionIn):
    note = Text(required=True, validate=validate.Length(min=1, max=2000))
    media_ids = UUIDS


class EscalateIn(VersionIn):
    to_level = fields.String(required=True, validate=validate.OneOf(LEVELS))
    reason = Text(required=True, validate=validate.Length(min=2, max=1000))
    # county: the county department (required); township: a township department (optional,
    # admins only; none: the township admins hold it).
    department = fields.UUID(load_default=None, allow_none=True)
    admin_override = fields.Boolean(load_default=False)


class CallbackIn(_In):
    method = fields.String(required=True, validate=validate.OneOf(["phone", "visit"]))
    lawful = fields.Boolean(required=True)
    implemented = fields.Boolean(required=True)
    accepted = fields.Boolean(required=True)
    notes = Text(load_default=None, allow_none=True, validate=validate.Length(max=2000))


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

    default_error_messages = {
        "invalid": "应为日期（YYYY-MM-DD）或 ISO-8601 时间。",
        "out_of_range": "日期超出可用范围。",
    }

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
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=SHANGHAI)
            return moment.astimezone(UTC)
        except ValueError:
            raise self.make_error("invalid") from None
        except OverflowError:  # the calendar's ends (0001-01-01, 9999-12-31) in another zone
            raise self.make_error("out_of_range") from None


class StatsQuery(_Query):
    from_ = LocalDay(data_key="from", load_default=None)
    to = LocalDay(end=True, load_default=None)
    village_id = fields.UUID(load_default=None)
    category = fields.String(load_default=None, validate=validate.OneOf(list(CATEGORIES)))


class StaffQuery(PageQuery):
    role = fields.String(
        load_default=None,
        validate=validate.OneOf(sorted(STAFF_ROLES), error="未知的工作人员角色。"),
    )


class CallbackQuery(PageQuery):
    village_id = fields.UUID(load_default=None)
    area_leader_id = fields.UUID(load_default=None)


class CallbackResultsQuery(CallbackQuery):
    passed = fields.Boolean(load_default=None, allow_none=True)


class GridQuery(_Query):
    village_id = fields.UUID(load_default=None)


# --- life cycle out ------------------------------------------------------------------------------


class IssueOut(OutSchema):
    id = fields.UUID()
    ticket_no = fields.String(allow_none=True)
    state = fields.String()
    state_label = Derived(lambda i: STATES.get(i.state, i.state))
    level = fields.String()
    level_label = Derived(lambda i: LEVEL_LABELS.get(i.level, i.level))
    category = fields.String()
    category_label = Derived(lambda i: CATEGORIES.get(i.category, i.category))
    description = Text()
    village_id = fields.UUID()
    village_name = Derived(lambda i: getattr(i, "village_name", None))
    address = Text(allow_none=True)
    lat = fields.Float(allow_none=True)
    lon = fields.Float(allow_none=True)
    photo_ids = fields.List(fields.String())
    reporter_id = fields.UUID()
    reported_at = LocalDateTime()
    assignee_id = fields.UUID(allow_none=True)
    assignee_name = Derived(lambda i: getattr(i, "assignee_name", None))
    grid_id = fields.UUID(allow_none=True)
    grid_leader_id = fields.UUID(allow_none=True)
    handler_id = fields.UUID(allow_none=True)
    follower_id = fields.UUID(allow_none=True)
    department_id = fields.UUID(allow_none=True)
    department_name = Derived(lambda i: getattr(i, "department_name", None))
    difficulty = fields.Integer(allow_none=True)
    due_at = LocalDateTime(allow_none=True)
    overdue = Derived(lambda i: is_overdue(i, utcnow()))
    assigned_at = LocalDateTime(allow_none=True)
    started_at = LocalDateTime(allow_none=True)
    resolved_at = LocalDateTime(allow_none=True)
    resolved_on_time = fields.Boolean(allow_none=True)
    resolution_note = fields.String(allow_none=True)
    resolution_photo_ids = fields.List(fields.String())
    closed_at = LocalDateTime(allow_none=True)
    rating = fields.String(allow_none=True)
    reject_reason = fields.String(allow_none=True)
    duplicate_of_id = fields.UUID(allow_none=True)
    callback_status = fields.String(allow_none=True)
    # 代办: the staff member who reported for the resident; 催办: how often and when last.
    submitted_by = fields.UUID(allow_none=True)
    urge_count = fields.Integer()
    last_urged_at = LocalDateTime(allow_none=True)
    version = fields.Integer()


class IssuePageOut(OutSchema):
    items = fields.List(fields.Nested(IssueOut))
    next_cursor = fields.String(allow_none=True)


class DuplicateOut(OutSchema):
    """A likely duplicate: an open report of the same village and category, close in time and
    place (``distance_m`` null when either report has no coordinates)."""

    id = fields.UUID()
    ticket_no = fields.String(allow_none=True)
    reported_at = LocalDateTime()
    distance_m = fields.Integer(allow_none=True)
    state = fields.String()
    state_label = Derived(lambda d: STATES.get(d["state"], d["state"]))
    level = fields.String()


# One instance for every item: building a schema deep-copies its fields (about 0.3 ms, a
# third of a 20-item queue page when it was built per item); dumping keeps no state.
_DUPLICATES = DuplicateOut(many=True)


class QueueItemOut(IssueOut):
    possible_duplicates = Derived(
        lambda i: _DUPLICATES.dump(getattr(i, "possible_duplicates", [])),
        metadata={"description": "疑似重复：同村同类、时间和地点相近的未办结事项"},
    )


class QueuePageOut(OutSchema):
    items = fields.List(fields.Nested(QueueItemOut))
    next_cursor = fields.String(allow_none=True)


class HistoryOut(OutSchema):
    seq = fields.Integer()
    action = fields.String()
    from_state = fields.String(allow_none=True)
    to_state = fields.String()
    from_level = fields.String(allow_none=True)
    to_level = fields.String()
    actor_id = fields.UUID(allow_none=True)
    actor_name = fields.String(allow_none=True)
    note = Text(allow_none=True)
    details = fields.Dict()
    occurred_at = LocalDateTime()


class PendingCallbackOut(IssueOut):
    """An item waiting for a callback, with the resident's contact for a phone callback: whole
    for supervisors (who call), masked for anyone else (``services.show_contacts``)."""

    contact_name = Derived(lambda i: getattr(i, "shown_contact_name", None))
    contact_phone = Derived(lambda i: getattr(i, "shown_contact_phone", None))


class PendingCallbackPageOut(OutSchema):
    items = fields.List(fields.Nested(PendingCallbackOut))
    next_cursor = fields.String(allow_none=True)


class CallbackOut(OutSchema):
    id = fields.UUID()
    issue_id = fields.UUID()
    supervisor_id = fields.UUID()
    method = fields.String()
    lawful = fields.Boolean()
    implemented = fields.Boolean()
    accepted = fields.Boolean()
    passed = fields.Boolean()
    notes = Text(allow_none=True)
    recorded_at = LocalDateTime()


def _text(value: object) -> str | None:
    return None if value is None else str(value)


class CallbackResultOut(CallbackOut):
    """A recorded callback with its item's ticket, category and village (the results history)."""

    supervisor_name = Derived(lambda c: getattr(c, "supervisor_name", None))
    ticket_no = Derived(lambda c: getattr(c, "ticket_no", None))
    category = Derived(lambda c: getattr(c, "category", None))
    category_label = Derived(lambda c: CATEGORIES.get(getattr(c, "category", None) or "", None))
    village_id = Derived(lambda c: _text(getattr(c, "village_id", None)))
    village_name = Derived(lambda c: getattr(c, "village_name", None))


class CallbackResultPageOut(OutSchema):
    items = fields.List(fields.Nested(CallbackResultOut))
    next_cursor = fields.String(allow_none=True)


# --- ledger --------------------------------------------------------------------------------------


class LedgerProgressIn(_In):
    text = Text(required=True, validate=validate.Length(min=1, max=2000))
    status = fields.String(load_default=None, validate=validate.OneOf(list(LEDGER_STATUSES)))


class LedgerProgressOut(OutSchema):
    id = fields.UUID()
    text = Text()
    status = fields.String(allow_none=True)
    author_id = fields.UUID(allow_none=True)
    author_name = fields.String(allow_none=True)
    created_at = LocalDateTime()


class LedgerEntryOut(OutSchema):
    id = fields.UUID()
    ledger_no = fields.String()
    issue_id = fields.UUID()
    department_id = fields.UUID()
    department = Derived(lambda e: e.department.name)
    reason = Text()
    status = fields.String()
    status_label = Derived(lambda e: LEDGER_STATUSES.get(e.status, e.status))
    referred_at = LocalDateTime()
    updated_at = LocalDateTime()
    progress = fields.List(fields.Nested(LedgerProgressOut))


class LedgerPageOut(OutSchema):
    items = fields.List(fields.Nested(LedgerEntryOut))
    next_cursor = fields.String(allow_none=True)


# --- organisation --------------------------------------------------------------------------------


class VillageIn(_In):
    id = fields.UUID(load_default=None)
    code = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=16))
    name = Text(required=True, validate=validate.Length(min=1, max=64))
    area_leader_id = fields.UUID(load_default=None, allow_none=True)


class VillageChangeIn(_In):
    code = fields.String(allow_none=True, validate=validate.Length(max=16))
    name = Text(validate=validate.Length(min=1, max=64))
    area_leader_id = fields.UUID(allow_none=True)


class VillageOut(OutSchema):
    id = fields.UUID()
    code = fields.String(allow_none=True)
    name = Text()
    area_leader_id = fields.UUID(allow_none=True)
    updated_at = LocalDateTime()


class GridIn(_In):
    id = fields.UUID(load_default=None)
    code = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=16))
    village_id = fields.UUID(required=True)
    name = Text(required=True, validate=validate.Length(min=1, max=64))
    leader_id = fields.UUID(load_default=None, allow_none=True)
    member_ids = fields.List(fields.UUID(), load_default=list)


class GridChangeIn(_In):
    code = fields.String(allow_none=True, validate=validate.Length(max=16))
    village_id = fields.UUID()
    name = Text(validate=validate.Length(min=1, max=64))
    leader_id = fields.UUID(allow_none=True)
    member_ids = fields.List(fields.UUID())


class MembersIn(_In):
    user_ids = fields.List(fields.UUID(), required=True)


class MemberIn(_In):
    user_id = fields.UUID(required=True)


class GridOut(OutSchema):
    id = fields.UUID()
    code = fields.String(allow_none=True)
    village_id = fields.UUID()
    name = Text()
    leader_id = fields.UUID(allow_none=True)
    member_ids = Derived(lambda g: [str(m.user_id) for m in g.members])


class AreaLeaderIn(_In):
    village_ids = fields.List(fields.UUID(), required=True)


class VillageRefOut(OutSchema):
    id = fields.UUID()
    code = fields.String(allow_none=True)
    name = Text()


class AreaLeaderOut(OutSchema):
    user_id = fields.UUID()
    name = Text(allow_none=True)
    villages = fields.List(fields.Nested(VillageRefOut))


DEPARTMENT_KIND = validate.OneOf(list(DEPARTMENT_KINDS), error="部门类型应为 township 或 county。")


class DepartmentIn(_In):
    id = fields.UUID(load_default=None)
    code = fields.String(required=True, validate=validate.Length(min=1, max=32))
    name = Text(required=True, validate=validate.Length(min=1, max=64))
    kind = fields.String(load_default="county", validate=DEPARTMENT_KIND)
    active = fields.Boolean(load_default=True)
    # The department's staff (role department_staff), by user id.
    member_ids = fields.List(fields.UUID(), load_default=list, validate=validate.Length(max=200))


class DepartmentChangeIn(_In):
    code = fields.String(validate=validate.Length(min=1, max=32))
    name = Text(validate=validate.Length(min=1, max=64))
    kind = fields.String(validate=DEPARTMENT_KIND)
    active = fields.Boolean()
    member_ids = fields.List(fields.UUID(), validate=validate.Length(max=200))


class DepartmentQuery(_Query):
    kind = fields.String(load_default=None, validate=DEPARTMENT_KIND)


class DepartmentOut(OutSchema):
    id = fields.UUID()
    code = fields.String()
    name = Text()
    kind = fields.String()
    kind_label = Derived(lambda d: DEPARTMENT_KINDS.get(d.kind, d.kind))
    active = fields.Boolean()
    member_ids = Derived(lambda d: [str(m.user_id) for m in d.members])


class StaffOut(OutSchema):
    id = fields.UUID()
    name = Text()
    # Admins only (``organisation.list_staff`` sets ``shown_phone``); null for anyone else.
    phone = Derived(lambda s: getattr(s, "shown_phone", None), allow_none=True)
    roles = fields.List(fields.String())
    village_id = fields.UUID(allow_none=True)
    active = fields.Boolean()


class StaffPageOut(OutSchema):
    items = fields.List(fields.Nested(StaffOut))
    next_cursor = fields.String(allow_none=True)


# --- public figures (no login) -------------------------------------------------------------------


class PublicCategoryOut(OutSchema):
    category = fields.String()
    label = fields.String()
    reports = fields.Integer()
    completed = fields.Integer()
    completion_rate = fields.Float()


class PublicFiguresOut(OutSchema):
    """Aggregates only: nobody's name, phone, report text or id."""

    reports = fields.Integer()
    completed = fields.Integer()
    completion_rate = fields.Float(metadata={"description": "办结率（%，两位小数）"})
    open = fields.Integer(metadata={"description": "未办结"})
    rated = fields.Integer(metadata={"description": "已评价"})
    satisfied = fields.Integer(metadata={"description": "满意与基本满意"})
    satisfaction_rate = fields.Float(
        metadata={"description": "满意率：满意与基本满意占已评价的百分比"}
    )
    by_category = fields.List(fields.Nested(PublicCategoryOut))
    as_of = LocalDateTime()
