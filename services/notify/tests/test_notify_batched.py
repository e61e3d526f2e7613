"""A run of ``issue.reported`` told together (``handle_issue_reported.apply_many``, as the
consumer hands it a batch's run) leaves the same inbox rows, deliveries and issues as the reports
told one at a time (real PostgreSQL, and the embedded SQLite): the same people, titles and
bodies, once per person even when the run comes again, and an issue reported twice in a run
reads as one report after the other."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from notify_helpers import settings_with
from prometheus_client import REGISTRY

from notify import services
from notify.handlers import SUBSCRIPTIONS, ReportedData, handle_issue_reported, use_settings
from notify.models import Base, Delivery, Issue, Notification
from shared.db import Database
from shared.events import load_data
from shared.migrations import upgrade
from shared.testing import envelope

LABELS = {"water_power": "用水用电", "road_traffic": "道路交通", "neighbor_dispute": "邻里纠纷"}


@dataclass
class Town:
    """Who is who (the same ids in every database the test fills)."""

    admins: list[uuid.UUID] = field(default_factory=lambda: [uuid.uuid4(), uuid.uuid4()])
    villages: list[uuid.UUID] = field(default_factory=lambda: [uuid.uuid4() for _ in range(3)])
    staff: dict[uuid.UUID, list[uuid.UUID]] = field(default_factory=dict)
    # A village notify has not heard of: its reports name no village (本镇) and reach the admins.
    unnamed: uuid.UUID = field(default_factory=uuid.uuid4)
    # Grid leader of the first village who is a resident too (WeChat), and an admin who takes
    # SMS for new reports (held all day: their quiet hours, then the township's SMS window).
    resident_leader: uuid.UUID = field(default_factory=uuid.uuid4)
    sms_admin: uuid.UUID | None = None

    def __post_init__(self) -> None:
        for village in self.villages:
            self.staff[village] = [uuid.uuid4(), uuid.uuid4()]
        self.staff[self.villages[0]].append(self.resident_leader)
        self.sms_admin = self.admins[0]

    def told_of(self, village: uuid.UUID | None) -> set[uuid.UUID]:
        return {*self.admins, *self.staff.get(village, [])}


def _account(user_id, roles, village=None, *, active=True, openid=None) -> dict:
    return {
        "user_id": str(user_id),
        "name": "张三",
        "roles": roles,
        "village_id": str(village) if village else None,
        "phone": "13800000000",
        "openid": openid,
        "active": active,
        "revision": 1,
    }


def _seed(db: Database, town: Town) -> None:
    events = [
        envelope("account.upserted", _account(a, ["admin"]), producer="intake") for a in town.admins
    ]
    # Disabled: indexed under no role, so told nothing.
    events.append(
        envelope(
            "account.upserted",
            _account(uuid.uuid4(), ["admin"], active=False),
            producer="intake",
        )
    )
    for k, village in enumerate(town.villages):
        events.append(
            envelope(
                "village.upserted",
                {"village_id": str(village), "name": f"第{k + 1}村", "revision": 1},
            )
        )
        worker, leader, *more = town.staff[village]
        events.append(
            envelope(
                "account.upserted", _account(worker, ["grid_worker"], village), producer="intake"
            )
        )
        events.append(
            envelope(
                "account.upserted", _account(leader, ["grid_leader"], village), producer="intake"
            )
        )
        for resident_leader in more:
            data = _account(
                resident_leader, ["grid_leader", "resident"], village, openid="o-leader"
            )
            events.append(envelope("account.upserted", data, producer="intake"))
    with db.transaction() as session:
        for event in events:
            SUBSCRIPTIONS[event.type](session, event)
        services.change_preferences(
            session,
            town.sms_admin,
            ["admin"],
            {
                "kinds": [{"kind": "reported", "sms": True}],
                "quiet_hours": {"start": "00:00", "end": "12:00"},
            },
        )


def _report(issue_id=None, *, village=None, ticket_no="SKJ-20261128-0001", category="water_power"):
    data = {
        "issue_id": str(issue_id or uuid.uuid4()),
        "ticket_no": ticket_no,
        "category": category,
        "village_id": str(village) if village else None,
        "reporter_id": str(uuid.uuid4()),
        "description": "村东头自来水管破裂。",
    }
    return envelope("issue.reported", data, producer="intake")


def _run(town: Town) -> list:
    """Thirty reports of four villages (one notify does not know) and none: 102 inbox rows,
    more than one statement's 64 on SQLite."""
    places = [*town.villages, town.unnamed, None]
    categories = list(LABELS)
    return [
        _report(
            village=places[k % len(places)],
            ticket_no=f"SKJ-20261128-{k:04d}",
            category=categories[k % len(categories)],
        )
        for k in range(30)
    ]


def _village(event) -> uuid.UUID | None:
    return uuid.UUID(event.data["village_id"]) if event.data["village_id"] else None


