"""What notify consumes and whom each event tells.

One ``handle_<event>`` per event type and the one table ``SUBSCRIPTIONS`` the worker binds. Each
handler declares only the fields it reads (tolerant reader), keeps what later messages need
(people, villages, who holds each item) and calls ``services.tell`` with the recipients, the
template variables and what the message links to (``tell_many`` for a run of reports). The
consumer runs it in the transaction that records the event id, and ``tell`` writes each (event,
person) once: a redelivery tells nobody twice.

Notify publishes no events.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from marshmallow import EXCLUDE, Schema, fields
from sqlalchemy.orm import Session

from notify import services
from notify.services import Link, Notice
from notify.settings import NotifySettings
from notify.templates import level_label, period_label, rating_label
from shared.consumer import batched
from shared.events import Envelope, load_data
from shared.settings import SettingsHolder

# Who hears of a new report in its village, besides the township admins.
VILLAGE_STAFF = ("grid_worker", "grid_leader")

REOPEN_REASONS = {
    "unsatisfied": "群众评价不满意",
    "callback_failed": "回访未通过",
    "admin": "管理员要求重新办理",
}


class _Tolerant(Schema):
    class Meta:
        unknown = EXCLUDE


def _id(**kwargs) -> fields.UUID:
    return fields.UUID(load_default=None, allow_none=True, **kwargs)


def _text() -> fields.String:
    return fields.String(load_default=None, allow_none=True)


class SnapshotData(_Tolerant):
    state = _text()
    level = _text()
    assignee_id = _id()
    holder_ids = fields.List(fields.UUID(), load_default=list, allow_none=True)
    due_at = fields.AwareDateTime(load_default=None, allow_none=True)


class IssueStep(_Tolerant):
    """What every dispatch ``issue.*`` event may carry."""

    issue_id = fields.UUID(required=True)
    issue_version = fields.Integer(load_default=None, allow_none=True)
    snapshot = fields.Nested(SnapshotData, load_default=None, allow_none=True)
    assignee_id = _id()
    grid_leader_id = _id()
    village_id = _id()
    reporter_id = _id()
    area_leader_id = _id()
    handler_id = _id()
    difficulty = fields.Integer(load_default=None, allow_none=True)
    due_at = fields.AwareDateTime(load_default=None, allow_none=True)
    reason = _text()
    to_level = _text()
    rating = _text()
    duplicate_of = _id()
    duplicate_of_ticket_no = _text()


class ReportedData(_Tolerant):
    issue_id = fields.UUID(required=True)
    ticket_no = _text()
    category = _text()
    village_id = _id()
    reporter_id = _id()


class UrgedData(_Tolerant):
    issue_id = fields.UUID(required=True)
    urge_count = fields.Integer(load_default=None, allow_none=True)


class AccountData(_Tolerant):
    user_id = fields.UUID(required=True)
    name = fields.String(load_default="", allow_none=True)
    roles = fields.List(fields.String(), load_default=list)
    village_id = _id()
    phone = _text()
    openid = _text()
    active = fields.Boolean(load_default=True)
    revision = fields.Integer(load_default=None, allow_none=True)
    tokens_valid_after = fields.AwareDateTime(load_default=None, allow_none=True)


class VillageData(_Tolerant):
    village_id = fields.UUID(required=True)
    name = fields.String(load_default="", allow_none=True)
    area_leader_id = _id()
    revision = fields.Integer(load_default=0, allow_none=True)


class PointsData(_Tolerant):
    user_id = fields.UUID(required=True)
    points = fields.Integer(required=True)
    reason = _text()
    issue_id = _id()
    ticket_no = _text()
    period = _text()


class BoardData(_Tolerant):
    period = fields.String(required=True)


class CallbacksData(_Tolerant):
    date = _text()
    count = fields.Integer(required=True)
    oldest_closed_at = fields.AwareDateTime(load_default=None, allow_none=True)


class NewsData(_Tolerant):
    id = fields.UUID(required=True)
    title = _text()


_settings = SettingsHolder(NotifySettings)
# The service's settings (the app's inside a request, else the worker's or the environment's).
settings, use_settings = _settings.get, _settings.use


def _step(session: Session, event: Envelope):
    data = load_data(IssueStep, event.data)
    return data, services.apply_step(session, data)


def _tell_issue(session, event, kind, recipients, issue, **extra) -> None:
    variables = services.issue_variables(session, issue, **extra)
    services.tell(session, settings(), event, kind, recipients, variables, Link("issue", issue.id))


@batched
def handle_issue_reported(session: Session, events: list[Envelope]) -> None:
    """A new report: the township admins, and the grid workers and leaders of its village.

    A run of reports is remembered and told together (``shared.consumer.batched``): a few
    statements for the run instead of a few per report."""
    reports = [(event, load_data(ReportedData, event.data)) for event in events]
    notices = []
    for part in _each_issue_once(reports):
        remembered = services.remember_reports(session, [data for _, data in part])
        issues = [remembered[data["issue_id"]] for _, data in part]
        staff = services.with_role_by_village(
            session,
            "admin",
            village_ids=[issue.village_id for issue in issues],
            or_in_village=VILLAGE_STAFF,
        )
        variables = services.issue_variables_many(session, issues)
        notices += [
            Notice(event, "reported", staff[issue.village_id], values, Link("issue", issue.id))
            for (event, _), issue, values in zip(part, issues, variables, strict=True)
        ]
    services.tell_many(session, settings(), notices)


def _each_issue_once(
    reports: list[tuple[Envelope, dict[str, Any]]],
) -> Iterator[list[tuple[Envelope, dict[str, Any]]]]:
    """The run cut where an issue comes again (rare): each part is remembered in one statement,
    and a report's message says what the reports before it left, as one after the other would."""
    part: list[tuple[Envelope, dict[str, Any]]] = []
    seen: set[uuid.UUID] = set()
    for event, data in reports:
        if data["issue_id"] in seen:
            yield part
            part, seen = [], set()
        part.append((event, data))
        seen.add(data["issue_id"])
    if part:
        yield part


