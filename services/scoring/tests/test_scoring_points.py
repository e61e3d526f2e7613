"""Points from dispatch's events: resolution, ratings, reopen, callbacks, rules by date."""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa
from scoring_helpers import Dispatch

from scoring.domain import local_day
from scoring.models import PointsEntry, ScoreTotal
from shared.clock import utcnow
from shared.testing import at


def entries(db, user_id: uuid.UUID) -> list[PointsEntry]:
    with db.transaction() as session:
        return list(
            session.scalars(
                sa.select(PointsEntry)
                .where(PointsEntry.user_id == user_id)
                .order_by(PointsEntry.occurred_at, PointsEntry.created_at)
            )
        )


def total(db, user_id: uuid.UUID, period: str) -> ScoreTotal | None:
    with db.transaction() as session:
        return session.get(ScoreTotal, (period, user_id))


def outbox(db, event_type: str) -> list[dict]:
    table = db.metadata.tables["outbox"]
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.envelope)
            .where(table.c.event_type == event_type)
            .order_by(table.c.created_at)
        )
        return [row[0] for row in rows]


def resolve_on_time(feed, worker, *, difficulty=4, resolved="2026-11-10T02:00:00Z", issue=None):
    issue = issue or Dispatch()
    due = at(resolved) + timedelta(hours=2)
    feed("issue.assigned", issue.assigned(worker, difficulty=difficulty, due_at=due))
    feed(
        "issue.resolved",
        issue.resolved(worker, resolved_at=at(resolved), due_at=due, difficulty=difficulty),
    )
    return issue


def test_an_on_time_resolution_of_difficulty_4_earns_4_points(db, feed, person) -> None:
    worker = person("grid_worker", name="网格员刘")
    resolve_on_time(feed, worker.id, difficulty=4)

    [entry] = entries(db, worker.id)
    assert (entry.points, entry.rule_code, entry.period_month) == (4, "resolved_on_time", "2026-11")
    for period in ("month:2026-11", "quarter:2026-Q4", "year:2026", "all"):
        row = total(db, worker.id, period)
        assert (row.points, row.resolved, row.resolved_on_time) == (4, 1, 1)
    [awarded] = outbox(db, "points.awarded")
    assert awarded["data"]["points"] == 4
    assert awarded["data"]["user_id"] == str(worker.id)
    assert awarded["data"]["period"] == "month:2026-11"
    assert awarded["data"]["reason"] == "按时办结"


def test_a_late_resolution_earns_nothing_but_counts_as_resolved(db, feed, person) -> None:
    worker = person("grid_worker")
    issue = Dispatch()
    due = at("2026-11-10T00:00:00Z")
    feed("issue.assigned", issue.assigned(worker.id, difficulty=5, due_at=due))
    feed(
        "issue.resolved",
        issue.resolved(worker.id, resolved_at=due + timedelta(seconds=1), due_at=due, difficulty=5),
    )

    [entry] = entries(db, worker.id)
    assert (entry.points, entry.rule_code) == (0, "resolved_late")
    row = total(db, worker.id, "month:2026-11")
    assert (row.points, row.resolved, row.resolved_on_time) == (0, 1, 0)


def test_the_same_resolved_event_twice_gives_4_points_not_8(db, feed, person) -> None:
    worker = person("grid_worker")
    issue = Dispatch()
    due = at("2026-11-10T04:00:00Z")
    feed("issue.assigned", issue.assigned(worker.id, due_at=due))
    data = issue.resolved(worker.id, resolved_at=at("2026-11-10T02:00:00Z"), due_at=due)
    event_id = uuid.uuid4()
    feed("issue.resolved", data, event_id=event_id)
    feed("issue.resolved", data, event_id=event_id)

    assert [e.points for e in entries(db, worker.id)] == [4]
    assert total(db, worker.id, "all").points == 4
    assert len(outbox(db, "points.awarded")) == 1


def test_the_resolver_not_the_original_assignee_is_credited(db, feed, person) -> None:
    assignee, resolver = (
        person("grid_worker", name="原承办人"),
        person("grid_leader", name="网格长"),
    )
    issue = Dispatch()
    due = at("2026-11-10T04:00:00Z")
    feed("issue.assigned", issue.assigned(assignee.id, difficulty=3, due_at=due))
    feed(
        "issue.resolved",
        issue.resolved(
            resolver.id,
            assignee=assignee.id,
            resolved_at=at("2026-11-10T02:00:00Z"),
            due_at=due,
            difficulty=3,
        ),
    )

    assert [e.points for e in entries(db, resolver.id)] == [3]
    assert entries(db, assignee.id) == []


