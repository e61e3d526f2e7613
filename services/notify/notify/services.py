"""Notify's use cases: keep people, villages and issues from events; turn each event into inbox
rows for the right people and pending deliveries on the channels they take; the inbox, the
preferences and the deliveries that the routes read and change.

An inbox row is written once per (event, person) and a delivery once per (event, person,
channel): both inserts skip what is already there, so a redelivered event adds nothing.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from notify import deliveries, templates
from notify.metrics import NOTIFICATIONS_SENT
from notify.models import Delivery, Issue, Notification, Person, PersonRole, Preference, Village
from notify.settings import NotifySettings
from shared.clock import utcnow
from shared.db import Database, Upsert
from shared.errors import Invalid, NotFound
from shared.events import Envelope
from shared.pagination import keyset_page

log = logging.getLogger("notify.services")

# Who hears of what by SMS unless they say otherwise: staff, for work that is theirs now.
SMS_BY_DEFAULT = frozenset({"assigned", "reminder", "overdue", "escalated", "reopened", "urged"})
BOARD_ROLES = ("grid_worker", "grid_leader")
HOURS = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _insert(session: Session, table: Any):
    """INSERT with ON CONFLICT for the session's dialect (PostgreSQL, or SQLite embedded)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


# What the handlers look up for every event (who has a role, people with their preferences,
# villages) is kept for the rest of the session: the consumer applies a batch of events in one,
# and the upserts below forget it when they change what it holds.
_WITH_ROLE, _PEOPLE, _VILLAGES = "notify.with_role", "notify.people", "notify.villages"


def _kept(session: Session, name: str) -> dict[Any, Any]:
    return session.info.setdefault(name, {})


def _forget(session: Session, *names: str) -> None:
    for name in names:
        session.info.pop(name, None)


# --- people, villages, issues ------------------------------------------------------------------


def upsert_person(session: Session, data: dict[str, Any]) -> Person | None:
    """Keep name, roles, village, phone and openid (``account.upserted``); an older or equal
    ``revision`` than the one held is ignored (retries reorder events). Roles are indexed in
    ``person_roles`` for the active only, so a disabled account is told nothing more."""
    person = session.get(Person, data["user_id"], with_for_update=True)
    revision = data.get("revision")
    if person is None:
        person = Person(id=data["user_id"])
        session.add(person)
    elif person.revision is not None and revision is not None and revision <= person.revision:
        return None
    person.name = data.get("name") or ""
    person.roles = sorted(set(data.get("roles") or []))
    person.village_id = data.get("village_id")
    person.phone = data.get("phone") or None
    person.openid = data.get("openid") or None
    person.active = bool(data.get("active", True))
    person.revision = revision if revision is not None else (person.revision or 0)
    person.tokens_valid_after = data.get("tokens_valid_after")
    _forget(session, _WITH_ROLE, _PEOPLE)
    session.flush()
    session.execute(sa.delete(PersonRole).where(PersonRole.user_id == person.id))
    if person.active and person.roles:
        session.add_all(PersonRole(role=role, user_id=person.id) for role in person.roles)
    return person


def upsert_village(session: Session, data: dict[str, Any]) -> None:
    _forget(session, _VILLAGES)
    village = session.get(Village, data["village_id"], with_for_update=True)
    revision = data.get("revision") or 0
    if village is None:
        village = Village(id=data["village_id"], revision=-1)
        session.add(village)
    if revision < village.revision or (revision == village.revision and village.name):
        return
    village.name = data.get("name") or village.name or ""
    village.area_leader_id = data.get("area_leader_id")
    village.revision = revision


_REPORTED = ("ticket_no", "category", "village_id", "reporter_id")


def remember_report(session: Session, data: dict[str, Any]) -> Issue:
    """What only ``issue.reported`` says: ticket, category, village, reporter (each kept when
    the event leaves it empty).

    One upsert that locks the row and returns it, instead of a read, an insert and a read."""
    return session.scalars(
        sa.select(Issue).from_statement(_REMEMBER_REPORT.statement()),
        {
            "id": data["issue_id"],
            "version": 0,
            "holder_ids": [],
            **{name: data.get(name) or None for name in _REPORTED},
        },
        execution_options={"populate_existing": True},
    ).one()


