"""Each event tells the right people, and nobody else, in Chinese, once (real PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from notify.models import Delivery, Notification

DUE = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)  # 15:00 in Asia/Shanghai


@pytest.fixture
def town(person, feed):
    """A village with its grid worker and leader, an area leader, admins, a supervisor, a
    department's staff, the reporting resident, and people of another village."""
    village = uuid.uuid4()
    other_village = uuid.uuid4()
    people = {
        "admin": person("admin", name="乡网格管理员"),
        "admin2": person("admin", name="副管理员"),
        "worker": person("grid_worker", name="王强", village_id=village),
        "leader": person("grid_leader", name="李网格长", village_id=village),
        "area": person("area_leader", name="赵包片"),
        "supervisor": person("supervisor", name="督导组"),
        "department": person("department_staff", name="水利站"),
        "resident": person("resident", name="张大爷", village_id=village),
        "other_worker": person("grid_worker", name="外村网格员", village_id=other_village),
        "other_resident": person("resident", name="外村村民", village_id=other_village),
    }
    feed(
        "village.upserted",
        {
            "village_id": str(village),
            "name": "沙口村",
            "area_leader_id": str(people["area"].id),
            "revision": 1,
        },
    )
    people["village"] = village
    return people


def told(db, event_id) -> dict[uuid.UUID, Notification]:
    with db.transaction() as session:
        rows = session.scalars(sa.select(Notification).where(Notification.event_id == event_id))
        return {n.user_id: n for n in rows}


def ids(town, *names) -> set[uuid.UUID]:
    return {town[n].id for n in names}


class Issue:
    """One item's events as dispatch and intake send them, counting ``issue_version``."""

    def __init__(self, feed, town) -> None:
        self.feed, self.town = feed, town
        self.id = uuid.uuid4()
        self.version = 0

    def reported(self):
        return self.feed(
            "issue.reported",
            {
                "issue_id": str(self.id),
                "ticket_no": "SK20261129-0007",
                "category": "water_power",
                "reporter_id": str(self.town["resident"].id),
                "village_id": str(self.town["village"]),
                "description": "停水三天了",
            },
            producer="intake",
        )

    def step(self, event_type, holder_ids=(), state="assigned", level="grid", **data):
        self.version += 1
        snapshot = {
            "state": state,
            "level": level,
            "due_at": DUE.isoformat(),
            "assignee_id": str(self.town["worker"].id),
            "holder_ids": [str(h) for h in holder_ids],
        }
        body = {"issue_id": str(self.id), "issue_version": self.version, "snapshot": snapshot}
        body.update({k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in data.items()})
        return self.feed(event_type, body)

    def assigned(self):
        t = self.town
        return self.step(
            "issue.assigned",
            [t["worker"].id],
            assignee_id=t["worker"].id,
            grid_leader_id=t["leader"].id,
            village_id=t["village"],
            difficulty=3,
            due_at=DUE.isoformat(),
        )


def test_a_new_report_tells_the_admins_and_its_villages_grid_staff(db, town, feed):
    issue = Issue(feed, town)
    messages = told(db, issue.reported())
    assert set(messages) == ids(town, "admin", "admin2", "worker", "leader")
    body = messages[town["admin"].id].body
    assert "沙口村" in body and "用水用电" in body and "SK20261129-0007" in body
    assert messages[town["admin"].id].link_type == "issue"
    assert messages[town["admin"].id].link_id == str(issue.id)


def test_an_assignment_tells_the_assignee_what_where_how_hard_and_by_when(db, town, feed):
    issue = Issue(feed, town)
    issue.reported()
    messages = told(db, issue.assigned())
    assert set(messages) == ids(town, "worker", "leader")
    body = messages[town["worker"].id].body
    assert "沙口村" in body and "用水用电" in body and "难度 3 级" in body
    assert "2026年11月30日 15:00" in body  # due time in Asia/Shanghai


def test_an_assignment_to_a_department_tells_its_staff(db, town, feed):
    issue = Issue(feed, town)
    issue.reported()
    event = issue.step(
        "issue.assigned",
        [town["department"].id],
        assignee_id=None,
        grid_leader_id=town["leader"].id,
        village_id=town["village"],
        difficulty=2,
        due_at=DUE.isoformat(),
    )
    assert set(told(db, event)) == ids(town, "department", "leader")


