"""The statistics' running aggregates (dispatch.aggregates) against a scan of the issues, and
``python -m dispatch rebuild-stats``, on a real PostgreSQL database."""

from __future__ import annotations

import argparse
import json
import random
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from dispatch_helpers import SEED, assign, envelope, load_seed_reports, post

from dispatch import aggregates, stats
from dispatch.commands import run_rebuild_stats
from dispatch.handlers import handle_issue_rated
from dispatch.models import Issue
from shared.contract import CATEGORIES


def all_filters(town) -> list[stats.StatsFilter]:
    return [
        stats.StatsFilter(),
        stats.StatsFilter(village_id=town.village1),
        stats.StatsFilter(village_id=town.village2),
        stats.StatsFilter(category="water_power"),
        stats.StatsFilter(category="road_traffic", village_id=town.village1),
    ]


def assert_same_as_scan(db, town) -> None:
    for now in (datetime.now(UTC), datetime.now(UTC) + timedelta(days=30)):
        with db.transaction() as session:
            for filters in all_filters(town):
                fast = stats.issue_stats(session, filters, now=now)
                slow = stats.issue_stats_scan(session, filters, now=now)
                assert fast == slow, filters
    with db.transaction() as session:
        assert aggregates.rebuild(session, fix=False) == []


def random_steps(client, db, town, report, rng: random.Random, count: int) -> None:
    """Reports in both villages and every category, then a random walk of real steps."""
    holders = {town.village1: town.worker1, town.village2: town.worker3}
    ids = []
    for n in range(count):
        village = rng.choice([town.village1, town.village2])
        reported_at = datetime.now(UTC) - timedelta(minutes=rng.randint(5, 60 * 24 * 20))
        issue_id = report(
            village_id=village, category=rng.choice(list(CATEGORIES)), reported_at=reported_at
        )
        ids.append((issue_id, holders[village]))
        if n % 7 == 0:
            assert_same_as_scan(db, town)
    for _ in range(count * 4):
        issue_id, worker = rng.choice(ids)
        step = rng.choice(["assign", "start", "resolve", "rate", "reject", "assign_late"])
        if step == "assign":
            assign(client, issue_id, town.admin, worker)
        elif step == "assign_late":
            assign(client, issue_id, town.admin, worker, due_in_hours=1)
        elif step == "start":
            post(client, f"/api/v1/issues/{issue_id}/start", worker)
        elif step == "resolve":
            post(client, f"/api/v1/issues/{issue_id}/start", worker)
            post(client, f"/api/v1/issues/{issue_id}/resolve", worker, {"note": "已处理。"})
        elif step == "reject":
            post(client, f"/api/v1/issues/{issue_id}/reject", town.admin, {"reason": "重复"})
        else:
            data = {
                "issue_id": str(issue_id),
                "rating": rng.choice(["satisfied", "basically_satisfied", "unsatisfied"]),
            }
            try:
                with db.transaction() as session:
                    handle_issue_rated(session, envelope("issue.rated", data))
            except Exception:  # noqa: BLE001 - a rating the state refuses changes nothing
                pass


def test_aggregate_statistics_equal_a_scan_over_a_random_mix_of_steps(client, db, town, report):
    random_steps(client, db, town, report, random.Random(11), 40)
    with db.transaction() as session:
        states = set(session.scalars(sa.select(Issue.state)))
    assert {"assigned", "in_progress", "resolved", "closed", "rejected"} <= states
    assert_same_as_scan(db, town)


def test_aggregate_statistics_equal_a_scan_after_bulk_writes_and_reproduce_the_seed(
    client, db, town
):
    """The seed loader writes with ``insert(Issue)`` rows and ``update(Issue)`` statements:
    those are counted too, and the 2,811 reports still give the seed article's figures."""
    load_seed_reports(db, town)
    assert_same_as_scan(db, town)
    answer = client.get("/api/v1/stats", headers=town.admin.headers).json
    assert answer["reports"] == sum(SEED.values())
    with db.transaction() as session:
        fast = stats.issue_stats(session, stats.StatsFilter())
    assert fast["time_to_resolve_hours"]["count"] > 2000
    assert fast["time_to_resolve_hours"]["median"] is not None


def test_a_change_rolled_back_in_a_savepoint_or_transaction_leaves_the_aggregates(db, town, report):
    issue_id = report()
    with db.transaction() as session:
        before = aggregates.stored(session)
    with db.transaction() as session:
        issue = session.get(Issue, issue_id)
        savepoint = session.begin_nested()
        issue.state, issue.resolved_at, issue.rating = "closed", datetime.now(UTC), "satisfied"
        session.flush()
        savepoint.rollback()
    session = db.session()
    try:
        session.begin()
        issue = session.get(Issue, issue_id)
        issue.state, issue.resolved_at = "resolved", datetime.now(UTC)
        session.flush()
        session.rollback()
    finally:
        session.close()
    with db.transaction() as session:
        assert aggregates.stored(session) == before
        assert aggregates.rebuild(session, fix=False) == []


def test_resolve_time_buckets_are_ordered_and_start_where_they_say():
    previous = -2
    for seconds in [*range(0, 300), *range(300, 10**7, 997), 2**40 + 5]:
        bucket = aggregates.bucket_of(seconds)
        assert bucket >= previous
        previous = bucket
        start = aggregates.bucket_start(bucket)
        assert start is not None and start <= seconds
        assert aggregates.bucket_of(start) == bucket
        assert start == 0 or aggregates.bucket_of(start - 1) < bucket
    assert aggregates.bucket_of(-5) == -1 and aggregates.bucket_start(-1) is None


def test_rebuild_stats_reports_a_drift_with_check_and_fixes_it_without(
    settings, db, town, report, capsys
):
    for category in ("water_power", "road_traffic", "other"):
        report(category=category)
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE issue_stats_counts SET n = n + 5 WHERE category = 'other'"))
        conn.execute(sa.text("DELETE FROM issue_stats_counts WHERE category = 'road_traffic'"))

    assert run_rebuild_stats(argparse.Namespace(check=True), settings) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(d["key"][1], d["column"], d["stored"], d["expected"]) for d in lines} == {
        ("other", "n", 6, 1),
        ("road_traffic", "n", 0, 1),
    }
    assert run_rebuild_stats(argparse.Namespace(check=True), settings) == 1  # --check wrote nothing

    assert run_rebuild_stats(argparse.Namespace(check=False), settings) == 1
    capsys.readouterr()
    assert run_rebuild_stats(argparse.Namespace(check=True), settings) == 0
    assert capsys.readouterr().out == ""
    with db.transaction() as session:
        assert aggregates.rebuild(session, fix=False) == []