def _sent() -> float:
    labels = {"service": "notify", "channel": "inbox", "outcome": "sent"}
    return REGISTRY.get_sample_value("notifications_sent_total", labels) or 0.0


def _told_together(db: Database, events: list) -> None:
    with db.transaction() as session:
        handle_issue_reported.apply_many(session, events)


def _told_one_at_a_time(db: Database, events: list) -> None:
    for event in events:
        with db.transaction() as session:
            handle_issue_reported(session, event)


def _state(db: Database):
    """Everything a report leaves, without the ids and times that differ between databases."""
    with db.transaction() as session:
        inbox = [
            (
                n.event_id,
                n.user_id,
                n.event_type,
                n.kind,
                n.title,
                n.body,
                n.link_type,
                n.link_id,
                json.dumps(n.variables, sort_keys=True),
                n.read_at,
            )
            for n in session.scalars(sa.select(Notification))
        ]
        of = {n.id: (n.event_id, n.user_id) for n in session.scalars(sa.select(Notification))}
        deliveries = [
            (
                d.event_id,
                d.user_id,
                of[d.notification_id],
                d.channel,
                d.kind,
                d.address,
                d.status,
                d.urgent,
                d.attempts,
                d.next_attempt_at > d.created_at,  # held by quiet hours
            )
            for d in session.scalars(sa.select(Delivery))
        ]
        issues = [
            (i.id, i.ticket_no, i.category, i.village_id, i.reporter_id, i.version, i.holder_ids)
            for i in session.scalars(sa.select(Issue))
        ]
    return sorted(inbox, key=repr), sorted(deliveries, key=repr), sorted(issues, key=repr)


@pytest.fixture
def town() -> Town:
    return Town()


@pytest.fixture
def channels(database_url, jwt_keys):
    """SMS and a webhook switched on (WeChat too, for new reports): deliveries to compare."""
    settings = settings_with(
        database_url,
        jwt_keys,
        sms_enabled=True,
        sms_quiet_start=time(12, 0),
        sms_quiet_end=time(0, 0),
        sms_access_key_id="key",
        sms_access_key_secret="secret",
        webhook_url="http://127.0.0.1:9/hook",
        webhook_secret="hook-secret",
        wechat_notify_enabled=True,
        wechat_app_id="wx-app",
        wechat_app_secret="wx-secret",
        wechat_templates={"reported": "tmpl-reported"},
    )
    use_settings(settings)
    yield settings
    use_settings(None)


def _database(url: str) -> Database:
    return Database(url, metadata=Base.metadata, producer="notify")


@pytest.fixture
def one_at_a_time(fresh_database, town, channels):
    """The reference: a second PostgreSQL database, the same town, reports told one by one."""
    db = _database(fresh_database("notify"))
    _seed(db, town)
    yield db
    db.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def together(request, database_url, tmp_path: Path, town, channels):
    """The database a run is told into at once: PostgreSQL, or the embedded SQLite."""
    if request.param == "postgresql":
        url = database_url
    else:
        url = f"sqlite:///{tmp_path / 'notify.db'}"
        upgrade("notify", url)
    db = _database(url)
    _seed(db, town)
    yield db
    db.dispose()


def test_a_run_told_together_leaves_what_reports_told_one_at_a_time_leave(
    together, one_at_a_time, town
):
    run = _run(town)
    before = _sent()
    _told_together(together, run)
    made = _sent() - before
    _told_one_at_a_time(one_at_a_time, run)

    inbox, deliveries, issues = _state(together)
    assert (inbox, deliveries, issues) == _state(one_at_a_time)

    # And what that is: each report reaches the admins and its village's grid staff, once.
    by_event = {}
    for row in inbox:
        by_event.setdefault(row[0], []).append(row)
    for event in run:
        village = _village(event)
        rows = by_event[event.id]
        assert sorted(row[1] for row in rows) == sorted(town.told_of(village))
        place = f"第{town.villages.index(village) + 1}村" if village in town.villages else "本镇"
        label = LABELS[event.data["category"]]
        body = f"{place}群众反映了一件{label}事项（编号 {event.data['ticket_no']}），请及时交办。"
        assert {(row[4], row[5]) for row in rows} == {("新事项待交办", body)}
        assert {(row[6], row[7]) for row in rows} == {("issue", event.data["issue_id"])}
    assert len(inbox) == sum(len(town.told_of(_village(e))) for e in run) == 102
    assert made == len(inbox)

    # Deliveries: the webhook for everyone told, SMS (held: quiet hours) for the admin who
    # asked for it, WeChat for the grid leader who is a resident.
    channels_made = Counter(row[3] for row in deliveries)
    first_village = sum(1 for e in run if _village(e) == town.villages[0])
    assert channels_made == {"webhook": len(inbox), "sms": len(run), "wechat": first_village}
    assert all(row[9] for row in deliveries if row[3] == "sms")
    assert not any(row[9] for row in deliveries if row[3] == "webhook")
    assert all(row[1] == town.sms_admin for row in deliveries if row[3] == "sms")


