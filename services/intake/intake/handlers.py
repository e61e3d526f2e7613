"""What intake consumes: dispatch's life-cycle events keep the residents' view of their reports.

One ``handle_<event>`` per event type and the one table ``SUBSCRIPTIONS`` that the worker binds.
Events may arrive out of order after retries. dispatch's events carry ``issue_version`` and a
``snapshot`` of the issue after the step: the snapshot is taken only when its version is newer
than the one held (``Issue.dispatch_version``), so a late event never undoes a newer one and
fields only it carried are still right. An event without them (an older dispatch) is judged by
its time (``Issue.state_changed_at``). Every step still lands in the timeline once.

From feed, ``news.published`` and ``post.published`` make the photos they show public.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import sqlalchemy as sa
from marshmallow import EXCLUDE, Schema, fields
from sqlalchemy.orm import Session

from intake.domain import LEVELS, RATINGS
from intake.models import Issue, IssueStep, Media, User, Village
from shared.clock import local_text
from shared.events import Envelope, load_data

log = logging.getLogger("intake.handlers")

REOPEN_REASONS = {
    "unsatisfied": "群众不满意，重新办理",
    "callback_failed": "回访未通过，重新办理",
    "admin": "管理员决定重新办理",
}


class SnapshotData(Schema):
    """dispatch's resident-facing state of the issue after the step (``snapshot``)."""

    class Meta:
        unknown = EXCLUDE

    state = fields.String(required=True)
    level = fields.String(load_default="grid")
    assignee_id = fields.UUID(load_default=None, allow_none=True)
    assignee_name = fields.String(load_default=None, allow_none=True)
    handler_id = fields.UUID(load_default=None, allow_none=True)
    handler_name = fields.String(load_default=None, allow_none=True)
    follower_id = fields.UUID(load_default=None, allow_none=True)
    follower_name = fields.String(load_default=None, allow_none=True)
    due_at = fields.AwareDateTime(load_default=None, allow_none=True)
    resolution_no = fields.Integer(load_default=0)
    resolution_note = fields.String(load_default=None, allow_none=True)
    resolution_photo_ids = fields.List(fields.UUID(), load_default=list, allow_none=True)
    resolved_at = fields.AwareDateTime(load_default=None, allow_none=True)
    rating = fields.String(load_default=None, allow_none=True)
    closed_at = fields.AwareDateTime(load_default=None, allow_none=True)
    reject_reason = fields.String(load_default=None, allow_none=True)
    holder_ids = fields.List(fields.UUID(), load_default=list, allow_none=True)


class _Tolerant(Schema):
    """Read only the fields we use; ignore the rest (tolerant reader)."""

    class Meta:
        unknown = EXCLUDE

    issue_id = fields.UUID(required=True)
    issue_version = fields.Integer(load_default=None, allow_none=True)
    snapshot = fields.Nested(SnapshotData, load_default=None, allow_none=True)


class AssignedData(_Tolerant):
    # None when the item was handed to a township department (分管部门: department_name).
    assignee_id = fields.UUID(load_default=None, allow_none=True)
    assignee_name = fields.String(load_default=None, allow_none=True)
    department_name = fields.String(load_default=None, allow_none=True)
    due_at = fields.AwareDateTime(load_default=None, allow_none=True)
    grid_leader_id = fields.UUID(load_default=None, allow_none=True)


class EscalatedData(_Tolerant):
    to_level = fields.String(required=True)
    reason = fields.String(load_default=None, allow_none=True)
    handler_id = fields.UUID(load_default=None, allow_none=True)
    county_department = fields.String(load_default=None, allow_none=True)
    # The holding department: a township department at the township level, the county's above.
    department_name = fields.String(load_default=None, allow_none=True)


class OverdueData(_Tolerant):
    due_at = fields.AwareDateTime(load_default=None, allow_none=True)


class ResolvedData(_Tolerant):
    resolved_at = fields.AwareDateTime(load_default=None, allow_none=True)
    note = fields.String(load_default=None, allow_none=True)
    photo_ids = fields.List(fields.UUID(), load_default=list)
    # Who resolved it: only photos they uploaded are attached (an older event: the assignee).
    resolver_id = fields.UUID(load_default=None, allow_none=True)
    assignee_id = fields.UUID(load_default=None, allow_none=True)