def handle_issue_assigned(session: Session, event: Envelope) -> None:
    """The assignee (or the department's staff holding it) and the grid leader."""
    data, issue = _step(session, event)
    holders = data["snapshot"]["holder_ids"] if data.get("snapshot") else []
    recipients = [data["assignee_id"], *(holders or []), data["grid_leader_id"]]
    _tell_issue(
        session,
        event,
        "assigned",
        recipients,
        issue,
        difficulty=data["difficulty"],
        due_at=data["due_at"] or issue.due_at,
    )


def _deadline(kind: str):
    def handle(session: Session, event: Envelope) -> None:
        data, issue = _step(session, event)
        holders = data["snapshot"]["holder_ids"] if data.get("snapshot") else []
        recipients = [data["assignee_id"], *(holders or []), data["grid_leader_id"]]
        recipients.append(issue.grid_leader_id)
        _tell_issue(session, event, kind, recipients, issue, due_at=data["due_at"] or issue.due_at)

    handle.__name__ = f"handle_{kind}"
    handle.__doc__ = "The assignee (or whoever holds it now) and the grid leader."
    return handle


handle_issue_reminder_due = _deadline("reminder")
handle_issue_overdue = _deadline("overdue")


def handle_issue_escalated(session: Session, event: Envelope) -> None:
    """The new holder: a department's staff, the area leader, else the township admins.

    Into the township's queue (no named handler) it is the admins' to take up, though dispatch
    still lists the grid worker who works on it among its holders: telling that worker "升级到
    您这里" would send the news to the one person it did not climb to."""
    data, issue = _step(session, event)
    holders = (data["snapshot"]["holder_ids"] if data.get("snapshot") else None) or []
    if data["to_level"] == "township" and not data["handler_id"]:
        holders = []
    if not holders and data["handler_id"]:
        holders = [data["handler_id"]]
    if not holders:
        holders = services.with_role(session, "admin")
    _tell_issue(
        session,
        event,
        "escalated",
        holders,
        issue,
        level=level_label(data["to_level"]),
        reason=data["reason"],
        due_at=data["due_at"] or issue.due_at,
    )


def handle_issue_resolved(session: Session, event: Envelope) -> None:
    """The reporter: it is done, please rate it."""
    data, issue = _step(session, event)
    _tell_issue(session, event, "resolved", [data["reporter_id"] or issue.reporter_id], issue)


def handle_issue_rejected(session: Session, event: Envelope) -> None:
    """The reporter, with the reason, and the original to follow when it is a duplicate."""
    data, issue = _step(session, event)
    note = None
    link = Link("issue", issue.id)
    if data["duplicate_of"]:
        original = data["duplicate_of_ticket_no"] or "原事项"
        note = f"该事项与编号 {original} 的事项重复，请关注原事项的办理进展。"
        link = Link("issue", data["duplicate_of"])
    variables = services.issue_variables(session, issue, reason=data["reason"], duplicate_note=note)
    services.tell(
        session,
        settings(),
        event,
        "rejected",
        [data["reporter_id"] or issue.reporter_id],
        variables,
        link,
    )


