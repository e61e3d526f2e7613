"""``python -m dispatch seed-history``: intake's past demo reports resolved with past times."""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime, timedelta

from dispatch_helpers import outbox, report_data

from dispatch import services
from dispatch.commands import COMMANDS, month_start
from dispatch.models import Issue


def run_command(name: str, argv: list[str], settings) -> int:
    command = COMMANDS[name]
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv), settings)


def past_reports(db, town, count: int) -> dict[uuid.UUID, datetime]:
    """``count`` reports received (services.receive_report) with reported_at in past months."""
    first = month_start(datetime.now(UTC))
    reported: dict[uuid.UUID, datetime] = {}
    with db.transaction() as session:
        for n in range(count):
            at = first - timedelta(days=35 * (n % 3) + 10, hours=n)
            data = report_data(town.village1, reporter_id=town.resident.id, reported_at=at)
            data.update(issue_id=uuid.UUID(data["issue_id"]), reported_at=at)
            services.receive_report(session, data)
            reported[data["issue_id"]] = at
    return reported


def test_seed_history_resolves_past_reports_with_past_times(settings, db, town, capsys):
    reported = past_reports(db, town, 7)
    current = datetime.now(UTC) - timedelta(minutes=5)
    with db.transaction() as session:  # a report of this month is left alone
        data = report_data(town.village1, reporter_id=town.resident.id, reported_at=current)
        services.receive_report(session, {**data, "reported_at": current})

    assert run_command("seed-history", ["--expect", "7", "--wait", "5"], settings) == 0

    resolved = [e["data"] for e in outbox(db, "issue.resolved")]
    assert len(resolved) == 7
    workers = {town.worker1.id, town.worker2.id}
    late = 0
    for data in resolved:
        at = reported[uuid.UUID(data["issue_id"])]
        resolved_at = datetime.fromisoformat(data["resolved_at"])
        assert resolved_at in (at + timedelta(hours=20), at + timedelta(hours=60))
        assert resolved_at < month_start(datetime.now(UTC))
        assert uuid.UUID(data["resolver_id"]) in workers
        assert 1 <= data["difficulty"] <= 5
        late += not data["on_time"]
    assert late == 1  # about one in six
    assigned = outbox(db, "issue.assigned")
    assert len(assigned) == 7
    assert {uuid.UUID(e["data"]["assigned_by"]) for e in assigned} <= {
        town.admin.id,
        town.admin2.id,
    }
    with db.transaction() as session:
        states = {i.id: i.state for i in session.query(Issue)}
    assert states[uuid.UUID(data["issue_id"])] == "resolved"
    assert list(states.values()).count("reported") == 1  # this month's

    # A second run changes nothing.
    assert run_command("seed-history", ["--expect", "7", "--wait", "5"], settings) == 0
    assert len(outbox(db, "issue.resolved")) == 7
    assert "nothing changed" in capsys.readouterr().out


def test_seed_history_times_out_clearly_without_the_reports(settings, db, town, capsys):
    past_reports(db, town, 2)

    code = run_command("seed-history", ["--expect", "5", "--wait", "0"], settings)

    assert code == 1
    assert "timed out" in capsys.readouterr().err
    assert outbox(db, "issue.resolved") == []


def test_seed_history_refuses_to_run_in_production(settings, db, town, capsys):
    past_reports(db, town, 2)
    production = settings.model_copy(update={"app_env": "production"})

    assert run_command("seed-history", ["--expect", "2"], production) == 2
    assert "APP_ENV=production" in capsys.readouterr().err
    assert outbox(db, "issue.assigned") == []