class ReopenedData(_Tolerant):
    reason = fields.String(load_default="admin")
    assignee_id = fields.UUID(load_default=None, allow_none=True)
    area_leader_id = fields.UUID(load_default=None, allow_none=True)
    due_at = fields.AwareDateTime(load_default=None, allow_none=True)


class ClosedData(_Tolerant):
    rating = fields.String(load_default=None, allow_none=True)
    closed_at = fields.AwareDateTime(load_default=None, allow_none=True)


class RejectedData(_Tolerant):
    reason = fields.String(load_default=None, allow_none=True)
    # Rejected as a duplicate: the original report, which the reporter may then follow.
    duplicate_of = fields.UUID(load_default=None, allow_none=True)
    duplicate_of_ticket_no = fields.String(load_default=None, allow_none=True)


class CallbackData(_Tolerant):
    method = fields.String(load_default=None, allow_none=True)
    accepted = fields.Boolean(load_default=None, allow_none=True)
    passed = fields.Boolean(load_default=None, allow_none=True)


class WithdrawalDeclinedData(_Tolerant):
    reason = fields.String(load_default=None, allow_none=True)


CALLBACK_METHODS = {"phone": "电话", "visit": "上门"}


class VillageData(Schema):
    class Meta:
        unknown = EXCLUDE

    village_id = fields.UUID(required=True)
    name = fields.String(required=True)
    area_leader_id = fields.UUID(load_default=None, allow_none=True)
    revision = fields.Integer(load_default=None, allow_none=True)


def _issue(session: Session, issue_id: uuid.UUID) -> Issue:
    issue = session.scalar(sa.select(Issue).where(Issue.id == issue_id).with_for_update())
    if issue is None:
        raise LookupError(f"issue {issue_id} is not known to intake")
    return issue


def _staff_name(session: Session, user_id: uuid.UUID | None) -> str | None:
    if user_id is None:
        return None
    return session.scalar(sa.select(User.name).where(User.id == user_id))


def _snap(data: dict[str, Any], field: str) -> Any:
    snapshot = data.get("snapshot")
    return snapshot.get(field) if snapshot else None


def _versioned(data: dict[str, Any]) -> bool:
    return data.get("issue_version") is not None and data.get("snapshot") is not None


def _step(
    session: Session,
    issue: Issue,
    event: Envelope,
    data: dict[str, Any],
    title: str,
    note: str | None = None,
    actor: str | None = None,
    *,
    moves_state: bool = True,
) -> bool:
    """Add the timeline step and bring the issue's state up to date.

    An event with ``issue_version`` and ``snapshot`` is applied here, whole, when its version is
    newer than the one held (a late one only adds its step); the answer is then False. An older
    event without them is judged by its time: True when it is the newest, and the caller applies
    its fields.
    """
    session.add(
        IssueStep(
            issue_id=issue.id,
            event_id=event.id,
            kind=event.type,
            title=title,
            note=note,
            actor_name=actor,
            occurred_at=event.occurred_at,
        )
    )
    if _versioned(data):
        if issue.dispatch_version is None or data["issue_version"] > issue.dispatch_version:
            _apply_snapshot(session, issue, data["snapshot"], data["issue_version"])
        if issue.state_changed_at is None or event.occurred_at > issue.state_changed_at:
            issue.state_changed_at = event.occurred_at
        return False
    if not moves_state:
        return False
    newest = issue.state_changed_at is None or event.occurred_at >= issue.state_changed_at
    if newest:
        issue.state_changed_at = event.occurred_at
    return newest


