"""The inbox, the preferences and the delivery log over HTTP (real PostgreSQL): each user sees
and changes only their own; bad input is a 4xx with a Chinese message."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from notify.models import Delivery, Notification
from shared.clock import utcnow


def board(feed, period="month:2026-10"):
    return feed(
        "leaderboard.published", {"period": period, "top": [], "bottom": []}, producer="scoring"
    )


def points(feed, user_id, n=3):
    return feed(
        "points.awarded",
        {"user_id": str(user_id), "points": n, "reason": "按时办结", "period": "month:2026-11"},
        producer="scoring",
    )


def test_each_user_sees_only_their_own_messages(client, person, feed):
    worker = person("grid_worker", name="王强")
    other = person("grid_worker", name="李四")
    points(feed, worker.id)
    mine = client.get("/api/v1/notifications", headers=worker.headers).get_json()
    assert [n["kind"] for n in mine["items"]] == ["points"]
    assert mine["items"][0]["link"] == {"type": "board", "id": "month:2026-11"}
    assert mine["items"][0]["created_at"].endswith("+08:00")
    assert client.get("/api/v1/notifications", headers=other.headers).get_json()["items"] == []
    # Another user's message cannot be read or marked.
    answer = client.post(
        f"/api/v1/notifications/{mine['items'][0]['id']}/read", headers=other.headers
    )
    assert answer.status_code == 404
    assert answer.get_json()["error"]["message"] == "没有找到这条消息。"


def test_unread_count_read_one_and_read_all(client, person, feed):
    worker = person("grid_worker")
    for period in ("month:2026-08", "month:2026-09", "month:2026-10"):
        board(feed, period)
    count = client.get("/api/v1/notifications/unread-count", headers=worker.headers)
    assert count.get_json() == {"unread": 3}
    items = client.get("/api/v1/notifications", headers=worker.headers).get_json()["items"]
    read = client.post(f"/api/v1/notifications/{items[0]['id']}/read", headers=worker.headers)
    assert read.status_code == 200 and read.get_json()["read"] is True
    unread = client.get("/api/v1/notifications?unread=true", headers=worker.headers).get_json()
    assert len(unread["items"]) == 2
    assert (
        client.get("/api/v1/notifications?unread=false", headers=worker.headers).get_json()[
            "items"
        ][0]["id"]
        == items[0]["id"]
    )
    assert client.post("/api/v1/notifications/read-all", headers=worker.headers).get_json() == {
        "updated": 2
    }
    assert client.get("/api/v1/notifications/unread-count", headers=worker.headers).get_json() == {
        "unread": 0
    }


def test_the_inbox_pages_newest_first_without_gaps_or_repeats(client, person, feed):
    worker = person("grid_worker")
    for n in range(7):
        points(feed, worker.id, n + 1)
    seen, cursor = [], None
    while True:
        url = "/api/v1/notifications?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=worker.headers).get_json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 7


def test_the_inbox_needs_a_token(client):
    assert client.get("/api/v1/notifications").status_code == 401
    assert client.get("/api/v1/preferences").status_code == 401


def test_a_bad_cursor_or_flag_is_a_400_in_chinese(client, person):
    worker = person("grid_worker")
    answer = client.get("/api/v1/notifications?cursor=not-a-cursor", headers=worker.headers)
    assert answer.status_code == 400
    answer = client.get("/api/v1/notifications?unread=maybe", headers=worker.headers)
    assert answer.status_code == 422


def test_preferences_default_change_and_validate(client, person):
    resident = person("resident")
    prefs = client.get("/api/v1/preferences", headers=resident.headers).get_json()
    resolved = next(k for k in prefs["kinds"] if k["kind"] == "resolved")
    assert resolved == {
        "kind": "resolved",
        "label": "办结通知",
        "inbox": True,
        "wechat": True,
        "sms": False,
    }
    assert prefs["quiet_hours"] is None and prefs["follow_news"] is False
    changed = client.put(
        "/api/v1/preferences",
        json={
            "kinds": [{"kind": "resolved", "wechat": False}],
            "quiet_hours": {"start": "21:30", "end": "07:00"},
            "follow_news": True,
        },
        headers=resident.headers,
    ).get_json()
    assert next(k for k in changed["kinds"] if k["kind"] == "resolved")["wechat"] is False
    assert changed["quiet_hours"] == {"start": "21:30", "end": "07:00"}
    assert changed["follow_news"] is True
    # Only the parts sent change.
    again = client.put(
        "/api/v1/preferences", json={"quiet_hours": None}, headers=resident.headers
    ).get_json()
    assert again["quiet_hours"] is None and again["follow_news"] is True
    assert next(k for k in again["kinds"] if k["kind"] == "resolved")["wechat"] is False


def test_bad_preferences_are_refused_with_a_reason(client, person):
    resident = person("resident")
    cases = [
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, 422),
        ({"quiet_hours": {"start": "22:00", "end": "22:00"}}, 422),
        ({"kinds": [{"kind": "no_such_kind", "sms": True}]}, 422),
        ({"kinds": [{"kind": "resolved", "inbox": False}]}, 422),
        ({}, 422),
        ({"follow_news": "perhaps"}, 422),
    ]
    for body, status in cases:
        answer = client.put("/api/v1/preferences", json=body, headers=resident.headers)
        assert answer.status_code == status, body
        message = answer.get_json()["error"]["message"]
        assert any("\u4e00" <= ch <= "\u9fff" for ch in message), (body, message)


def test_only_admins_list_and_retry_deliveries(client, person, db):
    admin = person("admin")
    worker = person("grid_worker")
    failed, sent = _deliveries(db, worker.id)
    assert client.get("/api/v1/deliveries", headers=worker.headers).status_code == 403
    assert (
        client.post(f"/api/v1/deliveries/{failed}/retry", headers=worker.headers).status_code == 403
    )
    listing = client.get(
        "/api/v1/deliveries?status=failed&channel=sms", headers=admin.headers
    ).get_json()
    assert [d["id"] for d in listing["items"]] == [str(failed)]
    by_user = client.get(f"/api/v1/deliveries?user_id={worker.id}", headers=admin.headers)
    assert len(by_user.get_json()["items"]) == 2
    retried = client.post(f"/api/v1/deliveries/{failed}/retry", headers=admin.headers)
    assert retried.status_code == 200
    assert retried.get_json()["status"] == "pending" and retried.get_json()["attempts"] == 0
    refused = client.post(f"/api/v1/deliveries/{sent}/retry", headers=admin.headers)
    assert refused.status_code == 409
    missing = client.post(f"/api/v1/deliveries/{uuid.uuid4()}/retry", headers=admin.headers)
    assert missing.status_code == 404


def _deliveries(db, user_id):
    now = utcnow()
    with db.transaction() as session:
        note = Notification(
            user_id=user_id,
            event_id=uuid.uuid4(),
            event_type="issue.assigned",
            kind="assigned",
            title="您有新的交办任务",
            body="…",
            variables={},
        )
        session.add(note)
        session.flush()
        rows = [
            Delivery(
                notification_id=note.id,
                event_id=note.event_id,
                user_id=user_id,
                channel=channel,
                kind="assigned",
                address="13800000000",
                status=status,
                attempts=6 if status == "failed" else 1,
                last_error="HTTP 500",
                next_attempt_at=now,
                created_at=now,
            )
            for channel, status in (("sms", "failed"), ("webhook", "sent"))
        ]
        session.add_all(rows)
        session.flush()
        return rows[0].id, rows[1].id


def test_the_backlog_gauges_read_the_deliveries(client, person, db):
    worker = person("grid_worker")
    _deliveries(db, worker.id)
    with db.transaction() as session:
        session.execute(
            sa.update(Delivery).where(Delivery.channel == "sms").values(status="pending")
        )
    text = client.get("/metrics").get_data(as_text=True)
    assert 'deliveries_pending{channel="sms",service="notify"} 1.0' in text
    assert "deliveries_oldest_pending_seconds" in text
