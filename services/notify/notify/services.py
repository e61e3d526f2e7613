"""Notify's use cases: keep people, villages and issues from events; turn each event into inbox
rows for the right people and pending deliveries on the channels they take; the inbox, the
preferences and the deliveries that the routes read and change.

An inbox row is written once per (event, person) and a delivery once per (event, person,
channel): both inserts skip what is already there, so a redelivered event adds nothing.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from notify import deliveries, templates
from notify.metrics import NOTIFICATIONS_SENT
from notify.models import Delivery, Issue, Notification, Person, PersonRole, Preference, Village
from notify.settings import NotifySettings
from shared.clock import utcnow
from shared.db import Database, Upsert, among
from shared.errors import Invalid, NotFound
from shared.events import Envelope
from shared.pagination import KeysetQuery, keyset_page

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
    """What only ``issue.reported`` says (``remember_reports`` for one report)."""
    return remember_reports(session, [data])[data["issue_id"]]


def remember_reports(session: Session, datas: Sequence[dict[str, Any]]) -> dict[uuid.UUID, Issue]:
    """What only ``issue.reported`` says: ticket, category, village, reporter (each kept when
    the event leaves it empty). Returns the issues by id.

    One upsert for the whole run that locks the rows and returns them, instead of a read, an
    insert and a read per report. An issue given twice is left as the reports one after the
    other would leave it (a later value wins, an empty one keeps the earlier)."""
    rows: dict[uuid.UUID, dict[str, Any]] = {}
    for data in datas:
        row = rows.setdefault(
            data["issue_id"],
            {"id": data["issue_id"], "version": 0, "holder_ids": [], **dict.fromkeys(_REPORTED)},
        )
        row.update({name: data[name] for name in _REPORTED if data.get(name)})
    issues: dict[uuid.UUID, Issue] = {}
    statement, params = _REMEMBER_REPORT.prepared(session, list(rows.values()))
    found = session.scalars(
        sa.select(Issue).from_statement(statement),
        params,
        execution_options={"populate_existing": True},
    )
    issues.update((issue.id, issue) for issue in found)
    return issues


# The same statement for every run (shared.db.Upsert says why it is not an ORM insert).
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
    return with_role_by_village(
        session, *roles, village_ids=[village_id], or_in_village=or_in_village
    )[village_id]


def with_role_by_village(
    session: Session,
    *roles: str,
    village_ids: Iterable[uuid.UUID | None],
    or_in_village: tuple[str, ...] = (),
) -> dict[uuid.UUID | None, list[uuid.UUID]]:
    """``with_role`` for several villages at once (a run of reports from ten villages): one
    query for the villages not asked about yet this session, instead of one per village."""
    kept = _kept(session, _WITH_ROLE)
    villages = list(dict.fromkeys(village_ids))
    missing = [v for v in villages if (roles, v, or_in_village) not in kept]
    if missing:
        for village_id, people in _with_role(session, roles, missing, or_in_village).items():
            kept[(roles, village_id, or_in_village)] = people
    return {v: list(kept[(roles, v, or_in_village)]) for v in villages}


def _with_role(
    session: Session,
    roles: tuple[str, ...],
    villages: list[uuid.UUID | None],
    or_in_village: tuple[str, ...],
) -> dict[uuid.UUID | None, list[uuid.UUID]]:
    named = [v for v in villages if v is not None]
    asked = []
    if or_in_village or None in villages:  # ``roles`` township-wide
        asked.append(PersonRole.role.in_(roles))
    if named:  # ``or_in_village`` (else ``roles``) in each village
        asked.append(
            sa.and_(PersonRole.role.in_(or_in_village or roles), Person.village_id.in_(named))
        )
    held = session.execute(
        sa.select(PersonRole.user_id, PersonRole.role, Person.village_id)
        .join(Person, Person.id == PersonRole.user_id)
        .where(sa.or_(*asked))
    ).all()
    everywhere = [user_id for user_id, role, _ in held if role in roles]
    found: dict[uuid.UUID | None, list[uuid.UUID]] = {}
    for village_id in villages:
        if village_id is None:
            people = everywhere
        elif or_in_village:
            people = everywhere + [
                u for u, role, v in held if role in or_in_village and v == village_id
            ]
        else:
            people = [u for u, role, v in held if role in roles and v == village_id]
        found[village_id] = list(dict.fromkeys(people))
    return found


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


def issue_variables_many(session: Session, issues: Sequence[Issue]) -> list[dict[str, Any]]:
    """``issue_variables`` of each item, their villages read in one query."""
    _read_villages(session, [issue.village_id for issue in issues])
    return [issue_variables(session, issue) for issue in issues]


def _village(session: Session, village_id: uuid.UUID) -> Village | None:
    """The village, read once per session (a village not known yet too)."""
    kept = _kept(session, _VILLAGES)
    if village_id not in kept:
        _read_villages(session, [village_id])
    return kept[village_id]


def _read_villages(session: Session, village_ids: Iterable[uuid.UUID | None]) -> None:
    """Keep for the session the villages of ``village_ids`` not read yet, in one query."""
    kept = _kept(session, _VILLAGES)
    missing = list(dict.fromkeys(v for v in village_ids if v is not None and v not in kept))
    if missing:
        kept.update(dict.fromkeys(missing))
        found = session.scalars(sa.select(Village).where(among(session, Village.id, missing)))
        kept.update((village.id, village) for village in found)


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
            .where(among(session, Person.id, missing))
        ).all()
        kept.update({person.id: (person, preference) for person, preference in known})
    return {i: kept[i] for i in ids if kept[i] is not None}


class Notice(NamedTuple):
    """What one event tells whom (``tell_many`` writes a run of them together)."""

    event: Envelope
    kind: str
    recipients: Iterable[uuid.UUID | None]
    variables: dict[str, Any]
    link: Link


def tell(
    session: Session,
    settings: NotifySettings,
    event: Envelope,
    kind: str,
    recipients: Iterable[uuid.UUID | None],
    variables: dict[str, Any],
    link: Link,
) -> int:
    """``tell_many`` for one event. Returns how many inbox rows were new."""
    return tell_many(session, settings, [Notice(event, kind, recipients, variables, link)])


def tell_many(session: Session, settings: NotifySettings, notices: Iterable[Notice]) -> int:
    """One inbox row per recipient of each notice (once per event) and a pending delivery on
    every other channel the recipient takes for its kind. Returns how many inbox rows were new.

    Three statements whatever the number of events and recipients: who they are (with their
    preferences; once per session), the inbox rows (``ON CONFLICT DO NOTHING RETURNING``: a
    person an event told already is skipped) and their deliveries."""
    asked = []
    for notice in notices:
        wanted = list(dict.fromkeys(r for r in notice.recipients if r is not None))
        if wanted:
            asked.append((Notice(*notice), wanted))
    if not asked:
        return 0
    people = _people(session, list(dict.fromkeys(u for _, wanted in asked for u in wanted)))
    inactive = {user_id for user_id, (person, _) in people.items() if not person.active}
    messages: list[tuple[dict[str, Any], list[uuid.UUID]]] = []
    # Per event id, what it tells whom (twice: the same event twice in a run, whose second
    # rows the inbox statement skips as it skips rows written before).
    told: dict[uuid.UUID, list[tuple[Notice, datetime, list[uuid.UUID]]]] = {}
    now = None
    for notice, wanted in asked:
        rendered = templates.render(notice.kind, notice.variables)
        now = _later(now)
        event, link = notice.event, notice.link
        fresh = [user_id for user_id in wanted if user_id not in inactive]
        if not fresh:
            continue
        told.setdefault(event.id, []).append((notice, now, fresh))
        message = {
            "event_id": event.id,
            "event_type": event.type,
            "kind": notice.kind,
            "title": rendered.title,
            "body": rendered.body,
            "link_type": link.type,
            "link_id": str(link.id) if link.id is not None else None,
            "variables": _jsonable(notice.variables),
            "created_at": now,
        }
        messages.append((message, fresh))
    made = _write_inbox(session, messages)
    if not made:
        return 0  # these events told everyone already
    NOTIFICATIONS_SENT.labels(service="notify", channel="inbox", outcome="sent").inc(len(made))
    deliveries_made = []
    for notification_id, event_id, user_id in made:
        tellings = told[event_id]
        notice, told_at, _ = (
            tellings[0]
            if len(tellings) == 1
            else next(telling for telling in tellings if user_id in telling[2])
        )
        person, preference = people.get(user_id, (None, None))
        urgent = templates.TEMPLATES[notice.kind].urgent
        for channel, address in _channels_for(settings, notice.kind, person, preference):
            if channel == "wechat" and not templates.wechat_ready(notice.kind, notice.variables):
                continue
            held = deliveries.quiet_until(channel, urgent, preference, settings, told_at)
            deliveries_made.append(
                {
                    "id": uuid.uuid4(),
                    "notification_id": notification_id,
                    "event_id": event_id,
                    "user_id": user_id,
                    "channel": channel,
                    "kind": notice.kind,
                    "address": address,
                    "status": "pending",
                    "urgent": urgent,
                    "attempts": 0,
                    "next_attempt_at": held or told_at,
                    "created_at": told_at,
                    "updated_at": told_at,
                }
            )
    if deliveries_made:
        _DELIVERIES.execute(session, deliveries_made)
    return len(made)


def _write_inbox(
    session: Session, messages: list[tuple[dict[str, Any], list[uuid.UUID]]]
) -> list[sa.Row]:
    """Each message's inbox row for each of its people, but those there already (``ON
    CONFLICT DO NOTHING``); returns ``(id, event_id, user_id)`` of the rows that are new. One
    statement for the run (``shared.db.Upsert``: the rows as one JSON parameter on PostgreSQL)."""
    rows = [
        {**message, "id": uuid.uuid4(), "user_id": user_id}
        for message, people in messages
        for user_id in people
    ]
    return _INBOX.execute(session, rows).all() if rows else []


def _later(previous: datetime | None) -> datetime:
    """Now, but after ``previous``: the events of a run keep their order in the inbox (newest
    first by ``created_at``), as when they are told one after the other."""
    now = utcnow()
    return now if previous is None or now > previous else previous + timedelta(microseconds=1)


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
    ),
    returning=("id", "event_id", "user_id"),
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


@functools.lru_cache(maxsize=4)
def _inbox_query(unread: bool | None) -> KeysetQuery:
    """One user's (``me``) messages, all, unread or read, built once: every resident's inbox."""
    stmt = sa.select(Notification).where(Notification.user_id == sa.bindparam("me"))
    if unread is True:
        stmt = stmt.where(Notification.read_at.is_(None))
    elif unread is False:
        stmt = stmt.where(Notification.read_at.is_not(None))
    return KeysetQuery(stmt, order=[Notification.created_at.desc(), Notification.id.desc()])


def inbox(
    session: Session, user_id: uuid.UUID, *, unread: bool | None, cursor: str | None, limit: int
) -> tuple[list[Notification], str | None]:
    """The user's messages, newest first (keyset pagination)."""
    return keyset_page(
        session,
        _inbox_query(unread),
        key=lambda n: [n.created_at, n.id],
        cursor=cursor,
        limit=limit,
        params={"me": user_id},
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