@pytest.mark.parametrize(
    ("event_type", "kind", "words"),
    [
        ("issue.reminder_due", "reminder", "将于 2026年11月30日 15:00 到期"),
        ("issue.overdue", "overdue", "已于 2026年11月30日 15:00 超期"),
    ],
)
def test_deadline_messages_tell_the_assignee_and_the_grid_leader(
    db, town, feed, event_type, kind, words
):
    issue = Issue(feed, town)
    issue.reported()
    issue.assigned()
    event = issue.step(
        event_type,
        [town["worker"].id],
        assignee_id=town["worker"].id,
        grid_leader_id=town["leader"].id,
        due_at=DUE.isoformat(),
    )
    messages = told(db, event)
    assert set(messages) == ids(town, "worker", "leader")
    assert {m.kind for m in messages.values()} == {kind}
    assert words in messages[town["worker"].id].body


@pytest.mark.parametrize(
    ("to_level", "holder", "handler"),
    [
        ("area_leader", "area", "area"),
        ("county", "department", None),
    ],
)
def test_an_escalation_tells_the_new_holder_only(db, town, feed, to_level, holder, handler):
    issue = Issue(feed, town)
    issue.reported()
    issue.assigned()
    event = issue.step(
        "issue.escalated",
        [town[holder].id],
        level=to_level,
        from_level="township",
        to_level=to_level,
        reason="超期未办结",
        handler_id=town[handler].id if handler else None,
        due_at=(DUE + timedelta(days=3)).isoformat(),
    )
    messages = told(db, event)
    assert set(messages) == ids(town, holder)
    assert "超期未办结" in messages[town[holder].id].body


@pytest.mark.parametrize("still_held_by", [[], ["worker"]])
def test_an_escalation_to_the_township_queue_tells_the_admins(db, town, feed, still_held_by):
    """Dispatch keeps the working grid worker among the holders of an item in the township's
    queue; the news of the climb is still the admins', not the worker's."""
    issue = Issue(feed, town)
    issue.reported()
    issue.assigned()
    event = issue.step(
        "issue.escalated",
        [town[who].id for who in still_held_by],
        level="township",
        from_level="grid",
        to_level="township",
        reason="村级无法解决",
    )
    assert set(told(db, event)) == ids(town, "admin", "admin2")


def test_the_reporter_hears_of_resolution_rejection_and_closing(db, town, feed):
    issue = Issue(feed, town)
    issue.reported()
    issue.assigned()
    resolved = told(
        db, issue.step("issue.resolved", state="resolved", reporter_id=town["resident"].id)
    )
    assert set(resolved) == ids(town, "resident")
    assert "请对办理结果进行评价" in resolved[town["resident"].id].body
    closed = told(
        db,
        issue.step(
            "issue.closed", state="closed", rating="satisfied", reporter_id=town["resident"].id
        ),
    )
    assert set(closed) == ids(town, "resident")
    assert "您的评价：满意" in closed[town["resident"].id].body


def test_a_duplicate_rejection_gives_the_reason_and_links_to_the_original(db, town, feed):
    issue = Issue(feed, town)
    issue.reported()
    original = uuid.uuid4()
    event = issue.step(
        "issue.rejected",
        state="rejected",
        reason="重复反映",
        reporter_id=town["resident"].id,
        duplicate_of=original,
        duplicate_of_ticket_no="SK20261128-0003",
    )
    message = told(db, event)[town["resident"].id]
    assert set(told(db, event)) == ids(town, "resident")
    assert "重复反映" in message.body and "SK20261128-0003" in message.body
    assert (message.link_type, message.link_id) == ("issue", str(original))


def test_a_reopen_tells_the_assignee_and_the_area_leader(db, town, feed):
    issue = Issue(feed, town)
    issue.reported()
    issue.assigned()
    event = issue.step(
        "issue.reopened",
        [town["worker"].id],
        state="reopened",
        reason="unsatisfied",
        assignee_id=town["worker"].id,
        area_leader_id=town["area"].id,
        due_at=DUE.isoformat(),
    )
    messages = told(db, event)
    assert set(messages) == ids(town, "worker", "area")
    assert "群众评价不满意" in messages[town["area"].id].body


