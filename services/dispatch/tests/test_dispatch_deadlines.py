"""Deadlines on a real PostgreSQL database: reminder → overdue → escalation → county ledger →
export, the scheduler's once-only guarantee (also with two copies at once), auto-close and the
callback sample."""

from __future__ import annotations

import csv
import io
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from dispatch_helpers import assign, outbox, post, settings_with
from openpyxl import load_workbook

from dispatch import scheduler
from dispatch.app import make_database
from dispatch.models import DeadlineMark, Issue


def run(db, settings, now):
    return scheduler.run_once(db, settings, now)


def test_overdue_reminder_escalation_county_ledger_and_export(client, db, town, report, settings):
    issue_id = report(category="water_power")
    assert assign(client, issue_id, town.admin, town.worker1, due_in_hours=2).status_code == 200
    post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
    now = datetime.now(UTC)

    # Two hours left, reminders four hours ahead: one reminder, however often the scheduler runs.
    assert run(db, settings, now).reminded == 1
    assert run(db, settings, now + timedelta(minutes=5)).reminded == 0
    reminder = outbox(db, "issue.reminder_due")
    assert len(reminder) == 1 and reminder[0]["data"]["assignee_id"] == str(town.worker1.id)

    # Past the deadline: flagged once; the task list marks it.
    late = now + timedelta(hours=3)
    assert run(db, settings, late).overdue == 1
    assert run(db, settings, late + timedelta(minutes=1)).overdue == 0
    overdue = outbox(db, "issue.overdue")
    assert len(overdue) == 1
    assert overdue[0]["data"]["grid_leader_id"] == str(town.leader1.id)
    mine = client.get("/api/v1/tasks/mine", headers=town.worker1.headers).json["items"]
    assert mine[0]["overdue"] is True
    flagged = client.get("/api/v1/queue?overdue=true", headers=town.admin.headers).json["items"]
    assert [i["id"] for i in flagged] == [str(issue_id)]

    # After the grace period it climbs one level, once.
    after_grace = now + timedelta(hours=2 + settings.overdue_grace_hours + 1)
    assert run(db, settings, after_grace).escalated == 1
    assert run(db, settings, after_grace + timedelta(hours=30)).escalated == 0
    escalated = outbox(db, "issue.escalated")
    assert [e["data"]["to_level"] for e in escalated] == ["township"]
    assert escalated[0]["data"]["from_level"] == "grid"

    # The area leader takes it, calls a meeting, and it goes to the county.
    to_area = post(
        client,
        f"/api/v1/issues/{issue_id}/escalate",
        town.admin,
        {"to_level": "area_leader", "reason": "需包片领导协调"},
    )
    assert to_area.status_code == 200 and to_area.json["handler_id"] == str(town.area_leader.id)
    meeting = post(
        client,
        f"/api/v1/issues/{issue_id}/notes",
        town.area_leader,
        {"text": "已召开领导班子磋商会议，需县水利局支持。", "meeting_called": True},
    )
    assert meeting.status_code == 201 and meeting.json["details"]["meeting_called"] is True
    # Only an admin refers it to the county (the ledger), with a department and a reason.
    by_area_leader = post(
        client,
        f"/api/v1/issues/{issue_id}/escalate",
        town.area_leader,
        {"to_level": "county", "reason": "主管道老化，需更换", "department": str(town.department)},
    )
    assert by_area_leader.status_code == 403
    assert by_area_leader.json["error"]["code"] == "county_admin_only"
    no_department = post(
        client,
        f"/api/v1/issues/{issue_id}/escalate",
        town.admin,
        {"to_level": "county", "reason": "主管道老化，需更换"},
    )
    assert no_department.status_code == 422
    to_county = post(
        client,
        f"/api/v1/issues/{issue_id}/escalate",
        town.admin,
        {"to_level": "county", "reason": "主管道老化，需更换", "department": str(town.department)},
    )
    assert to_county.status_code == 200, to_county.json
    event = outbox(db, "issue.escalated")[-1]["data"]
    assert event["county_department"] == "县水利局" and event["ledger_no"].startswith("YN-")
    down = post(
        client,
        f"/api/v1/issues/{issue_id}/escalate",
        town.worker1,
        {"to_level": "township", "reason": "想降级"},
    )
    assert down.status_code == 403

    ledger = client.get("/api/v1/ledger", headers=town.supervisor.headers).json["items"]
    assert len(ledger) == 1
    entry = ledger[0]
    assert entry["department"] == "县水利局" and entry["status"] == "referred"
    assert entry["ledger_no"] == event["ledger_no"]
    progress = post(
        client,
        f"/api/v1/ledger/{entry['id']}/progress",
        town.admin,
        {"text": "县水利局已派人勘察。", "status": "in_progress"},
    )
    assert progress.status_code == 201, progress.json
    assert progress.json["status_label"] == "办理中"
    assert [p["text"] for p in progress.json["progress"]] == ["县水利局已派人勘察。"]

    csv_file = client.get("/api/v1/ledger/export?format=csv", headers=town.admin.headers)
    assert csv_file.status_code == 200 and csv_file.mimetype == "text/csv"
    text = csv_file.data.decode("utf-8")
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert rows[0][:3] == ["台账编号", "事项编号", "类别"]
    assert rows[1][0] == entry["ledger_no"] and rows[1][5] == "县水利局"
    assert rows[1][2] == "用水用电" and rows[1][8] == "办理中"
    referred_local = datetime.fromisoformat(entry["referred_at"]).strftime("%Y-%m-%d %H:%M")
    assert rows[1][6] == referred_local  # Asia/Shanghai, as the API shows it
    assert "县水利局已派人勘察。" in rows[1][10]

    xlsx = client.get("/api/v1/ledger/export?format=xlsx", headers=town.admin.headers)
    assert xlsx.status_code == 200
    sheet = load_workbook(io.BytesIO(xlsx.data)).active
    values = list(sheet.iter_rows(values_only=True))
    assert values[0][0] == "台账编号" and values[1][0] == entry["ledger_no"]
    assert values[1][6] == referred_local

    # Solved at last: the ledger item follows.
    post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "主管道已更换。"})
    solved = client.get("/api/v1/ledger", headers=town.admin.headers).json["items"][0]
    assert solved["status"] == "solved"


