"""``python -m intake seed-history``: past months of demo reports, through report_issue."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import sqlalchemy as sa

from intake import domain
from intake.commands import COMMANDS, month_start
from intake.models import Issue
from shared.events import parse_envelope


def run_command(name: str, argv: list[str], settings) -> int:
    command = COMMANDS[name]
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv), settings)


def _months(moments) -> set[str]:
    return {m.astimezone(domain.SHANGHAI).strftime("%Y-%m") for m in moments}


def test_seed_history_files_past_reports_with_their_events_once(settings, db, outbox_rows, capsys):
    assert run_command("seed-demo", [], settings) == 0
    now = datetime.now(UTC)
    wanted = {month_start(now, back).astimezone(UTC) for back in (1, 2, 3)}

    assert run_command("seed-history", ["--months", "3", "--per-month", "4"], settings) == 0

    with db.transaction() as session:
        issues = list(session.scalars(sa.select(Issue)))
    assert len(issues) == 12
    assert all(i.reported_at < month_start(now) for i in issues)
    assert _months(i.reported_at for i in issues) == _months(wanted)
    events = outbox_rows("issue.reported")
    assert len(events) == 12
    reported = {
        datetime.fromisoformat(parse_envelope(e["envelope"]).data["reported_at"]) for e in events
    }
    assert reported == {i.reported_at for i in issues}
    # The ticket number carries the (past) Shanghai day of the report.
    for issue in issues:
        day = issue.reported_at.astimezone(domain.SHANGHAI)
        assert issue.ticket_no.split("-")[1] == day.strftime("%Y%m%d")
    assert "12" in capsys.readouterr().out

    assert run_command("seed-history", ["--months", "3", "--per-month", "4"], settings) == 0
    assert len(outbox_rows("issue.reported")) == 12
    assert "nothing changed" in capsys.readouterr().out


def test_seed_history_refuses_to_run_in_production(settings, db, capsys):
    run_command("seed-demo", [], settings)
    production = settings.model_copy(update={"app_env": "production", "wechat_mode": "real"})

    code = run_command("seed-history", [], production)

    assert code == 2
    err = capsys.readouterr().err
    assert "生产环境不能写入演示数据" in err and "APP_ENV=production" in err
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Issue)).scalar_one() == 0