def handle_issue_closed(session: Session, event: Envelope) -> None:
    """The reporter: closed (with the rating they gave, if any)."""
    data, issue = _step(session, event)
    label = rating_label(data["rating"])
    note = f"您的评价：{label}。" if label else None
    _tell_issue(
        session,
        event,
        "closed",
        [data["reporter_id"] or issue.reporter_id],
        issue,
        rating=label,
        rating_note=note,
    )


def handle_issue_reopened(session: Session, event: Envelope) -> None:
    """The assignee and the area leader who follows the item from now on."""
    data, issue = _step(session, event)
    _tell_issue(
        session,
        event,
        "reopened",
        [data["assignee_id"], data["area_leader_id"]],
        issue,
        reason=REOPEN_REASONS.get(data["reason"] or "", data["reason"]),
        due_at=data["due_at"] or issue.due_at,
    )


def handle_issue_step(session: Session, event: Envelope) -> None:
    """Steps nobody is told of (started, callback recorded): only who holds the item now."""
    _step(session, event)


def handle_issue_urged(session: Session, event: Envelope) -> None:
    """A resident's urge (催办): whoever holds the item now and the grid leader."""
    data = load_data(UrgedData, event.data)
    issue = services.apply_step(session, {"issue_id": data["issue_id"]})
    recipients = [*services.holders(session, issue), issue.grid_leader_id]
    _tell_issue(session, event, "urged", recipients, issue, count=data["urge_count"])


def handle_points_awarded(session: Session, event: Envelope) -> None:
    """The worker whose points changed."""
    data = load_data(PointsData, event.data)
    points = data["points"]
    change = f"增加 {points} 分" if points > 0 else f"减少 {-points} 分" if points < 0 else "不变"
    variables = {
        "points": points,
        "points_change": change,
        "reason": data["reason"],
        "period": period_label(data["period"]),
        "ticket_no": data["ticket_no"],
    }
    services.tell(
        session,
        settings(),
        event,
        "points",
        [data["user_id"]],
        variables,
        Link("board", data["period"]),
    )


def handle_leaderboard_published(session: Session, event: Envelope) -> None:
    """Every grid worker and grid leader: the month's 红黑榜 is out."""
    data = load_data(BoardData, event.data)
    services.tell(
        session,
        settings(),
        event,
        "leaderboard",
        services.with_role(session, *services.BOARD_ROLES),
        {"period": period_label(data["period"])},
        Link("board", data["period"]),
    )


def handle_callbacks_pending(session: Session, event: Envelope) -> None:
    """The supervisors, once a day: how many closed items wait for a callback (回头看)."""
    data = load_data(CallbacksData, event.data)
    if data["count"] <= 0:
        return
    services.tell(
        session,
        settings(),
        event,
        "callbacks",
        services.with_role(session, "supervisor"),
        {"count": data["count"], "due_at": data["oldest_closed_at"]},
        Link("callbacks", data["date"]),
    )


def handle_news_published(session: Session, event: Envelope) -> None:
    """Residents who follow the township's news."""
    data = load_data(NewsData, event.data)
    services.tell(
        session,
        settings(),
        event,
        "news",
        services.news_followers(session),
        {"title": data["title"]},
        Link("news", data["id"]),
    )


def handle_account_upserted(session: Session, event: Envelope) -> None:
    """Names, roles, village, phone and openid (newer revisions only)."""
    services.upsert_person(session, load_data(AccountData, event.data))


def handle_village_upserted(session: Session, event: Envelope) -> None:
    """Village names (shown in messages) and area leaders (newer revisions only)."""
    services.upsert_village(session, load_data(VillageData, event.data))


SUBSCRIPTIONS = {
    "issue.reported": handle_issue_reported,
    "issue.assigned": handle_issue_assigned,
    "issue.reminder_due": handle_issue_reminder_due,
    "issue.overdue": handle_issue_overdue,
    "issue.escalated": handle_issue_escalated,
    "issue.started": handle_issue_step,
    "issue.resolved": handle_issue_resolved,
    "issue.rejected": handle_issue_rejected,
    "issue.closed": handle_issue_closed,
    "issue.reopened": handle_issue_reopened,
    "issue.callback_recorded": handle_issue_step,
    "issue.urged": handle_issue_urged,
    "points.awarded": handle_points_awarded,
    "leaderboard.published": handle_leaderboard_published,
    "callbacks.pending": handle_callbacks_pending,
    "news.published": handle_news_published,
    "account.upserted": handle_account_upserted,
    "village.upserted": handle_village_upserted,
}