def test_a_run_keeps_its_order_in_each_inbox(together, town):
    run = _run(town)
    _told_together(together, run)
    with together.transaction() as session:
        newest_first = list(
            session.scalars(
                sa.select(Notification.event_id)
                .where(Notification.user_id == town.admins[1])
                .order_by(Notification.created_at.desc(), Notification.id.desc())
            )
        )
    assert newest_first == [event.id for event in reversed(run)]


def test_a_run_that_comes_again_tells_nobody_twice(together, town):
    run = _run(town)
    _told_together(together, run)
    first = _state(together)
    before = _sent()

    _told_together(together, run)  # the whole run again
    _told_together(together, run[3:7])  # part of it
    for event in run[:2]:  # and one at a time
        with together.transaction() as session:
            handle_issue_reported(session, event)
    assert _state(together) == first
    assert _sent() == before

    # A run of old and new reports tells only the new ones' people.
    fresh = _report(village=town.villages[1], ticket_no="SKJ-20261128-9999")
    _told_together(together, [run[0], fresh, run[1]])
    inbox, _, _ = _state(together)
    assert len(inbox) == len(first[0]) + len(town.told_of(town.villages[1]))
    assert _sent() == before + len(town.told_of(town.villages[1]))


def test_the_same_event_twice_in_a_run_tells_each_person_once(together, one_at_a_time, town):
    report = _report(village=town.villages[2])
    other = _report(village=town.villages[0])
    _told_together(together, [report, other, report])
    _told_one_at_a_time(one_at_a_time, [report, other, report])
    assert _state(together) == _state(one_at_a_time)
    inbox, _, _ = _state(together)
    assert Counter(row[0] for row in inbox) == {
        report.id: len(town.told_of(town.villages[2])),
        other.id: len(town.told_of(town.villages[0])),
    }


def test_two_reports_of_one_issue_in_a_run_read_as_one_after_the_other(
    together, one_at_a_time, town
):
    """The second report of an item (intake resent it, or it moved village) finds what the
    first left: a ticket it leaves empty is kept, a new category or village replaces the old."""
    issue_id = uuid.uuid4()
    first = _report(issue_id, village=town.villages[0], ticket_no="SKJ-20261128-0007")
    between = _report(village=town.villages[1], ticket_no="SKJ-20261128-0008")
    second = _report(issue_id, village=town.villages[2], ticket_no=None, category="road_traffic")
    run = [first, between, second]
    _told_together(together, run)
    _told_one_at_a_time(one_at_a_time, run)
    assert _state(together) == _state(one_at_a_time)

    with together.transaction() as session:
        issue = session.get(Issue, issue_id)
        assert (issue.ticket_no, issue.category, issue.village_id) == (
            "SKJ-20261128-0007",
            "road_traffic",
            town.villages[2],
        )
        told = {
            n.event_id: n
            for n in session.scalars(
                sa.select(Notification).where(Notification.user_id == town.admins[0])
            )
        }
        people = {
            event_id: set(
                session.scalars(
                    sa.select(Notification.user_id).where(Notification.event_id == event_id)
                )
            )
            for event_id in (first.id, second.id)
        }
    # Each message says what the item was at its report, and goes to that village's staff.
    assert (
        told[first.id].body
        == "第1村群众反映了一件用水用电事项（编号 SKJ-20261128-0007），请及时交办。"
    )
    assert (
        told[second.id].body
        == "第3村群众反映了一件道路交通事项（编号 SKJ-20261128-0007），请及时交办。"
    )
    assert people[first.id] == town.told_of(town.villages[0])
    assert people[second.id] == town.told_of(town.villages[2])


def test_remember_reports_leaves_an_issue_given_twice_as_one_after_the_other(
    together, one_at_a_time, town
):
    """Given the same item twice in one call, the one statement holds it once: what a later
    report says wins, what it leaves empty keeps the earlier value."""
    issue_id = uuid.uuid4()
    reports = [
        _report(issue_id, village=town.villages[0], ticket_no="SKJ-20261128-0011"),
        _report(issue_id, village=None, ticket_no=None, category="road_traffic"),
        _report(village=town.villages[1]),
    ]
    datas = [load_data(ReportedData, event.data) for event in reports]
    with together.transaction() as session:
        issues = services.remember_reports(session, datas)
        assert set(issues) == {issue_id, datas[2]["issue_id"]}
        assert (issues[issue_id].ticket_no, issues[issue_id].category) == (
            "SKJ-20261128-0011",
            "road_traffic",
        )
    for data in datas:
        with one_at_a_time.transaction() as session:
            services.remember_report(session, data)
    assert _state(together)[2] == _state(one_at_a_time)[2]
    with together.transaction() as session:
        issue = session.get(Issue, issue_id)
        assert (issue.village_id, issue.reporter_id) == (town.villages[0], datas[1]["reporter_id"])