def test_an_unsatisfied_rating_then_reopen_claws_back_the_on_time_points(db, feed, person) -> None:
    worker = person("grid_worker")
    issue = resolve_on_time(feed, worker.id, difficulty=4)
    feed("issue.rated", issue.rated("unsatisfied", rated_at=at("2026-11-11T02:00:00Z")))
    feed("issue.reopened", issue.reopened("unsatisfied"), at=at("2026-11-11T02:00:01Z"))

    assert [(e.rule_code, e.points) for e in entries(db, worker.id)] == [
        ("resolved_on_time", 4),
        ("rating_unsatisfied", -1),
        ("reopen_clawback", -4),
    ]
    row = total(db, worker.id, "month:2026-11")
    assert (row.points, row.rated, row.satisfied, row.reopened) == (-1, 1, 0, 1)


def test_a_resolution_after_a_reopen_earns_against_its_new_deadline(db, feed, person) -> None:
    worker = person("grid_worker")
    issue = resolve_on_time(feed, worker.id, difficulty=2)
    feed("issue.reopened", issue.reopened("admin"), at=at("2026-11-11T00:00:00Z"))
    new_due = at("2026-11-13T00:00:00Z")
    feed(
        "issue.resolved",
        issue.resolved(
            worker.id, resolved_at=at("2026-11-12T00:00:00Z"), due_at=new_due, difficulty=2
        ),
    )

    assert [(e.rule_code, e.points) for e in entries(db, worker.id)] == [
        ("resolved_on_time", 2),
        ("reopen_clawback", -2),
        ("resolved_on_time", 2),
    ]
    assert total(db, worker.id, "month:2026-11").points == 2


def test_ratings_and_callbacks_score_the_resolver(db, feed, person) -> None:
    worker = person("grid_worker")
    first = resolve_on_time(feed, worker.id, difficulty=1)
    feed("issue.rated", first.rated("satisfied", rated_at=at("2026-11-11T00:00:00Z")))
    second = resolve_on_time(feed, worker.id, difficulty=1)
    feed("issue.rated", second.rated("basically_satisfied", rated_at=at("2026-11-11T00:00:00Z")))
    feed("issue.callback_recorded", second.callback(passed=False), at=at("2026-11-12T00:00:00Z"))

    row = total(db, worker.id, "month:2026-11")
    # 1 + 1 (on time) + 1 (满意) + 0 (基本满意) - 2 (failed callback) = 1
    assert (row.points, row.rated, row.satisfied, row.callbacks, row.callbacks_passed) == (
        1,
        2,
        2,
        1,
        0,
    )


def test_a_resolution_at_shanghai_midnight_counts_in_the_new_month(db, feed, person) -> None:
    worker = person("grid_worker")
    resolve_on_time(feed, worker.id, difficulty=2, resolved="2026-11-30T15:59:59Z")
    resolve_on_time(feed, worker.id, difficulty=3, resolved="2026-11-30T16:00:00Z")

    assert [e.period_month for e in entries(db, worker.id)] == ["2026-11", "2026-12"]
    assert total(db, worker.id, "month:2026-11").points == 2
    assert total(db, worker.id, "month:2026-12").points == 3
    assert total(db, worker.id, "quarter:2026-Q4").points == 5


