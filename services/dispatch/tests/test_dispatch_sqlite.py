"""The embedded default (SQLite file, no DATABASE_URL): the migrations apply and the paths that
differ from PostgreSQL (percentiles in Python, ON CONFLICT marks, no FOR UPDATE) work."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from dispatch_helpers import envelope, report_data, settings_with

from dispatch import public, scheduler, services, stats
from dispatch.app import make_database
from dispatch.handlers import handle_issue_reported
from dispatch.models import Issue, Staff
from shared.auth import Principal
from shared.migrations import upgrade


def test_the_embedded_sqlite_database_runs_the_life_cycle_stats_and_scheduler(tmp_path, jwt_keys):
    url = f"sqlite:///{tmp_path / 'dispatch.db'}"
    upgrade("dispatch", url)
    settings = settings_with(url, jwt_keys)
    db = make_database(settings)
    village, worker = uuid.uuid4(), uuid.uuid4()
    admin = Principal(id=uuid.uuid4(), roles=frozenset({"admin"}), name="管理员")
    start = datetime.now(UTC) - timedelta(days=2)
    with db.transaction() as session:
        session.add(Staff(id=worker, name="网格员", roles=["grid_worker"]))
        for k in range(4):
            data = report_data(village, reported_at=start + timedelta(minutes=k))
            handle_issue_reported(session, envelope("issue.reported", data))
    with db.transaction() as session:
        ids = list(session.scalars(sa.select(Issue.id).order_by(Issue.reported_at)))
        for hours, issue_id in zip((1, 2, 3), ids, strict=False):
            services.assign(
                session,
                settings,
                admin,
                issue_id,
                assignee_id=worker,
                difficulty=2,
                now=start + timedelta(minutes=5),
            )
            services.start(session, admin, issue_id, now=start + timedelta(minutes=6))
            services.resolve(
                session, admin, issue_id, note="好了", now=start + timedelta(hours=hours)
            )
        services.assign(
            session,
            settings,
            admin,
            ids[3],
            assignee_id=worker,
            difficulty=1,
            due_in_hours=1,
            now=start + timedelta(minutes=5),
        )
    with db.transaction() as session:
        result = stats.issue_stats(session, stats.StatsFilter())
    assert (result["reports"], result["completed"], result["completion_rate"]) == (4, 3, 75.0)
    assert result["time_to_resolve_hours"]["median"] == round(2 - 1 / 60, 2)
    first = scheduler.run_once(db, settings)
    assert first.overdue == 1 and first.escalated == 1 and first.closed == 0
    assert scheduler.run_once(db, settings).overdue == 0
    # Likely duplicates (a row-value IN) and the public figures work on SQLite too.
    with db.transaction() as session:
        data = report_data(village)
        handle_issue_reported(session, envelope("issue.reported", data))
        new = session.get(Issue, uuid.UUID(data["issue_id"]))
        found = services.likely_duplicates(session, settings, admin, [new])[new.id]
        assert [d["id"] for d in found] == [ids[3]]
        assert public.figures(session)["reports"] == 5
    db.dispose()