def _apply_snapshot(session: Session, issue: Issue, snapshot: dict[str, Any], version: int) -> None:
    """Take dispatch's state of the issue as the resident sees it (newer than what we hold)."""
    same_resolution = snapshot["resolution_no"] == issue.resolution_count
    issue.dispatch_version = version
    issue.status = snapshot["state"]
    issue.level = snapshot["level"]
    issue.assignee_id = snapshot["assignee_id"]
    issue.holder_ids = [str(h) for h in snapshot["holder_ids"] or []]
    # The resident sees who holds it: the level's holder (or county department), else the worker.
    issue.assignee_name = (
        snapshot["handler_name"]
        or snapshot["assignee_name"]
        or _staff_name(session, snapshot["assignee_id"])
    )
    issue.due_at = snapshot["due_at"]
    issue.resolution_count = max(issue.resolution_count or 0, snapshot["resolution_no"])
    issue.resolution_note = snapshot["resolution_note"]
    issue.resolution_photo_ids = [str(p) for p in snapshot["resolution_photo_ids"] or []]
    issue.resolved_at = snapshot["resolved_at"]
    issue.closed_at = snapshot["closed_at"]
    issue.reject_reason = snapshot["reject_reason"]
    if snapshot["rating"] is not None or not same_resolution:
        issue.rating = snapshot["rating"]
    # else: the reporter's own rating of this resolution, not yet taken by dispatch, stays.


def handle_issue_assigned(session: Session, event: Envelope) -> None:
    data = load_data(AssignedData, event.data)
    issue = _issue(session, data["issue_id"])
    if data["department_name"]:
        name = data["department_name"]
        title = f"已交办给{name}"
    else:
        name = (
            data["assignee_name"]
            or _snap(data, "assignee_name")
            or _staff_name(session, data["assignee_id"])
        )
        title = f"已交办给网格员{name or ''}"
    note = f"限 {local_text(data['due_at'])} 前办结" if data["due_at"] else None
    newest = _step(session, issue, event, data, title, note, actor=name)
    if newest or (_versioned(data) and issue.dispatch_version == data["issue_version"]):
        # This assignment is the latest one: its grid's leader may read the report (scopes).
        issue.grid_leader_id = data["grid_leader_id"]
    if newest:
        issue.status = "assigned"
        issue.assignee_id = data["assignee_id"]
        issue.assignee_name = name
        issue.due_at = data["due_at"]


def handle_issue_started(session: Session, event: Envelope) -> None:
    data = _Tolerant().load(event.data)
    issue = _issue(session, data["issue_id"])
    actor = _snap(data, "assignee_name") or issue.assignee_name
    if _step(session, issue, event, data, "网格员已开始办理", actor=actor):
        issue.status = "in_progress"


def handle_issue_escalated(session: Session, event: Envelope) -> None:
    data = load_data(EscalatedData, event.data)
    issue = _issue(session, data["issue_id"])
    level = data["to_level"]
    title = f"已转交{LEVELS.get(level, level)}协调办理"
    department = data.get("county_department") or data.get("department_name")
    if department:
        title += f"（{department}）"
    handler = _staff_name(session, data.get("handler_id"))
    if _versioned(data) and level != "county":
        handler = _snap(data, "handler_name") or handler
    if _step(session, issue, event, data, title, data.get("reason"), actor=handler):
        issue.level = level
        if handler:
            issue.assignee_name = handler


def handle_issue_overdue(session: Session, event: Envelope) -> None:
    data = load_data(OverdueData, event.data)
    issue = _issue(session, data["issue_id"])
    # Overdue changes no state: it is a step the resident sees (督办), nothing more.
    note = f"原定 {local_text(data['due_at'])} 前办结" if data["due_at"] else None
    _step(session, issue, event, data, "办理超时，已督办", note, moves_state=False)


def handle_issue_resolved(session: Session, event: Envelope) -> None:
    data = load_data(ResolvedData, event.data)
    issue = _issue(session, data["issue_id"])
    photo_ids = [str(p) for p in data["photo_ids"]]
    if not _versioned(data):
        issue.resolution_count += 1  # a new resolution may be rated, whatever the order
    actor = _snap(data, "assignee_name") or issue.assignee_name
    if _step(session, issue, event, data, "已办结", data.get("note"), actor=actor):
        issue.status = "resolved"
        issue.resolution_note = data.get("note")
        issue.resolution_photo_ids = photo_ids
        issue.resolved_at = data.get("resolved_at") or event.occurred_at
        issue.rating = None
    if data["photo_ids"]:
        _attach_result_photos(session, issue, data, event)