def test_an_overdue_event_is_sent_once_even_if_the_flag_is_lost(client, db, town, report, settings):
    issue_id = report()
    assign(client, issue_id, town.admin, town.worker1, due_in_hours=1)
    late = datetime.now(UTC) + timedelta(hours=2)
    assert run(db, settings, late).overdue == 1
    # A copy of the scheduler that read the row before the flag was set would try again:
    with db.transaction() as session:
        session.execute(sa.update(Issue).where(Issue.id == issue_id).values(overdue_at=None))
    assert run(db, settings, late).overdue == 0
    assert len(outbox(db, "issue.overdue")) == 1
    with db.transaction() as session:
        marks = session.scalars(
            sa.select(DeadlineMark.kind).where(DeadlineMark.issue_id == issue_id)
        )
        assert list(marks) == ["overdue"]  # no reminder: it was already late


def test_two_schedulers_at_once_send_each_overdue_event_once(
    client, town, report, database_url, jwt_keys
):
    settings = settings_with(database_url, jwt_keys, scheduler_batch_size=4)
    ids = [report() for _ in range(15)]
    for issue_id in ids:
        assert assign(client, issue_id, town.admin, town.worker1, due_in_hours=1).status_code == 200
    late = datetime.now(UTC) + timedelta(hours=2)
    barrier = threading.Barrier(2)
    reports: list[scheduler.SchedulerReport] = []

    def copy() -> None:
        own_db = make_database(settings)  # a separate process would have its own engine
        barrier.wait()
        reports.append(scheduler.run_once(own_db, settings, late))
        own_db.dispose()

    threads = [threading.Thread(target=copy) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.overdue for r in reports) == 15
    db = make_database(settings)
    events = outbox(db, "issue.overdue")
    db.dispose()
    assert sorted(e["data"]["issue_id"] for e in events) == sorted(str(i) for i in ids)


def test_a_resolved_issue_nobody_rates_closes_by_itself(client, db, town, report, settings):
    issue_id = report()
    assign(client, issue_id, town.admin, town.worker1)
    post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
    post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "已处理。"})
    soon = datetime.now(UTC) + timedelta(days=settings.auto_close_days - 1)
    assert run(db, settings, soon).closed == 0
    later = datetime.now(UTC) + timedelta(days=settings.auto_close_days + 1)
    assert run(db, settings, later).closed == 1
    closed = outbox(db, "issue.closed")
    assert len(closed) == 1 and closed[0]["data"]["rating"] is None
    assert closed[0]["data"]["auto"] is True
    history = client.get(f"/api/v1/issues/{issue_id}/history", headers=town.admin.headers).json
    assert history[-1]["action"] == "auto_close" and history[-1]["actor_name"] == "系统"


@pytest.mark.parametrize(("share", "pending"), [(0.0, False), (1.0, True)])
def test_the_scheduler_keeps_the_callback_sample_filled(
    client, town, report, database_url, jwt_keys, share, pending
):
    settings = settings_with(database_url, jwt_keys, callback_sample_share=share)
    db = make_database(settings)
    issue_id = report()
    assign(client, issue_id, town.admin, town.worker1)
    post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
    post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "已处理。"})
    later = datetime.now(UTC) + timedelta(days=30)
    result = run(db, settings, later)
    assert result.closed == 1 and result.sampled == int(pending)
    items = client.get("/api/v1/callbacks/pending", headers=town.supervisor.headers).json["items"]
    assert [i["id"] for i in items] == ([str(issue_id)] if pending else [])
    db.dispose()


def test_scheduler_command_runs_once(database_url, jwt_keys, capsys):
    from dispatch.commands import run_scheduler

    settings = settings_with(database_url, jwt_keys)
    args = type("Args", (), {"once": True})()
    assert run_scheduler(args, settings) == 0
    assert '"overdue": 0' in capsys.readouterr().out


def test_the_scheduler_stops_when_told(database_url, jwt_keys):
    settings = settings_with(database_url, jwt_keys, scheduler_interval_seconds=0.05)
    db = make_database(settings)
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run_scheduler, args=(settings, db, stop))
    thread.start()
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    db.dispose()
