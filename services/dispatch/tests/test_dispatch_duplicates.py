"""Likely duplicate reports: the admin sees them in the queue and per issue, and a rejection as a
duplicate names the original (validated) and tells intake which one it is."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dispatch_helpers import assign, envelope, outbox, post, report_data, settings_with

from dispatch import domain
from dispatch.app import create_app
from dispatch.handlers import handle_issue_rated, handle_issue_reported

LAT, LON = 36.2, 115.1
METRE = 1 / 111_195  # one metre of latitude, in degrees
NOW = datetime.now(UTC)


@pytest.fixture
def reported(db, town):
    """``reported(ticket_no, lat=..., lon=..., hours_ago=..., ...)``: an ``issue.reported`` through
    the real handler, at a chosen place and time; returns the id."""

    def make(
        ticket_no: str,
        *,
        lat: float | None = LAT,
        lon: float | None = LON,
        hours_ago: float = 1,
        village_id: uuid.UUID | None = None,
        category: str = "water_power",
    ) -> uuid.UUID:
        data: dict[str, Any] = report_data(
            village_id or town.village1,
            category=category,
            reporter_id=uuid.uuid4(),
            reported_at=NOW - timedelta(hours=hours_ago),
        )
        data.update(ticket_no=ticket_no, lat=lat, lon=lon)
        with db.transaction() as session:
            handle_issue_reported(session, envelope("issue.reported", data))
        return uuid.UUID(data["issue_id"])

    return make


def _queue_item(client, who, issue_id) -> dict:
    items = client.get("/api/v1/queue?limit=200", headers=who.headers).json["items"]
    return next(i for i in items if i["id"] == str(issue_id))


def test_the_admins_queue_shows_open_reports_of_the_same_village_and_category_close_by(
    client, town, reported
):
    first = reported("SKJ-1", hours_ago=5)
    near = reported("SKJ-2", lat=LAT + 50 * METRE, hours_ago=4)
    no_place = reported("SKJ-3", lat=None, lon=None, hours_ago=3)
    reported("SKJ-4", lat=LAT + 1000 * METRE, hours_ago=4)  # a kilometre away
    reported("SKJ-5", category="road_traffic")  # another kind of problem
    reported("SKJ-6", village_id=town.village2)  # another village
    reported("SKJ-7", hours_ago=5 + 73)  # more than 72 hours earlier

    item = _queue_item(client, town.admin, first)
    found = item["possible_duplicates"]
    assert [d["ticket_no"] for d in found] == ["SKJ-2", "SKJ-3"]  # nearest first, unplaced last
    assert found[0]["id"] == str(near) and found[0]["state"] == "reported"
    assert 49 <= found[0]["distance_m"] <= 51
    assert found[0]["state_label"] == "待交办" and found[0]["level"] == "grid"
    assert found[0]["reported_at"].endswith("+08:00")
    assert found[1]["id"] == str(no_place) and found[1]["distance_m"] is None
    # Without coordinates, village, category and time decide: every near-in-time report matches.
    unplaced = _queue_item(client, town.admin, no_place)["possible_duplicates"]
    assert {d["ticket_no"] for d in unplaced} == {"SKJ-1", "SKJ-2", "SKJ-4"}


def test_closed_and_rejected_reports_are_not_offered_as_likely_duplicates(
    client, db, town, reported
):
    first = reported("SKJ-1", hours_ago=5)
    done = reported("SKJ-2", hours_ago=4)
    thrown_out = reported("SKJ-3", hours_ago=3)
    assign(client, done, town.admin, town.worker1)
    post(client, f"/api/v1/issues/{done}/start", town.worker1)
    post(client, f"/api/v1/issues/{done}/resolve", town.worker1, {"note": "已修好。"})
    with db.transaction() as session:
        handle_issue_rated(
            session, envelope("issue.rated", {"issue_id": str(done), "rating": "satisfied"})
        )
    rejected = post(client, f"/api/v1/issues/{thrown_out}/reject", town.admin, {"reason": "无效"})
    assert rejected.status_code == 200, rejected.json
    assert _queue_item(client, town.admin, first)["possible_duplicates"] == []


def test_the_duplicate_radius_and_window_are_settings(database_url, jwt_keys, town, reported):
    first = reported("SKJ-1", hours_ago=10)
    reported("SKJ-2", lat=LAT + 1000 * METRE, hours_ago=9)  # a kilometre away
    reported("SKJ-3", hours_ago=1)  # nine hours later
    app = create_app(
        settings_with(
            database_url, jwt_keys, duplicate_radius_meters=2000, duplicate_window_hours=2
        )
    )
    try:
        item = _queue_item(app.test_client(), town.admin, first)
        assert [d["ticket_no"] for d in item["possible_duplicates"]] == ["SKJ-2"]
    finally:
        app.extensions["db"].dispose()


def test_likely_duplicates_of_one_issue_are_for_those_who_may_assign_it(client, town, reported):
    first = reported("SKJ-1", hours_ago=2)
    reported("SKJ-2", lat=LAT + 20 * METRE)
    path = f"/api/v1/issues/{first}/duplicates"
    answer = client.get(path, headers=town.admin.headers)
    assert answer.status_code == 200, answer.json
    assert [(d["ticket_no"], d["distance_m"]) for d in answer.json] == [("SKJ-2", 20)]
    # The grid leader of the village sees the village's unassigned reports.
    assert [d["ticket_no"] for d in client.get(path, headers=town.leader1.headers).json] == [
        "SKJ-2"
    ]
    assert client.get(path, headers=town.leader2.headers).status_code == 404  # another village
    for who in (town.worker1, town.resident, town.supervisor):
        assert client.get(path, headers=who.headers).status_code == 403
    assert client.get(path).status_code == 401
    missing = client.get(f"/api/v1/issues/{uuid.uuid4()}/duplicates", headers=town.admin.headers)
    assert missing.status_code == 404


def test_a_rejection_as_duplicate_names_the_original_in_the_issue_history_and_event(
    client, db, town, reported
):
    original = reported("SKJ-20261201-0001", hours_ago=3)
    copy = reported("SKJ-20261201-0002")
    answer = post(
        client,
        f"/api/v1/issues/{copy}/reject",
        town.admin,
        {"reason": "重复反映，已在办理", "duplicate_of": str(original)},
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["state"] == "rejected"
    assert answer.json["duplicate_of_id"] == str(original)
    event = outbox(db, "issue.rejected")[-1]["data"]
    assert event["issue_id"] == str(copy)
    assert event["duplicate_of"] == str(original)
    assert event["duplicate_of_ticket_no"] == "SKJ-20261201-0001"
    assert event["snapshot"]["reject_reason"] == "重复反映，已在办理"
    step = client.get(f"/api/v1/issues/{copy}/history", headers=town.admin.headers).json[-1]
    assert step["action"] == "reject"
    assert step["details"]["duplicate_of"] == str(original)
    assert step["details"]["duplicate_of_ticket_no"] == "SKJ-20261201-0001"
    # A plain rejection carries no link.
    plain = reported("SKJ-20261201-0003")
    post(client, f"/api/v1/issues/{plain}/reject", town.admin, {"reason": "信息不全"})
    last = outbox(db, "issue.rejected")[-1]["data"]
    assert last["duplicate_of"] is None and last["duplicate_of_ticket_no"] is None


def test_a_done_original_may_be_named_too(client, db, town, reported):
    original = reported("SKJ-1", hours_ago=3)
    assign(client, original, town.admin, town.worker1)
    post(client, f"/api/v1/issues/{original}/start", town.worker1)
    post(client, f"/api/v1/issues/{original}/resolve", town.worker1, {"note": "已修好。"})
    copy = reported("SKJ-2")
    answer = post(
        client,
        f"/api/v1/issues/{copy}/reject",
        town.admin,
        {"reason": "已办结的同一问题", "duplicate_of": str(original)},
    )
    assert answer.status_code == 200, answer.json


def test_a_duplicate_must_name_another_live_report_of_its_village(client, town, reported):
    copy = reported("SKJ-1")
    elsewhere = reported("SKJ-2", village_id=town.village2)
    thrown_out = reported("SKJ-3")
    post(client, f"/api/v1/issues/{thrown_out}/reject", town.admin, {"reason": "无效反映"})

    def reject_as_duplicate_of(original) -> Any:
        return post(
            client,
            f"/api/v1/issues/{copy}/reject",
            town.admin,
            {"reason": "重复反映", "duplicate_of": str(original)},
        )

    cases = {
        copy: "duplicate_of_self",
        elsewhere: "duplicate_of_other_village",
        thrown_out: "duplicate_of_rejected",
        uuid.uuid4(): "duplicate_of_not_found",
    }
    for original, code in cases.items():
        answer = reject_as_duplicate_of(original)
        assert answer.status_code == 422, (code, answer.json)
        assert answer.json["error"]["code"] == code
        assert any("\u4e00" <= ch <= "\u9fff" for ch in answer.json["error"]["message"])
    bad = post(
        client,
        f"/api/v1/issues/{copy}/reject",
        town.admin,
        {"reason": "重复反映", "duplicate_of": "not-a-uuid"},
    )
    assert bad.status_code == 422
    view = client.get(f"/api/v1/issues/{copy}", headers=town.admin.headers).json
    assert view["state"] == "reported" and view["duplicate_of_id"] is None


def test_the_duplicate_rule_alone():
    rule = domain.DuplicateRule(radius_m=200, window=timedelta(hours=72))

    class Item:
        def __init__(self, **kw: Any) -> None:
            self.id = uuid.uuid4()
            self.village_id = kw.get("village_id", "v1")
            self.category = kw.get("category", "water_power")
            self.reported_at = kw.get("reported_at", NOW)
            self.lat = kw.get("lat", LAT)
            self.lon = kw.get("lon", LON)

    item = Item()
    assert not rule.matches(item, item)
    assert rule.matches(item, Item(lat=LAT + 199 * METRE))
    assert not rule.matches(item, Item(lat=LAT + 201 * METRE))
    assert rule.matches(item, Item(lat=None, lon=None))
    assert rule.matches(item, Item(reported_at=NOW - timedelta(hours=72)))
    assert not rule.matches(item, Item(reported_at=NOW + timedelta(hours=72, seconds=1)))
    assert not rule.matches(item, Item(village_id="v2"))
    assert not rule.matches(item, Item(category="other"))
    assert round(domain.distance_m(LAT, LON, LAT, LON + 0.01)) == 897  # 0.01° east at 36.2° N
