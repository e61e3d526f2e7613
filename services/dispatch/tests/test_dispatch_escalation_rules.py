"""Escalation and reopen rules from the article, over HTTP on a real PostgreSQL database: one
level at a time (only an admin skips a level or refers to the county, with a reason), each level's
holder takes the work with that level's own time limit, and a reopen restarts the right clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dispatch_helpers import assign, envelope, outbox, post

from dispatch import scheduler
from dispatch.handlers import handle_issue_rated
from dispatch.models import LedgerEntry
from dispatch.settings import DispatchSettings


def escalate(client, issue_id, who, to_level, reason="村里解决不了", **extra):
    body = {"to_level": to_level, "reason": reason, **extra}
    return post(client, f"/api/v1/issues/{issue_id}/escalate", who, body)


def working(client, town, report, **assign_extra):
    """A reported issue, assigned to 网格员刘 in 第一网格 and started."""
    issue_id = report()
    assert assign(client, issue_id, town.admin, town.worker1, **assign_extra).status_code == 200
    assert post(client, f"/api/v1/issues/{issue_id}/start", town.worker1).status_code == 200
    return issue_id


def read(client, town, issue_id):
    return client.get(f"/api/v1/issues/{issue_id}", headers=town.admin.headers).json


def due_of(answer) -> datetime:
    return datetime.fromisoformat(answer["due_at"])


def close_to(moment: datetime, expected: datetime) -> bool:
    return abs(moment - expected) < timedelta(minutes=2)


def ledger_entry(db, issue_id) -> LedgerEntry | None:
    with db.transaction() as session:
        entry = session.query(LedgerEntry).filter_by(issue_id=issue_id).one_or_none()
        if entry is not None:
            session.expunge(entry)
        return entry


def test_a_grid_worker_cannot_send_an_issue_from_the_grid_straight_to_the_county_ledger(
    client, db, town, report
):
    issue_id = working(client, town, report)
    to_county = escalate(
        client, issue_id, town.worker1, "county", "报县里", department=str(town.department)
    )
    assert to_county.status_code == 403
    assert to_county.json["error"]["code"] == "level_skip"
    assert "逐级" in to_county.json["error"]["message"]
    to_area = escalate(client, issue_id, town.worker1, "area_leader")
    assert to_area.status_code == 403 and to_area.json["error"]["code"] == "level_skip"
    assert read(client, town, issue_id)["level"] == "grid"
    assert ledger_entry(db, issue_id) is None
    assert outbox(db, "issue.escalated") == []

    assert escalate(client, issue_id, town.worker1, "township").status_code == 200


def test_the_area_leader_climbs_to_their_level_but_only_an_admin_refers_to_the_county(
    client, db, town, report
):
    issue_id = working(client, town, report)
    assert escalate(client, issue_id, town.worker1, "township").status_code == 200
    assert escalate(client, issue_id, town.area_leader, "area_leader").status_code == 200
    refused = escalate(
        client, issue_id, town.area_leader, "county", "需县里", department=str(town.department)
    )
    assert refused.status_code == 403 and refused.json["error"]["code"] == "county_admin_only"
    assert ledger_entry(db, issue_id) is None


def test_an_admin_may_skip_to_the_county_with_a_reason_and_the_history_says_it_skipped(
    client, db, town, report
):
    issue_id = working(client, town, report)
    no_reason = escalate(
        client, issue_id, town.admin, "county", " ", department=str(town.department)
    )
    assert no_reason.status_code == 422
    skipped = escalate(
        client,
        issue_id,
        town.admin,
        "county",
        "水源地污染，村乡两级无法处理",
        department=str(town.department),
    )
    assert skipped.status_code == 200, skipped.json
    assert skipped.json["level"] == "county"
    assert ledger_entry(db, issue_id).status == "referred"
    steps = client.get(f"/api/v1/issues/{issue_id}/history", headers=town.admin.headers).json
    step = steps[-1]
    assert (step["from_level"], step["to_level"]) == ("grid", "county")
    assert step["details"]["skipped"] is True and step["note"] == "水源地污染，村乡两级无法处理"


def test_each_level_hands_the_work_to_its_holder_with_that_levels_time_limit(
    client, db, town, report, settings
):
    issue_id = working(client, town, report, due_in_hours=2)
    limits = settings.level_due_hours

    start = datetime.now(UTC)
    township = escalate(client, issue_id, town.worker1, "township")
    assert township.status_code == 200, township.json
    # The township admins' pool holds it (no one admin); the grid worker stays on the case.
    assert township.json["handler_id"] is None
    assert township.json["assignee_id"] == str(town.worker1.id)
    assert close_to(due_of(township.json), start + timedelta(hours=limits["township"]))
    event = outbox(db, "issue.escalated")[-1]["data"]
    assert close_to(datetime.fromisoformat(event["due_at"]), due_of(township.json))

    area = escalate(client, issue_id, town.admin, "area_leader", "需包片领导协调")
    assert area.json["handler_id"] == str(town.area_leader.id)
    assert area.json["assignee_id"] == str(town.worker1.id)
    assert close_to(due_of(area.json), start + timedelta(hours=limits["area_leader"]))
    followed = client.get("/api/v1/tasks/mine?following=true", headers=town.area_leader.headers)
    assert [i["id"] for i in followed.json["items"]] == [str(issue_id)]
    # The area leader, now holding it, may record progress and resolve it.
    note = post(client, f"/api/v1/issues/{issue_id}/notes", town.area_leader, {"text": "已协调"})
    assert note.status_code == 201

    county = escalate(
        client, issue_id, town.admin, "county", "需县水利局", department=str(town.department)
    )
    assert county.json["handler_id"] is None
    assert county.json["department_id"] == str(town.department)
    assert county.json["department_name"] == "县水利局"
    assert county.json["assignee_id"] == str(town.worker1.id)
    assert close_to(due_of(county.json), start + timedelta(hours=limits["county"]))
    event = outbox(db, "issue.escalated")[-1]["data"]
    assert event["department_name"] == "县水利局" and event["county_department"] == "县水利局"
    assert event["snapshot"]["handler_name"] == "县水利局"


def test_an_admin_escalating_to_the_township_holds_it_himself(client, town, report):
    issue_id = working(client, town, report)
    answer = escalate(client, issue_id, town.admin, "township", "乡里统一协调")
    assert answer.json["handler_id"] == str(town.admin.id)


def test_an_escalated_issue_is_not_overdue_against_its_old_deadline(
    client, db, town, report, settings
):
    issue_id = working(client, town, report, due_in_hours=1)
    now = datetime.now(UTC)
    late = now + timedelta(hours=2)
    assert scheduler.run_once(db, settings, late).overdue == 1
    assert read(client, town, issue_id)["overdue"] is True

    assert escalate(client, issue_id, town.worker1, "township", "超期未能解决").status_code == 200
    answer = read(client, town, issue_id)
    assert answer["overdue"] is False
    flagged = client.get("/api/v1/queue?overdue=true", headers=town.admin.headers).json["items"]
    assert flagged == []
    # The old deadline's grace passes: nothing is flagged or escalated again.
    report_ = scheduler.run_once(db, settings, late + timedelta(hours=settings.overdue_grace_hours))
    assert (report_.overdue, report_.escalated) == (0, 0)
    # The new deadline passes: flagged once against it.
    after_new = due_of(answer) + timedelta(minutes=5)
    assert scheduler.run_once(db, settings, after_new).overdue == 1
    overdue = outbox(db, "issue.overdue")[-1]["data"]
    assert close_to(datetime.fromisoformat(overdue["due_at"]), due_of(answer))


def test_the_schedulers_escalation_gives_the_new_level_its_own_time_limit(
    client, db, town, report, settings
):
    issue_id = working(client, town, report, due_in_hours=1)
    now = datetime.now(UTC)
    scheduler.run_once(db, settings, now + timedelta(hours=2))
    after_grace = now + timedelta(hours=1 + settings.overdue_grace_hours + 1)
    assert scheduler.run_once(db, settings, after_grace).escalated == 1
    answer = read(client, town, issue_id)
    assert answer["level"] == "township" and answer["overdue"] is False
    expected = after_grace + timedelta(hours=settings.level_due_hours["township"])
    assert close_to(due_of(answer), expected)
    assert answer["assignee_id"] == str(town.worker1.id)


def rate(db, issue_id, rating):
    with db.transaction() as session:
        handle_issue_rated(
            session, envelope("issue.rated", {"issue_id": str(issue_id), "rating": rating})
        )


def county_item_resolved(client, db, town, report):
    issue_id = working(client, town, report)
    referred = escalate(
        client, issue_id, town.admin, "county", "需县水利局", department=str(town.department)
    )
    assert referred.status_code == 200
    resolved = post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "已修"})
    assert resolved.status_code == 200
    assert ledger_entry(db, issue_id).status == "solved"
    return issue_id


@pytest.mark.parametrize("reason", ["unsatisfied", "callback_failed", "admin"])
def test_a_reopened_county_item_puts_its_ledger_entry_back_in_progress_with_the_countys_clock(
    client, db, town, report, settings, reason
):
    issue_id = county_item_resolved(client, db, town, report)
    start = datetime.now(UTC)
    if reason == "unsatisfied":
        rate(db, issue_id, "unsatisfied")
    elif reason == "callback_failed":
        rate(db, issue_id, "unsatisfied")
        post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
        post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "再修"})
        rate(db, issue_id, "satisfied")
        assert ledger_entry(db, issue_id).status == "solved"
        failed = post(
            client,
            f"/api/v1/issues/{issue_id}/callbacks",
            town.supervisor,
            {"method": "visit", "lawful": True, "implemented": False, "accepted": False},
        )
        assert failed.status_code == 201
    else:
        reopened = post(
            client, f"/api/v1/issues/{issue_id}/reopen", town.admin, {"reason": "群众再次反映"}
        )
        assert reopened.status_code == 200, reopened.json
    answer = read(client, town, issue_id)
    assert answer["state"] == "reopened" and answer["level"] == "county"
    assert outbox(db, "issue.reopened")[-1]["data"]["reason"] == reason
    entry = ledger_entry(db, issue_id)
    assert entry.status == "in_progress"
    assert "重新办理" in entry.progress[-1].text
    assert close_to(due_of(answer), start + timedelta(hours=settings.level_due_hours["county"]))
    ledger = client.get("/api/v1/ledger", headers=town.admin.headers).json["items"]
    assert ledger[0]["status"] == "in_progress"


def test_a_reopen_at_the_grid_level_keeps_reopen_due_hours(client, db, town, report, settings):
    issue_id = working(client, town, report)
    post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "已修"})
    start = datetime.now(UTC)
    rate(db, issue_id, "unsatisfied")
    answer = read(client, town, issue_id)
    assert answer["level"] == "grid"
    assert close_to(due_of(answer), start + timedelta(hours=settings.reopen_due_hours))


def test_a_reopen_at_the_area_leader_level_gets_that_levels_time_limit(
    client, db, town, report, settings
):
    issue_id = working(client, town, report)
    escalate(client, issue_id, town.worker1, "township")
    escalate(client, issue_id, town.admin, "area_leader", "需协调")
    post(client, f"/api/v1/issues/{issue_id}/resolve", town.area_leader, {"note": "已协调解决"})
    start = datetime.now(UTC)
    reopened = post(client, f"/api/v1/issues/{issue_id}/reopen", town.admin, {"reason": "未解决"})
    assert reopened.status_code == 200
    hours = settings.level_due_hours["area_leader"]
    assert close_to(due_of(reopened.json), start + timedelta(hours=hours))


def test_level_time_limits_are_read_from_level_due_hours(monkeypatch):
    monkeypatch.setenv("LEVEL_DUE_HOURS", '{"township": 24}')
    settings = DispatchSettings()
    assert settings.level_due_hours == {"township": 24, "area_leader": 120, "county": 240}
    assert settings.level_hours("township", "water_power") == 24
    assert settings.level_hours("grid", "water_power") == settings.due_hours("water_power")
    assert settings.reopen_hours("grid") == settings.reopen_due_hours
    assert settings.reopen_hours("county") == 240
    monkeypatch.setenv("LEVEL_DUE_HOURS", '{"village": 24}')
    with pytest.raises(ValueError, match="unknown levels"):
        DispatchSettings()