# The same statement for every event (shared.db.Upsert says why it is not an ORM insert).
_REMEMBER_REPORT = Upsert(
    Issue.__table__,
    conflict=("id",),
    columns=("id", *_REPORTED, "version", "holder_ids"),
    coalesce=_REPORTED,
    returning=tuple(column.name for column in Issue.__table__.columns),
)


def apply_step(session: Session, data: dict[str, Any]) -> Issue:
    """Take the snapshot of a dispatch ``issue.*`` event when it is newer than the one held (who
    holds the item now: urges go to them); fields only some events carry fill gaps."""
    issue = _issue(session, data["issue_id"])
    for name in ("village_id", "reporter_id", "grid_leader_id"):
        if data.get(name) and getattr(issue, name) is None:
            setattr(issue, name, data[name])
    version = data.get("issue_version")
    snapshot = data.get("snapshot") or {}
    if version is not None and version > issue.version:
        issue.version = version
        issue.state = snapshot.get("state")
        issue.level = snapshot.get("level")
        issue.assignee_id = snapshot.get("assignee_id")
        issue.holder_ids = [str(i) for i in snapshot.get("holder_ids") or []]
        issue.due_at = snapshot.get("due_at")
        if data.get("grid_leader_id"):
            issue.grid_leader_id = data["grid_leader_id"]
    return issue


def _issue(session: Session, issue_id: uuid.UUID) -> Issue:
    issue = session.get(Issue, issue_id, with_for_update=True)
    if issue is None:
        session.execute(_insert(session, Issue).values(id=issue_id).on_conflict_do_nothing())
        issue = session.get(Issue, issue_id, with_for_update=True)
        assert issue is not None
    return issue


# --- who is told --------------------------------------------------------------------------------


def with_role(
    session: Session,
    *roles: str,
    village_id: uuid.UUID | None = None,
    or_in_village: tuple[str, ...] = (),
) -> list[uuid.UUID]:
    """Active people holding any of ``roles`` (of one village when ``village_id`` is given),
    plus, with ``or_in_village``, those holding one of those roles in ``village_id``: one query,
    once per session (a batch of events) for the same question.
    """
    kept = _kept(session, _WITH_ROLE)
    key = (roles, village_id, or_in_village)
    if key not in kept:
        kept[key] = _with_role(session, roles, village_id, or_in_village)
    return list(kept[key])


def _with_role(
    session: Session,
    roles: tuple[str, ...],
    village_id: uuid.UUID | None,
    or_in_village: tuple[str, ...],
) -> list[uuid.UUID]:
    stmt = sa.select(PersonRole.user_id).distinct()
    if or_in_village and village_id is not None:
        stmt = stmt.join(Person, Person.id == PersonRole.user_id).where(
            sa.or_(
                PersonRole.role.in_(roles),
                sa.and_(PersonRole.role.in_(or_in_village), Person.village_id == village_id),
            )
        )
    elif village_id is not None:
        stmt = stmt.join(Person, Person.id == PersonRole.user_id).where(
            PersonRole.role.in_(roles), Person.village_id == village_id
        )
    else:
        stmt = stmt.where(PersonRole.role.in_(roles))
    return list(session.scalars(stmt))


def news_followers(session: Session) -> list[uuid.UUID]:
    """Residents who follow the township's news (their preference)."""
    stmt = (
        sa.select(Preference.user_id)
        .join(PersonRole, PersonRole.user_id == Preference.user_id)
        .where(Preference.follow_news.is_(True), PersonRole.role == "resident")
    )
    return list(session.scalars(stmt))


def holders(session: Session, issue: Issue) -> list[uuid.UUID]:
    """Who holds the item now (dispatch's snapshot), else the township admins' queue."""
    ids = [uuid.UUID(str(i)) for i in issue.holder_ids or []]
    if not ids and issue.assignee_id and issue.state in ("assigned", "in_progress", "reopened"):
        ids = [issue.assignee_id]
    return ids or with_role(session, "admin")