def test_an_urge_tells_whoever_holds_the_item_and_the_grid_leader(db, town, feed):
    issue = Issue(feed, town)
    issue.reported()
    issue.assigned()
    event = feed(
        "issue.urged",
        {
            "issue_id": str(issue.id),
            "reporter_id": str(town["resident"].id),
            "text": "怎么还没修好",
            "urge_count": 2,
        },
        producer="intake",
    )
    messages = told(db, event)
    assert set(messages) == ids(town, "worker", "leader")
    assert "第 2 次催办" in messages[town["worker"].id].body


def test_an_urge_before_assignment_goes_to_the_admins(db, town, feed):
    issue = Issue(feed, town)
    issue.reported()
    event = feed("issue.urged", {"issue_id": str(issue.id), "urge_count": 1}, producer="intake")
    assert set(told(db, event)) == ids(town, "admin", "admin2")


def test_points_tell_the_worker_with_sign_and_period(db, town, feed):
    event = feed(
        "points.awarded",
        {
            "entry_id": str(uuid.uuid4()),
            "user_id": str(town["worker"].id),
            "points": -2,
            "reason": "回访不通过",
            "period": "month:2026-11",
            "ticket_no": "SK20261129-0007",
        },
        producer="scoring",
    )
    messages = told(db, event)
    assert set(messages) == ids(town, "worker")
    assert "减少 2 分" in messages[town["worker"].id].body
    assert "2026年11月" in messages[town["worker"].id].body


def test_the_board_tells_every_grid_worker_and_leader(db, town, feed):
    event = feed(
        "leaderboard.published",
        {"period": "month:2026-10", "top": [], "bottom": []},
        producer="scoring",
    )
    messages = told(db, event)
    assert set(messages) == ids(town, "worker", "leader", "other_worker")
    assert messages[town["worker"].id].title == "2026年10月红黑榜已发布"


def test_pending_callbacks_tell_the_supervisors(db, town, feed):
    event = feed(
        "callbacks.pending", {"date": "2026-11-29", "count": 4, "oldest_closed_at": DUE.isoformat()}
    )
    messages = told(db, event)
    assert set(messages) == ids(town, "supervisor")
    assert "4 件" in messages[town["supervisor"].id].body


def test_news_reaches_only_residents_who_follow_it(db, town, feed, client):
    assert (
        client.put(
            "/api/v1/preferences", json={"follow_news": True}, headers=town["resident"].headers
        ).status_code
        == 200
    )
    event = feed(
        "news.published",
        {
            "id": str(uuid.uuid4()),
            "title": "沙口村自来水管网改造完工",
            "author_id": str(town["admin"].id),
        },
        producer="feed",
    )
    messages = told(db, event)
    assert set(messages) == ids(town, "resident")
    assert messages[town["resident"].id].link_type == "news"


def test_a_redelivered_event_makes_no_second_message(db, town, feed):
    issue = Issue(feed, town)
    issue.reported()
    event_id = uuid.uuid4()
    body = {
        "issue_id": str(issue.id),
        "issue_version": 1,
        "assignee_id": str(town["worker"].id),
        "grid_leader_id": str(town["leader"].id),
        "difficulty": 3,
        "due_at": DUE.isoformat(),
        "snapshot": {"state": "assigned", "level": "grid", "holder_ids": [str(town["worker"].id)]},
    }
    feed("issue.assigned", body, event_id=event_id)
    feed("issue.assigned", body, event_id=event_id)
    with db.transaction() as session:
        count = session.scalar(
            sa.select(sa.func.count())
            .select_from(Notification)
            .where(Notification.event_id == event_id)
        )
    assert count == 2  # the worker and the grid leader, once each


def test_a_disabled_account_is_told_nothing(db, town, feed, person):
    feed(
        "account.upserted",
        {
            "user_id": str(town["admin2"].id),
            "name": "副管理员",
            "roles": ["admin"],
            "active": False,
            "revision": 2,
        },
        producer="intake",
    )
    issue = Issue(feed, town)
    assert set(told(db, issue.reported())) == ids(town, "admin", "worker", "leader")


def test_messages_render_without_knowing_the_report_yet(db, town, feed):
    """Retries reorder events: an assignment that arrives before its report still reads well."""
    issue = Issue(feed, town)
    message = told(db, issue.assigned())[town["worker"].id]
    assert "None" not in message.body and "{" not in message.body
    assert "难度 3 级" in message.body


def test_no_delivery_rows_when_no_channel_is_switched_on(db, town, feed):
    issue = Issue(feed, town)
    issue.reported()
    issue.assigned()
    with db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Delivery)) == 0
