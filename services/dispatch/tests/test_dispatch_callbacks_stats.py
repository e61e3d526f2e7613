"""Callbacks (回头看) and statistics through the API, on a real PostgreSQL database."""

from __future__ import annotations

from dispatch_helpers import SEED, assign, envelope, load_seed_reports, outbox, post

from dispatch import domain
from dispatch.handlers import handle_issue_rated


def close_after_unsatisfied(client, db, town, issue_id) -> None:
    assign(client, issue_id, town.admin, town.worker1)
    for rating in ("unsatisfied", "satisfied"):
        post(client, f"/api/v1/issues/{issue_id}/start", town.worker1)
        post(client, f"/api/v1/issues/{issue_id}/resolve", town.worker1, {"note": "已处理。"})
        data = {"issue_id": str(issue_id), "rating": rating}
        with db.transaction() as session:
            handle_issue_rated(session, envelope("issue.rated", data))


def test_a_failed_callback_reopens_the_issue(client, db, town, report):
    issue_id = report()
    close_after_unsatisfied(client, db, town, issue_id)
    pending = client.get("/api/v1/callbacks/pending", headers=town.supervisor.headers).json
    assert [i["id"] for i in pending["items"]] == [str(issue_id)]

    worker = post(
        client,
        f"/api/v1/issues/{issue_id}/callbacks",
        town.worker1,
        {"method": "phone", "lawful": True, "implemented": True, "accepted": True},
    )
    assert worker.status_code == 403
    failed = post(
        client,
        f"/api/v1/issues/{issue_id}/callbacks",
        town.supervisor,
        {
            "method": "visit",
            "lawful": True,
            "implemented": False,
            "accepted": False,
            "notes": "入户走访，水管仍漏水。",
        },
    )
    assert failed.status_code == 201, failed.json
    assert failed.json["passed"] is False
    issue = client.get(f"/api/v1/issues/{issue_id}", headers=town.admin.headers).json
    assert issue["state"] == "reopened" and issue["callback_status"] == "failed"
    assert issue["follower_id"] == str(town.area_leader.id)
    recorded = outbox(db, "issue.callback_recorded")[-1]["data"]
    assert recorded["method"] == "visit" and recorded["passed"] is False
    assert recorded["supervisor_id"] == str(town.supervisor.id)
    assert outbox(db, "issue.reopened")[-1]["data"]["reason"] == "callback_failed"
    assert (
        client.get("/api/v1/callbacks/pending", headers=town.supervisor.headers).json["items"] == []
    )
    again = post(
        client,
        f"/api/v1/issues/{issue_id}/callbacks",
        town.supervisor,
        {"method": "phone", "lawful": True, "implemented": True, "accepted": True},
    )
    assert again.status_code == 409


def test_a_passed_callback_leaves_the_issue_closed(client, db, town, report):
    issue_id = report()
    close_after_unsatisfied(client, db, town, issue_id)
    passed = post(
        client,
        f"/api/v1/issues/{issue_id}/callbacks",
        town.supervisor,
        {"method": "phone", "lawful": True, "implemented": True, "accepted": True},
    )
    assert passed.status_code == 201 and passed.json["passed"] is True
    issue = client.get(f"/api/v1/issues/{issue_id}", headers=town.admin.headers).json
    assert issue["state"] == "closed" and issue["callback_status"] == "passed"
    assert outbox(db, "issue.reopened")[-1]["data"]["reason"] == "unsatisfied"


def test_stats_reproduce_the_seed_table_and_97_83_percent(client, db, town):
    """2,811 reports, 2,750 of them completed: the article's table (``load_seed_reports``)."""
    seed = load_seed_reports(db, town)
    done_ids = seed.done_ids
    assert len(done_ids) == 2750

    response = client.get("/api/v1/stats", headers=town.admin.headers)
    assert response.status_code == 200, response.json
    body = response.json
    assert body["reports"] == 2811 and body["completed"] == 2750
    assert body["completion_rate"] == 97.83
    assert {c["category"]: c["reports"] for c in body["by_category"]} == SEED
    assert [c["label"] for c in body["by_category"]] == list(domain.CATEGORIES.values())
    assert sum(c["completed"] for c in body["by_category"]) == 2750
    assert body["open"]["total"] == 61
    assert body["open"]["by_state"]["assigned"] == 5
    assert body["open"]["by_level"]["township"] == 5
    assert body["overdue"] == 5
    durations = sorted(float(k + 1) for k in range(48) for _ in range(len(done_ids[k::48])))
    expected = body["time_to_resolve_hours"]
    assert expected["count"] == 2750
    assert expected["median"] == round(domain.percentile(durations, 0.5), 2)
    assert expected["p90"] == round(domain.percentile(durations, 0.9), 2)
    villages = {v["name"]: v for v in body["by_village"]}
    assert villages["沙口集村"]["reports"] + villages["王营村"]["reports"] == 2811

    water = client.get("/api/v1/stats?category=water_power", headers=town.admin.headers).json
    assert water["reports"] == 1287 and len(water["by_category"]) == 1
    one_day = client.get(
        "/api/v1/stats?from=2022-02-01&to=2022-02-01", headers=town.admin.headers
    ).json
    # 2022-02-01 in Asia/Shanghai ends at 16:00 UTC; reports start at 00:00 UTC, one a minute.
    assert one_day["reports"] == 16 * 60
    village = client.get(
        f"/api/v1/stats?village_id={town.village2}", headers=town.admin.headers
    ).json
    assert village["reports"] == villages["王营村"]["reports"]
    assert client.get("/api/v1/stats?from=yesterday", headers=town.admin.headers).status_code == 422
    assert client.get("/api/v1/stats", headers=town.worker1.headers).status_code == 403


def test_metrics_show_open_issues_by_state_and_level(client, town, report):
    first, second = report(), report()
    assign(client, first, town.admin, town.worker1)
    text = client.get("/metrics").data.decode()
    assert 'issues_open{level="grid",service="dispatch",state="assigned"} 1.0' in text
    assert 'issues_open{level="grid",service="dispatch",state="reported"} 1.0' in text
    assert 'issues_overdue{service="dispatch"} 0.0' in text
    assert "outbox_pending" in text
    assert second != first