# --- messages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    type: str | None
    id: Any = None


def issue_variables(session: Session, issue: Issue, **extra: Any) -> dict[str, Any]:
    """The template variables of an item (missing ones render as a neutral word)."""
    village = _village(session, issue.village_id) if issue.village_id else None
    values: dict[str, Any] = {
        "ticket_no": issue.ticket_no,
        "category": templates.category_label(issue.category),
        "village": village.name if village and village.name else None,
        "due_at": issue.due_at,
    }
    values.update({k: v for k, v in extra.items() if v is not None})
    return values


def _village(session: Session, village_id: uuid.UUID) -> Village | None:
    """The village, read once per session (a village not known yet too)."""
    kept = _kept(session, _VILLAGES)
    if village_id not in kept:
        kept[village_id] = session.get(Village, village_id)
    return kept[village_id]


def _people(
    session: Session, ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[Person, Preference | None]]:
    """Those of ``ids`` notify knows, with their preferences; each read once per session."""
    kept = _kept(session, _PEOPLE)
    missing = [i for i in ids if i not in kept]
    if missing:
        kept.update(dict.fromkeys(missing))
        known = session.execute(
            sa.select(Person, Preference)
            .outerjoin(Preference, Preference.user_id == Person.id)
            .where(Person.id.in_(missing))
        ).all()
        kept.update({person.id: (person, preference) for person, preference in known})
    return {i: kept[i] for i in ids if kept[i] is not None}


def tell(
    session: Session,
    settings: NotifySettings,
    event: Envelope,
    kind: str,
    recipients: Iterable[uuid.UUID | None],
    variables: dict[str, Any],
    link: Link,
) -> int:
    """One inbox row per recipient (once per event) and a pending delivery on every other
    channel the recipient takes for this kind. Returns how many inbox rows were new.

    Three statements whatever the number of recipients: who they are (with their preferences),
    the inbox rows (``ON CONFLICT DO NOTHING RETURNING``: a person this event told already is
    skipped) and their deliveries."""
    wanted = list(dict.fromkeys(r for r in recipients if r is not None))
    if not wanted:
        return 0
    rendered = templates.render(kind, variables)
    stored = _jsonable(variables)
    now = utcnow()
    people = _people(session, wanted)
    wanted = [u for u in wanted if u not in people or people[u][0].active]
    if not wanted:
        return 0
    made = _INBOX.execute(
        session,
        [
            {
                "id": uuid.uuid4(),
                "user_id": user_id,
                "event_id": event.id,
                "event_type": event.type,
                "kind": kind,
                "title": rendered.title,
                "body": rendered.body,
                "link_type": link.type,
                "link_id": str(link.id) if link.id is not None else None,
                "variables": stored,
                "created_at": now,
                "read_at": None,
            }
            for user_id in wanted
        ],
    ).all()
    if not made:
        return 0  # this event told everyone already
    NOTIFICATIONS_SENT.labels(service="notify", channel="inbox", outcome="sent").inc(len(made))
    urgent = templates.TEMPLATES[kind].urgent
    rows = []
    for notification_id, user_id in made:
        person, preference = people.get(user_id, (None, None))
        for channel, address in _channels_for(settings, kind, person, preference):
            if channel == "wechat" and not templates.wechat_ready(kind, variables):
                continue
            held = deliveries.quiet_until(channel, urgent, preference, settings, now)
            rows.append(
                {
                    "id": uuid.uuid4(),
                    "notification_id": notification_id,
                    "event_id": event.id,
                    "user_id": user_id,
                    "channel": channel,
                    "kind": kind,
                    "address": address,
                    "status": "pending",
                    "urgent": urgent,
                    "attempts": 0,
                    "next_attempt_at": held or now,
                    "created_at": now,
                    "updated_at": now,
                }
            )
    if rows:
        _DELIVERIES.execute(session, rows)
    return len(made)