def test_a_rule_change_applies_from_its_date_only(client, db, feed, person) -> None:
    admin, worker = person("admin"), person("grid_worker")
    today = local_day(utcnow())
    start = today + timedelta(days=3)
    response = client.put(
        "/api/v1/rules/resolved_on_time",
        json={"points": 2, "effective_from": start.isoformat(), "note": "加倍"},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.json
    assert response.json["versions"][-1]["changed_by"] == str(admin.id)
    # The day before the new version (noon in Shanghai) and its first day.
    before = f"{(start - timedelta(days=1)).isoformat()}T04:00:00Z"
    after = f"{start.isoformat()}T04:00:00Z"
    resolve_on_time(feed, worker.id, difficulty=3, resolved=before)
    resolve_on_time(feed, worker.id, difficulty=3, resolved=after)

    assert [(e.points, e.rule_version) for e in entries(db, worker.id)] == [(3, 0), (6, 1)]


def test_a_rule_cannot_be_changed_for_a_day_already_scored(client, person) -> None:
    admin = person("admin")
    response = client.put(
        "/api/v1/rules/resolved_on_time",
        json={"points": 2, "effective_from": utcnow().date().isoformat()},
        headers=admin.headers,
    )
    assert response.status_code == 422
    assert response.json["error"]["code"] == "effective_from_past"


def test_only_admins_change_rules_and_staff_read_them(client, person) -> None:
    worker, resident = person("grid_worker"), person("resident")
    assert (
        client.put(
            "/api/v1/rules/callback_failed", json={"points": -3}, headers=worker.headers
        ).status_code
        == 403
    )
    listed = client.get("/api/v1/rules", headers=worker.headers)
    assert listed.status_code == 200
    assert {r["code"] for r in listed.json} >= {"resolved_on_time", "callback_failed"}
    assert client.get("/api/v1/rules", headers=resident.headers).status_code == 403


def test_an_older_account_revision_does_not_overwrite_a_newer_one(db, feed) -> None:
    from scoring.models import Person

    user = uuid.uuid4()
    base = {"user_id": str(user), "roles": ["grid_worker"], "active": True}
    feed("account.upserted", {**base, "name": "新名字", "revision": 3})
    feed("account.upserted", {**base, "name": "旧名字", "revision": 2})
    with db.transaction() as session:
        assert session.get(Person, user).name == "新名字"


def test_a_worker_first_named_by_an_issue_event_is_not_refused_at_login(
    client, feed, issuer
) -> None:
    worker = uuid.uuid4()
    resolve_on_time(feed, worker, difficulty=1)  # a placeholder person, no account event yet
    token, _ = issuer.issue(worker, ["grid_worker"], "新网格员")
    response = client.get("/api/v1/points/mine", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json["items"][0]["points"] == 1


def test_a_run_of_resolutions_applied_together_scores_as_one_at_a_time(db, feed, person) -> None:
    """The consumer hands ``issue.resolved`` runs to the handler together (``batched``): the
    ledger, the four totals, the outbox and the resolutions are what one-by-one would give."""
    from scoring.handlers import handle_issue_resolved
    from shared.testing import envelope

    workers = [person("grid_worker", name=f"网格员{k}").id for k in range(3)]
    late = person("grid_worker", name="网格员迟").id  # never heard of before: a placeholder
    resolved = "2026-11-10T02:00:00Z"
    due = at(resolved) + timedelta(hours=2)
    issues = [Dispatch() for _ in range(7)]
    for k, issue in enumerate(issues):
        feed("issue.assigned", issue.assigned(workers[k % 3], difficulty=k % 5 + 1, due_at=due))
    run = [
        envelope(
            "issue.resolved",
            issue.resolved(
                workers[k % 3], resolved_at=at(resolved), due_at=due, difficulty=k % 5 + 1
            ),
        )
        for k, issue in enumerate(issues)
    ]
    run.append(  # late (an hour after its deadline): nothing earned, counted as resolved
        envelope(
            "issue.resolved",
            Dispatch().resolved(
                late, resolved_at=due + timedelta(hours=1), due_at=due, difficulty=3
            ),
        )
    )
    with db.transaction() as session:
        handle_issue_resolved.apply_many(session, run)
    with db.transaction() as session:  # the same run again (a second guard): nothing more
        handle_issue_resolved.apply_many(session, run)

    expected = {workers[0]: 1 + 4 + 2, workers[1]: 2 + 5, workers[2]: 3 + 1, late: 0}
    for worker, points in expected.items():
        made = entries(db, worker)
        assert sum(entry.points for entry in made) == points
        for period in ("month:2026-11", "quarter:2026-Q4", "year:2026", "all"):
            row = total(db, worker, period)
            assert (row.points, row.entries) == (points, len(made))
    assert len(entries(db, late)) == 1
    ledger = {entry.id for worker in expected for entry in entries(db, worker)}
    assert len(ledger) == 8
    assert {
        uuid.UUID(event["data"]["entry_id"]) for event in outbox(db, "points.awarded")
    } == ledger
    with db.transaction() as session:
        resolutions = session.execute(
            sa.text("SELECT on_time, points FROM resolutions ORDER BY on_time, points")
        ).all()
    assert [tuple(r) for r in resolutions] == [
        (False, 0),
        *sorted((True, k % 5 + 1) for k in range(7)),
    ]


def test_the_awards_of_a_run_are_published_in_the_order_they_were_made(db, feed, person) -> None:
    """``emit_many`` stamps each outbox row a microsecond after the one before: the relay
    publishes by ``created_at``, so a worker's awards reach notify in the order they were made."""
    from scoring.handlers import handle_issue_resolved
    from shared.testing import envelope

    worker = person("grid_worker", name="网格员序").id
    resolved = "2026-11-10T02:00:00Z"
    due = at(resolved) + timedelta(hours=2)
    issues = [Dispatch() for _ in range(5)]
    run = [
        envelope(
            "issue.resolved",
            issue.resolved(worker, resolved_at=at(resolved), due_at=due, difficulty=k + 1),
        )
        for k, issue in enumerate(issues)
    ]
    with db.transaction() as session:
        handle_issue_resolved.apply_many(session, run)

    table = db.metadata.tables["outbox"]
    with db.engine.connect() as conn:  # the relay's order (shared.relay.OutboxRelay.run_once)
        awarded = conn.execute(
            sa.select(table.c.envelope)
            .where(table.c.event_type == "points.awarded")
            .order_by(table.c.created_at, table.c.id)
        ).scalars()
        published = [event["data"]["issue_id"] for event in awarded]
    assert published == [str(issue.issue_id) for issue in issues]
