"""Leaderboards, points pages, KPIs, the assessment, the 红黑榜 and the rebuild."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa
from openpyxl import load_workbook
from scoring_helpers import Dispatch

from scoring import boards, domain
from scoring.models import ScoreTotal
from shared.testing import at

VILLAGE_A, VILLAGE_B = uuid.uuid4(), uuid.uuid4()


def resolve(feed, worker, *, difficulty, resolved, late=False, grid=None, leader=None):
    issue = Dispatch()
    when = at(resolved)
    due = when - timedelta(hours=1) if late else when + timedelta(hours=1)
    feed(
        "issue.assigned",
        issue.assigned(
            worker, difficulty=difficulty, due_at=due, grid_id=grid, grid_leader_id=leader
        ),
        at=when - timedelta(hours=2),
    )
    feed(
        "issue.resolved",
        issue.resolved(worker, resolved_at=when, due_at=due, difficulty=difficulty),
        at=when,
    )
    return issue


def board(client, who, **query):
    response = client.get("/api/v1/leaderboard", query_string=query, headers=who.headers)
    assert response.status_code == 200, response.json
    return response.json


def test_ties_share_a_rank_and_on_time_resolutions_break_them(client, feed, person) -> None:
    a = person("grid_worker", name="甲", village_id=VILLAGE_A)
    b = person("grid_worker", name="乙", village_id=VILLAGE_A)
    c = person("grid_worker", name="丙", village_id=VILLAGE_B)
    person("grid_leader", name="丁", village_id=VILLAGE_B)
    resident = person("resident", name="群众")
    person("admin", name="管理员")
    resolve(feed, a.id, difficulty=5, resolved="2026-11-05T02:00:00Z")
    resolve(feed, b.id, difficulty=5, resolved="2026-11-06T02:00:00Z")
    resolve(feed, c.id, difficulty=2, resolved="2026-11-07T02:00:00Z")
    resolve(feed, c.id, difficulty=3, resolved="2026-11-08T02:00:00Z")

    body = board(client, resident, period="month:2026-11")
    ranked = [
        (row["name"], row["rank"], row["points"], row["resolved_on_time"]) for row in body["items"]
    ]
    assert ranked[0] == ("丙", 1, 5, 2)
    assert sorted(ranked[1:3]) == [("乙", 2, 5, 1), ("甲", 2, 5, 1)]
    assert ranked[3] == ("丁", 4, 0, 0)
    assert len(ranked) == 4  # residents and admins are not on the board
    assert "13800000000" not in str(body) and "phone" not in str(body)


def test_a_midnight_resolution_in_shanghai_moves_to_the_next_months_board(
    client, feed, person
) -> None:
    a, b = person("grid_worker", name="甲"), person("grid_worker", name="乙")
    resolve(feed, a.id, difficulty=3, resolved="2026-11-30T15:59:59Z")
    resolve(feed, b.id, difficulty=2, resolved="2026-11-30T16:00:00Z")

    november = {r["name"]: r["points"] for r in board(client, a, period="month:2026-11")["items"]}
    december = {r["name"]: r["points"] for r in board(client, a, period="month:2026-12")["items"]}
    assert november == {"甲": 3, "乙": 0}
    assert december == {"乙": 2, "甲": 0}
    quarter = board(client, a, period="quarter:2026-Q4")["items"]
    assert [(r["name"], r["points"]) for r in quarter] == [("甲", 3), ("乙", 2)]


def test_rank_change_compares_with_the_previous_period(client, feed, person) -> None:
    a, b = person("grid_worker", name="甲"), person("grid_worker", name="乙")
    resolve(feed, a.id, difficulty=5, resolved="2026-10-10T02:00:00Z")
    resolve(feed, b.id, difficulty=1, resolved="2026-10-10T02:00:00Z")
    resolve(feed, b.id, difficulty=4, resolved="2026-11-10T02:00:00Z")

    rows = {r["name"]: r for r in board(client, a, period="month:2026-11")["items"]}
    assert (rows["乙"]["rank"], rows["乙"]["rank_change"]) == (1, 1)
    assert (rows["甲"]["rank"], rows["甲"]["rank_change"]) == (2, -1)
    assert all(r["rank_change"] is None for r in board(client, a, period="all")["items"])


def test_no_rank_change_for_who_did_nothing_in_the_previous_period(client, feed, person) -> None:
    a, b = person("grid_worker", name="甲"), person("grid_worker", name="乙")
    resolve(feed, a.id, difficulty=5, resolved="2026-10-10T02:00:00Z")
    resolve(feed, a.id, difficulty=1, resolved="2026-11-10T02:00:00Z")
    resolve(feed, b.id, difficulty=4, resolved="2026-11-10T02:00:00Z")

    rows = {r["name"]: r for r in board(client, a, period="month:2026-11")["items"]}
    # 乙 was not on October's board (everyone without points shared a rank there).
    assert (rows["乙"]["rank"], rows["乙"]["rank_change"]) == (1, None)
    assert (rows["甲"]["rank"], rows["甲"]["rank_change"]) == (2, -1)


def test_the_board_pages_with_a_cursor_and_filters_by_village(client, feed, person) -> None:
    people = [person("grid_worker", name=f"员{i}", village_id=VILLAGE_A) for i in range(5)]
    person("grid_worker", name="外村", village_id=VILLAGE_B)
    for i, p in enumerate(people):
        resolve(feed, p.id, difficulty=i + 1, resolved="2026-11-10T02:00:00Z")
    first = board(client, people[0], period="month:2026-11", village_id=str(VILLAGE_A), limit=2)
    second = board(
        client,
        people[0],
        period="month:2026-11",
        village_id=str(VILLAGE_A),
        limit=2,
        cursor=first["next_cursor"],
    )
    third = board(
        client,
        people[0],
        period="month:2026-11",
        village_id=str(VILLAGE_A),
        limit=2,
        cursor=second["next_cursor"],
    )
    names = [r["name"] for page in (first, second, third) for r in page["items"]]
    assert names == ["员4", "员3", "员2", "员1", "员0"]
    assert third["next_cursor"] is None


def test_grid_and_village_boards_add_up_their_members(client, feed, person) -> None:
    grid1, grid2, leader = uuid.uuid4(), uuid.uuid4(), person("grid_leader", name="网格长王")
    a = person("grid_worker", name="甲", village_id=VILLAGE_A)
    b = person("grid_worker", name="乙", village_id=VILLAGE_A)
    c = person("grid_worker", name="丙", village_id=VILLAGE_B)
    resolve(feed, a.id, difficulty=2, resolved="2026-11-10T02:00:00Z", grid=grid1, leader=leader.id)
    resolve(feed, b.id, difficulty=2, resolved="2026-11-10T02:00:00Z", grid=grid1, leader=leader.id)
    resolve(feed, c.id, difficulty=3, resolved="2026-11-10T02:00:00Z", grid=grid2)
    feed("village.upserted", {"village_id": str(VILLAGE_A), "name": "沙口集村", "revision": 1})

    grids = board(client, a, period="month:2026-11", scope="grid")["items"]
    assert [(r["id"], r["points"], r["rank"]) for r in grids] == [
        (str(grid1), 4, 1),
        (str(grid2), 3, 2),
    ]
    assert grids[0]["name"] == "沙口集村网格长王的网格"
    villages = board(client, a, period="month:2026-11", scope="village")["items"]
    assert (villages[0]["name"], villages[0]["points"]) == ("沙口集村", 4)


def test_my_points_list_entries_with_ticket_numbers_and_totals(client, feed, person) -> None:
    worker = person("grid_worker")
    issue = Dispatch()
    feed("issue.reported", {"issue_id": str(issue.issue_id), "ticket_no": "SKJ-20261110-0001"})
    due = at("2026-11-10T04:00:00Z")
    feed("issue.assigned", issue.assigned(worker.id, difficulty=3, due_at=due))
    feed(
        "issue.resolved",
        issue.resolved(worker.id, resolved_at=at("2026-11-10T02:00:00Z"), due_at=due, difficulty=3),
    )
    resolve(feed, worker.id, difficulty=1, resolved="2026-11-11T02:00:00Z")

    response = client.get(
        "/api/v1/points/mine", query_string={"period": "month:2026-11"}, headers=worker.headers
    )
    assert response.status_code == 200
    body = response.json
    assert [(e["points"], e["ticket_no"]) for e in body["items"]] == [
        (1, None),
        (3, "SKJ-20261110-0001"),
    ]
    assert body["totals"] == [
        {
            "period": "month:2026-11",
            "points": 4,
            "resolved": 2,
            "resolved_on_time": 2,
            "rated": 0,
            "satisfied": 0,
        }
    ]
    page = client.get("/api/v1/points/mine", query_string={"limit": 1}, headers=worker.headers).json
    assert len(page["items"]) == 1 and page["next_cursor"]
    assert {t["period"][:3] for t in page["totals"]} == {"mon", "qua", "yea", "all"}


def test_a_workers_points_are_seen_by_their_grid_leader_area_leader_and_admins(
    client, feed, person
) -> None:
    leader, other_leader = person("grid_leader", name="网格长"), person("grid_leader")
    area_leader, other_area = person("area_leader"), person("area_leader")
    admin, colleague, resident = person("admin"), person("grid_worker"), person("resident")
    worker = person("grid_worker", village_id=VILLAGE_A)
    feed(
        "village.upserted",
        {
            "village_id": str(VILLAGE_A),
            "name": "村",
            "area_leader_id": str(area_leader.id),
            "revision": 1,
        },
    )
    resolve(
        feed,
        worker.id,
        difficulty=2,
        resolved="2026-11-10T02:00:00Z",
        grid=uuid.uuid4(),
        leader=leader.id,
    )
    path = f"/api/v1/workers/{worker.id}/points"
    for who in (leader, area_leader, admin, worker):
        response = client.get(path, headers=who.headers)
        assert response.status_code == 200, who
        assert response.json["items"][0]["points"] == 2
    for who in (other_leader, other_area, colleague):
        assert client.get(path, headers=who.headers).status_code == 404
    assert client.get(path, headers=resident.headers).status_code == 403
    assert client.get(path).status_code == 401


def test_kpis_define_response_on_time_satisfaction_reopen_and_callback_rates(
    client, feed, person, settings
) -> None:
    worker, admin = person("grid_worker", name="甲"), person("admin")
    # Responded within the limit (1 h after assignment), resolved on time, satisfied.
    first = Dispatch()
    t0 = at("2026-11-10T00:00:00Z")
    feed(
        "issue.assigned",
        first.assigned(worker.id, difficulty=1, due_at=t0 + timedelta(days=1)),
        at=t0,
    )
    feed("issue.started", first.started(worker.id), at=t0 + timedelta(hours=1))
    feed(
        "issue.resolved",
        first.resolved(
            worker.id,
            resolved_at=t0 + timedelta(hours=2),
            due_at=t0 + timedelta(days=1),
            difficulty=1,
        ),
    )
    feed("issue.rated", first.rated("satisfied", rated_at=t0 + timedelta(hours=3)))
    feed("issue.callback_recorded", first.callback(passed=True), at=t0 + timedelta(hours=4))
    # Started too late, resolved late, unsatisfied, reopened.
    second = Dispatch()
    feed(
        "issue.assigned",
        second.assigned(worker.id, difficulty=1, due_at=t0 + timedelta(hours=1)),
        at=t0,
    )
    feed("issue.started", second.started(worker.id), at=t0 + timedelta(hours=30))
    feed(
        "issue.resolved",
        second.resolved(
            worker.id,
            resolved_at=t0 + timedelta(hours=31),
            due_at=t0 + timedelta(hours=1),
            difficulty=1,
        ),
    )
    feed("issue.rated", second.rated("unsatisfied", rated_at=t0 + timedelta(hours=32)))
    feed("issue.reopened", second.reopened(), at=t0 + timedelta(hours=32))

    response = client.get(
        "/api/v1/kpis",
        query_string={"scope": "worker", "period": "month:2026-11"},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.json
    [row] = response.json["items"]
    assert (row["assigned"], row["responded"], row["resolved"], row["resolved_on_time"]) == (
        2,
        1,
        2,
        1,
    )
    assert row["response_rate"] == 0.5
    assert row["on_time_rate"] == 0.5
    assert row["satisfaction_rate"] == 0.5
    assert row["reopen_rate"] == 0.5
    assert row["callback_pass_rate"] == 1.0
    assert row["composite"] == 0.5
    assert response.json["weights"] == {
        "response_rate": 30,
        "on_time_rate": 35,
        "satisfaction_rate": 35,
    }
    township = client.get(
        "/api/v1/kpis",
        query_string={"scope": "township", "period": "month:2026-11"},
        headers=admin.headers,
    ).json["items"]
    assert township[0]["name"] == "全乡" and township[0]["resolved"] == 2
    assert client.get("/api/v1/kpis", headers=person("resident").headers).status_code == 403


def test_the_assessment_has_chinese_headers_one_row_per_worker_and_no_formulas(
    client, feed, person
) -> None:
    admin = person("admin")
    evil = person("grid_worker", name='=HYPERLINK("http://evil","x")')
    good = person("grid_worker", name="网格员刘")
    resolve(feed, good.id, difficulty=4, resolved="2026-11-10T02:00:00Z")
    response = client.get(
        "/api/v1/assessment", query_string={"period": "month:2026-11"}, headers=admin.headers
    )
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(response.data.decode("utf-8-sig"))))
    assert rows[0][:4] == ["排名", "姓名", "所在村", "积分"]
    assert rows[1][:2] == ["1", "网格员刘"] and rows[1][3] == "4"
    assert rows[2][1].startswith("'=")
    assert len(rows) == 3
    assert evil.name in rows[2][1]
    xlsx = client.get(
        "/api/v1/assessment",
        query_string={"period": "month:2026-11", "format": "xlsx"},
        headers=admin.headers,
    )
    sheet = load_workbook(io.BytesIO(xlsx.data)).active
    assert sheet.cell(1, 2).value == "姓名" and sheet.cell(2, 2).value == "网格员刘"
    assert client.get("/api/v1/assessment", headers=good.headers).status_code == 403


def test_the_monthly_board_names_the_top_and_bottom_workers(db, feed, person, settings) -> None:
    people = [person("grid_worker", name=f"员{i}") for i in range(4)]
    for i, p in enumerate(people):
        resolve(feed, p.id, difficulty=i + 1, resolved="2026-11-10T02:00:00Z")
    small = settings.model_copy(update={"board_size": 2})
    with db.transaction() as session:
        data = boards.publish_board(session, small, domain.parse_period("month:2026-11"), by="test")
    assert [(p["name"], p["rank"], p["points"]) for p in data["top"]] == [
        ("员3", 1, 4),
        ("员2", 2, 3),
    ]
    assert [(p["name"], p["rank"]) for p in data["bottom"]] == [("员0", 4), ("员1", 3)]
    table = db.metadata.tables["outbox"]
    with db.engine.connect() as conn:
        [published] = conn.execute(
            sa.select(table.c.envelope).where(table.c.event_type == "leaderboard.published")
        ).scalars()
    assert published["data"]["period"] == "month:2026-11"
    assert published["data"]["top"][0]["user_id"] == str(people[3].id)


def test_the_worker_publishes_last_months_board_once_the_month_in_shanghai_is_over(
    db, feed, person, settings
) -> None:
    worker = person("grid_worker", name="员甲")
    resolve(feed, worker.id, difficulty=3, resolved="2026-11-10T02:00:00Z")
    table = db.metadata.tables["outbox"]

    def published() -> list[str]:
        with db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(table.c.envelope).where(table.c.event_type == "leaderboard.published")
            ).scalars()
            return [row["data"]["period"] for row in rows]

    still_november = datetime.fromisoformat("2026-11-30T15:59:00+00:00")  # 23:59 in Shanghai
    with db.transaction() as session:
        boards.publish_last_month(session, settings, now=still_november)  # October's, if any
    assert "month:2026-11" not in published()

    december = datetime.fromisoformat("2026-11-30T16:05:00+00:00")  # 00:05 on 1 Dec
    for _ in range(2):  # the worker looks every hour; the board goes out once
        with db.transaction() as session:
            boards.publish_last_month(session, settings, now=december)
    assert published().count("month:2026-11") == 1


def test_rebuild_finds_and_repairs_a_total_that_drifted_from_the_ledger(db, feed, person) -> None:
    worker = person("grid_worker")
    resolve(feed, worker.id, difficulty=4, resolved="2026-11-10T02:00:00Z")
    with db.transaction() as session:
        assert boards.rebuild(session) == []
        session.get(ScoreTotal, ("month:2026-11", worker.id)).points = 99
    with db.transaction() as session:
        [difference] = boards.rebuild(session)
    assert (difference.period, difference.column, difference.stored, difference.expected) == (
        "month:2026-11",
        "points",
        99,
        4,
    )
    with db.transaction() as session:
        assert session.get(ScoreTotal, ("month:2026-11", worker.id)).points == 4
        assert boards.rebuild(session, fix=False) == []