def _attach_result_photos(
    session: Session, issue: Issue, data: dict[str, Any], event: Envelope
) -> None:
    """Attach the result photos the resolver uploaded, so the reporter sees them. Any other id
    (someone else's photo, one already in another report, an unknown one) is ignored and logged:
    dispatch cannot see whose a photo is, so the check is here (issue 7, access 8)."""
    resolver = data["resolver_id"] or data["assignee_id"]
    wanted = set(data["photo_ids"])
    taken: set[uuid.UUID] = set()
    photos = session.scalars(sa.select(Media).where(Media.id.in_(wanted)).with_for_update())
    for media in photos:
        free = media.issue_id is None or media.issue_id == issue.id
        if resolver is not None and media.uploader_id == resolver and free:
            media.issue_id = issue.id
            taken.add(media.id)
    refused = wanted - taken
    if refused:
        log.warning(
            "issue.resolved %s of issue %s: photos %s not attached (not uploaded by the "
            "resolver %s, attached elsewhere, or unknown)",
            event.id,
            issue.id,
            sorted(map(str, refused)),
            resolver,
        )


def handle_issue_reopened(session: Session, event: Envelope) -> None:
    data = load_data(ReopenedData, event.data)
    issue = _issue(session, data["issue_id"])
    title = REOPEN_REASONS.get(data["reason"], "重新办理")
    leader = _snap(data, "follower_name") or _staff_name(session, data.get("area_leader_id"))
    note = f"包片领导{leader}跟进，直至群众满意" if leader else None
    if _step(session, issue, event, data, title, note):
        issue.status = "reopened"
        if data.get("assignee_id"):
            issue.assignee_id = data["assignee_id"]
            issue.assignee_name = _staff_name(session, data["assignee_id"]) or issue.assignee_name
        if data.get("due_at"):
            issue.due_at = data["due_at"]


def handle_issue_closed(session: Session, event: Envelope) -> None:
    data = load_data(ClosedData, event.data)
    issue = _issue(session, data["issue_id"])
    rating = data.get("rating")
    note = f"群众评价：{RATINGS[rating]}" if rating in RATINGS else None
    if _step(session, issue, event, data, "事项已关闭", note):
        issue.status = "closed"
        issue.closed_at = data.get("closed_at") or event.occurred_at
        if rating:
            issue.rating = rating


def handle_issue_rejected(session: Session, event: Envelope) -> None:
    data = load_data(RejectedData, event.data)
    issue = _issue(session, data["issue_id"])
    title = "不予受理"
    if data["duplicate_of"] is not None:
        # A rejection happens once and nothing follows it: the link is kept whatever the order.
        issue.duplicate_of_id = data["duplicate_of"]
        issue.duplicate_of_ticket_no = data["duplicate_of_ticket_no"] or _ticket_no(
            session, data["duplicate_of"]
        )
        title = f"重复反映，已并入 {issue.duplicate_of_ticket_no or '原事项'} 办理"
    if _step(session, issue, event, data, title, data.get("reason")):
        issue.status = "rejected"
        issue.reject_reason = data.get("reason")


def _ticket_no(session: Session, issue_id: uuid.UUID) -> str | None:
    return session.scalar(sa.select(Issue.ticket_no).where(Issue.id == issue_id))


def handle_issue_callback_recorded(session: Session, event: Envelope) -> None:
    """督导组回访 (回头看): the resident sees the verdict, never the supervisor's notes."""
    data = load_data(CallbackData, event.data)
    issue = _issue(session, data["issue_id"])
    method = CALLBACK_METHODS.get(data.get("method") or "", "")
    verdict = "满意" if data.get("accepted") else "不满意"
    title = f"督导组{method}回访：{verdict}"
    note = None
    if data.get("passed") is True:
        note = "回访通过"
    elif data.get("passed") is False:
        note = "回访未通过，将重新办理"
    _step(session, issue, event, data, title, note, moves_state=False)