# Cached ON CONFLICT statements (shared.db.Upsert says why): a person an event told already is
# skipped, and so is a delivery made already.
_INBOX = Upsert(
    Notification.__table__,
    conflict=("event_id", "user_id"),
    columns=(
        "id",
        "user_id",
        "event_id",
        "event_type",
        "kind",
        "title",
        "body",
        "link_type",
        "link_id",
        "variables",
        "created_at",
        "read_at",
    ),
    returning=("id", "user_id"),
)
_DELIVERIES = Upsert(
    Delivery.__table__,
    conflict=("event_id", "user_id", "channel"),
    columns=(
        "id",
        "notification_id",
        "event_id",
        "user_id",
        "channel",
        "kind",
        "address",
        "status",
        "urgent",
        "attempts",
        "next_attempt_at",
        "created_at",
        "updated_at",
    ),
)


def _channels_for(
    settings: NotifySettings, kind: str, person: Person | None, preference: Preference | None
) -> list[tuple[str, str]]:
    """(channel, address) pairs beyond the inbox that this person takes for this kind."""
    out: list[tuple[str, str]] = []
    roles = set(person.roles or []) if person else set()
    if (
        person is not None
        and settings.wechat_notify_enabled
        and person.openid
        and kind in settings.wechat_templates
        and "resident" in roles
        and channel_on(preference, kind, "wechat", roles)
    ):
        out.append(("wechat", person.openid))
    if (
        person is not None
        and settings.sms_enabled
        and person.phone
        and channel_on(preference, kind, "sms", roles)
    ):
        out.append(("sms", person.phone))
    if settings.webhook_url and (not settings.webhook_kinds or kind in settings.webhook_kinds):
        out.append(("webhook", settings.webhook_url))
    return out


def channel_default(kind: str, channel: str, roles: set[str]) -> bool:
    """What a person gets before they choose: WeChat for residents' own reports, SMS for staff
    when work becomes theirs, the inbox always."""
    if channel == "inbox":
        return True
    if channel == "wechat":
        return "resident" in roles
    if channel == "sms":
        return bool(roles - {"resident", "party_member"}) and kind in SMS_BY_DEFAULT
    return False


def channel_on(preference: Preference | None, kind: str, channel: str, roles: set[str]) -> bool:
    chosen = (preference.channels or {}).get(kind, {}) if preference else {}
    if channel in chosen:
        return bool(chosen[channel])
    return channel_default(kind, channel, roles)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
        elif isinstance(value, uuid.UUID):
            out[key] = str(value)
        else:
            out[key] = value
    return out


# --- the inbox ----------------------------------------------------------------------------------


def inbox(
    session: Session, user_id: uuid.UUID, *, unread: bool | None, cursor: str | None, limit: int
) -> tuple[list[Notification], str | None]:
    """The user's messages, newest first (keyset pagination)."""
    stmt = sa.select(Notification).where(Notification.user_id == user_id)
    if unread is True:
        stmt = stmt.where(Notification.read_at.is_(None))
    elif unread is False:
        stmt = stmt.where(Notification.read_at.is_not(None))
    return keyset_page(
        session,
        stmt,
        order=[Notification.created_at.desc(), Notification.id.desc()],
        key=lambda n: [n.created_at, n.id],
        cursor=cursor,
        limit=limit,
    )


def unread_count(session: Session, user_id: uuid.UUID) -> int:
    return session.scalar(
        sa.select(sa.func.count())
        .select_from(Notification)
        .where(Notification.user_id == user_id, Notification.read_at.is_(None))
    )


def mark_read(session: Session, user_id: uuid.UUID, notification_id: uuid.UUID) -> Notification:
    """Mark one of the user's own messages read (someone else's is "not found")."""
    notification = session.get(Notification, notification_id)
    if notification is None or notification.user_id != user_id:
        raise NotFound("没有找到这条消息。", code="notification_not_found")
    if notification.read_at is None:
        notification.read_at = utcnow()
    return notification


def mark_all_read(session: Session, user_id: uuid.UUID) -> int:
    result = session.execute(
        sa.update(Notification)
        .where(Notification.user_id == user_id, Notification.read_at.is_(None))
        .values(read_at=utcnow())
    )
    return result.rowcount or 0