def handle_issue_withdrawal_declined(session: Session, event: Envelope) -> None:
    """dispatch had already taken the report on when the resident withdrew it: it goes on."""
    data = load_data(WithdrawalDeclinedData, event.data)
    issue = _issue(session, data["issue_id"])
    note = data.get("reason") or "事项已交办，将继续办理"
    # The snapshot it carries (newer than any held) brings back the state dispatch keeps.
    _step(session, issue, event, data, "撤回未成功", note, moves_state=False)


def handle_village_upserted(session: Session, event: Envelope) -> None:
    """Keep the village; a ``revision`` not newer than the one held is a stale snapshot."""
    data = load_data(VillageData, event.data)
    village = session.get(Village, data["village_id"], with_for_update=True)
    revision = data["revision"]
    if village is None:
        session.add(
            Village(
                id=data["village_id"],
                name=data["name"],
                area_leader_id=data["area_leader_id"],
                revision=revision,
            )
        )
        return
    if revision is not None and village.revision is not None and revision <= village.revision:
        return
    village.name = data["name"]
    village.area_leader_id = data["area_leader_id"]
    if revision is not None:
        village.revision = revision


class NewsPublishedData(Schema):
    """feed's ``news.published``: the photos the article shows and who put them there."""

    class Meta:
        unknown = EXCLUDE

    id = fields.UUID(required=True)
    author_id = fields.UUID(load_default=None, allow_none=True)
    published_by = fields.UUID(load_default=None, allow_none=True)
    cover_media_id = fields.UUID(load_default=None, allow_none=True)
    media_ids = fields.List(fields.UUID(), load_default=list)
    editor_ids = fields.List(fields.UUID(), load_default=list)


class PostPublishedData(Schema):
    """feed's ``post.published``: the post's photos and its author."""

    class Meta:
        unknown = EXCLUDE

    id = fields.UUID(required=True)
    author_id = fields.UUID(load_default=None, allow_none=True)
    photo_ids = fields.List(fields.UUID(), load_default=list)


def _make_public(
    session: Session, media_ids: list[uuid.UUID], uploaders: set[uuid.UUID], what: str
) -> None:
    """Show these photos to anyone: only those uploaded by one of ``uploaders`` (the people who
    published them) and attached to no report, so a post can never publish a resident's report
    photo; any other id is ignored and logged."""
    if not media_ids:
        return
    found = session.scalars(sa.select(Media).where(Media.id.in_(media_ids)).with_for_update())
    for media in found:
        if media.issue_id is None and media.uploader_id in uploaders:
            media.public = True
        else:
            log.warning("%s names photo %s it may not publish; left private", what, media.id)


def handle_news_published(session: Session, event: Envelope) -> None:
    """The photos of published news become public (its cover and the body's images)."""
    data = load_data(NewsPublishedData, event.data)
    ids = list(data["media_ids"]) + ([data["cover_media_id"]] if data["cover_media_id"] else [])
    people = {data["author_id"], data["published_by"], *data["editor_ids"]} - {None}
    _make_public(session, ids, people, f"news {data['id']}")


def handle_post_published(session: Session, event: Envelope) -> None:
    """The photos of a party post become public."""
    data = load_data(PostPublishedData, event.data)
    people = {data["author_id"]} - {None}
    _make_public(session, list(data["photo_ids"]), people, f"post {data['id']}")


SUBSCRIPTIONS = {
    "issue.assigned": handle_issue_assigned,
    "issue.started": handle_issue_started,
    "issue.escalated": handle_issue_escalated,
    "issue.overdue": handle_issue_overdue,
    "issue.resolved": handle_issue_resolved,
    "issue.reopened": handle_issue_reopened,
    "issue.closed": handle_issue_closed,
    "issue.rejected": handle_issue_rejected,
    "issue.callback_recorded": handle_issue_callback_recorded,
    "issue.withdrawal_declined": handle_issue_withdrawal_declined,
    "village.upserted": handle_village_upserted,
    "news.published": handle_news_published,
    "post.published": handle_post_published,
}