# --- preferences --------------------------------------------------------------------------------


def preferences(session: Session, user_id: uuid.UUID, roles: Iterable[str]) -> dict[str, Any]:
    """Every kind with its channels as they apply to this user (chosen, else the default)."""
    preference = session.get(Preference, user_id)
    roles = set(roles)
    kinds = [
        {
            "kind": kind,
            "label": template.label,
            **{c: channel_on(preference, kind, c, roles) for c in ("inbox", "wechat", "sms")},
        }
        for kind, template in templates.TEMPLATES.items()
    ]
    quiet = None
    if preference and preference.quiet_start and preference.quiet_end:
        quiet = {"start": preference.quiet_start, "end": preference.quiet_end}
    return {
        "kinds": kinds,
        "quiet_hours": quiet,
        "follow_news": bool(preference and preference.follow_news),
    }


def change_preferences(
    session: Session, user_id: uuid.UUID, roles: Iterable[str], body: dict[str, Any]
) -> dict[str, Any]:
    """Apply what the user sent (only the parts present); the inbox cannot be switched off."""
    _forget(session, _PEOPLE)
    preference = session.get(Preference, user_id, with_for_update=True)
    if preference is None:
        preference = Preference(user_id=user_id, channels={})
        session.add(preference)
    if "kinds" in body:
        channels = {k: dict(v) for k, v in (preference.channels or {}).items()}
        for item in body["kinds"]:
            if item.get("inbox") is False:
                raise Invalid(
                    "站内消息不能关闭，可以关闭微信或短信提醒。",
                    code="inbox_always_on",
                    details={"kind": item["kind"]},
                )
            chosen = channels.setdefault(item["kind"], {})
            for channel in ("wechat", "sms"):
                if item.get(channel) is not None:
                    chosen[channel] = bool(item[channel])
        preference.channels = channels
    if "quiet_hours" in body:
        quiet = body["quiet_hours"]
        if quiet is None:
            preference.quiet_start = preference.quiet_end = None
        else:
            if quiet["start"] == quiet["end"]:
                raise Invalid("免打扰的开始和结束时间不能相同。", code="quiet_hours_empty")
            preference.quiet_start, preference.quiet_end = quiet["start"], quiet["end"]
    if "follow_news" in body:
        preference.follow_news = bool(body["follow_news"])
    preference.updated_at = utcnow()
    session.flush()
    return preferences(session, user_id, roles)


# --- deliveries ---------------------------------------------------------------------------------


def list_deliveries(
    session: Session,
    *,
    channel: str | None,
    status: str | None,
    user_id: uuid.UUID | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[Delivery], str | None]:
    stmt = sa.select(Delivery)
    if channel:
        stmt = stmt.where(Delivery.channel == channel)
    if status:
        stmt = stmt.where(Delivery.status == status)
    if user_id:
        stmt = stmt.where(Delivery.user_id == user_id)
    return keyset_page(
        session,
        stmt,
        order=[Delivery.created_at.desc(), Delivery.id.desc()],
        key=lambda d: [d.created_at, d.id],
        cursor=cursor,
        limit=limit,
    )


def pending_by_channel(db: Database) -> list[tuple[tuple[str], int]]:
    """``deliveries_pending{channel}`` at scrape time (held ones included)."""
    with db.transaction() as session:
        rows = session.execute(
            sa.select(Delivery.channel, sa.func.count())
            .where(Delivery.status == "pending")
            .group_by(Delivery.channel)
        ).all()
    counts = dict.fromkeys(("wechat", "sms", "webhook"), 0)
    counts.update({channel: n for channel, n in rows})
    return [((channel,), n) for channel, n in counts.items()]


def oldest_pending_seconds(db: Database) -> float:
    """How long the oldest delivery that is due now has waited (held ones are not late)."""
    now = utcnow()
    with db.transaction() as session:
        oldest = session.scalar(
            sa.select(sa.func.min(Delivery.created_at)).where(
                Delivery.status == "pending", Delivery.next_attempt_at <= now
            )
        )
    return max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
