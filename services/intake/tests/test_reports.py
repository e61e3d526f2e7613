"""Reports through the HTTP API against real PostgreSQL: create, idempotency, visibility, rating."""

from __future__ import annotations

import io
import re
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from PIL import Image

from intake.handlers import handle_issue_resolved
from intake.models import Issue, Media
from shared.events import make_envelope, parse_envelope

VILLAGE_ID = uuid.UUID("5a3c0000-0000-4000-8000-000000000001")  # the `village` fixture's id


def _report(**overrides):
    body = {
        "category": "water_power",
        "description": "村东头的自来水管破了，一直在漏水。",
        "village_id": str(VILLAGE_ID),
        "address": "沙口集村东街 12 号",
        "lat": 36.2,
        "lon": 115.1,
    }
    body.update(overrides)
    return body


def _jpeg(size=(800, 600)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def _count(db, model) -> int:
    with db.transaction() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def _resolve(db, issue_id, note="已更换水管。"):
    envelope = make_envelope(
        "issue.resolved",
        {"issue_id": issue_id, "note": note, "photo_ids": [], "resolved_at": datetime.now(UTC)},
        producer="dispatch",
    )
    with db.transaction() as session:
        handle_issue_resolved(session, parse_envelope(envelope))


def test_a_resident_reports_an_issue_and_gets_a_ticket_number(
    client, db, outbox_rows, village, make_user
):
    user, headers = make_user()
    response = client.post("/api/v1/issues", json=_report(), headers=headers)
    assert response.status_code == 201, response.json
    body = response.json
    assert re.fullmatch(r"SKJ-\d{8}-0001", body["ticket_no"])
    assert body["status"] == "reported"
    assert body["reported_at"].endswith("+08:00")
    rows = outbox_rows("issue.reported")
    assert len(rows) == 1
    envelope = parse_envelope(rows[0]["envelope"])
    assert envelope.producer == "intake"
    assert envelope.data["issue_id"] == body["id"]
    assert envelope.data["reporter_id"] == str(user.id)
    assert envelope.data["category"] == "water_power"
    assert envelope.data["village_id"] == str(VILLAGE_ID)
    assert rows[0]["sent_at"] is None


def test_ticket_numbers_count_up_within_the_day(client, village, make_user):
    _, headers = make_user()
    first = client.post("/api/v1/issues", json=_report(), headers=headers).json["ticket_no"]
    second = client.post("/api/v1/issues", json=_report(), headers=headers).json["ticket_no"]
    assert first.endswith("-0001") and second.endswith("-0002")


def test_the_same_idempotency_key_and_body_return_the_same_issue(
    client, db, outbox_rows, village, make_user
):
    _, headers = make_user()
    headers = {**headers, "Idempotency-Key": "k-1"}
    first = client.post("/api/v1/issues", json=_report(), headers=headers)
    again = client.post("/api/v1/issues", json=_report(), headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json == again.json
    assert _count(db, Issue) == 1
    assert len(outbox_rows("issue.reported")) == 1


def test_the_same_idempotency_key_with_another_body_is_a_conflict(
    client, db, outbox_rows, village, make_user
):
    _, headers = make_user()
    headers = {**headers, "Idempotency-Key": "k-2"}
    assert client.post("/api/v1/issues", json=_report(), headers=headers).status_code == 201
    other = client.post("/api/v1/issues", json=_report(category="other"), headers=headers)
    assert other.status_code == 409
    assert other.json["error"]["code"] == "idempotency_key_reused"
    assert _count(db, Issue) == 1


def test_an_idempotency_key_belongs_to_one_user(client, db, outbox_rows, village, make_user):
    _, alice = make_user()
    _, bob = make_user(name="李四")
    a = client.post("/api/v1/issues", json=_report(), headers={**alice, "Idempotency-Key": "same"})
    b = client.post("/api/v1/issues", json=_report(), headers={**bob, "Idempotency-Key": "same"})
    assert a.status_code == b.status_code == 201
    assert a.json["id"] != b.json["id"]


def test_bad_reports_get_clear_4xx_errors_and_store_nothing(
    client, db, outbox_rows, village, make_user
):
    _, headers = make_user()
    cases = [
        (_report(category="ufo"), 422, "category"),
        (_report(description="漏水了"), 422, "description"),
        (_report(description="     x    "), 422, "description"),
        (_report(village_id=str(uuid.uuid4())), 422, "village_id"),
        (_report(lat=120.0), 422, "lat"),
        (_report(lon=None), 422, "lat"),
        (_report(photo_ids=[str(uuid.uuid4()) for _ in range(10)]), 422, "photo_ids"),
        (_report(photo_ids=[str(uuid.uuid4())]), 422, "photo_ids"),
    ]
    for body, status, field in cases:
        response = client.post("/api/v1/issues", json=body, headers=headers)
        assert response.status_code == status, (body, response.json)
        error = response.json["error"]
        assert error["message"] and re.search(r"[\u4e00-\u9fff]", error["message"])
        assert field in str(error["details"]), (field, error)
    malformed = client.post(
        "/api/v1/issues", data="{not json", headers={**headers, "Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    assert malformed.json["error"]["code"] in {"malformed_json", "bad_request"}
    assert _count(db, Issue) == 0
    assert outbox_rows() == []


def test_reporting_needs_a_signed_in_resident_or_staff_reporting_for_one(
    client, village, make_user
):
    assert client.post("/api/v1/issues", json=_report()).status_code == 401
    _, supervisor = make_user(roles=["supervisor"])
    assert client.post("/api/v1/issues", json=_report(), headers=supervisor).status_code == 403
    # A grid worker reports only for a resident (代办): without one it is a clear 422.
    _, staff = make_user(roles=["grid_worker"])
    refused = client.post("/api/v1/issues", json=_report(), headers=staff)
    assert refused.status_code == 422
    assert refused.json["error"]["code"] == "on_behalf_of_required"


def test_another_resident_gets_404_and_staff_may_read_the_issue(client, village, make_user):
    _, alice = make_user()
    _, bob = make_user(name="李四")
    # A grid worker of the report's village (who reads which report: test_report_scopes.py).
    _, worker = make_user(roles=["grid_worker"], name="王网格", village_id=VILLAGE_ID)
    issue_id = client.post("/api/v1/issues", json=_report(), headers=alice).json["id"]
    assert client.get(f"/api/v1/issues/{issue_id}", headers=bob).status_code == 404
    assert client.get(f"/api/v1/issues/{issue_id}", headers=worker).status_code == 200
    mine = client.get(f"/api/v1/issues/{issue_id}", headers=alice)
    assert mine.status_code == 200
    assert mine.json["status_label"] == "已受理"
    assert mine.json["village_name"] == "沙口集村"
    assert mine.json["timeline"][0]["title"].startswith("已受理")
    assert client.get(f"/api/v1/issues/{uuid.uuid4()}", headers=alice).status_code == 404


def test_mine_lists_only_my_reports_page_by_page(client, village, make_user):
    _, alice = make_user()
    _, bob = make_user(name="李四")
    ids = [
        client.post("/api/v1/issues", json=_report(), headers=alice).json["id"] for _ in range(5)
    ]
    client.post("/api/v1/issues", json=_report(), headers=bob)
    seen, cursor = [], None
    while True:
        query = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        page = client.get(f"/api/v1/issues/mine{query}", headers=alice).json
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    assert client.get("/api/v1/issues/mine?status=closed", headers=alice).json["items"] == []
    assert client.get("/api/v1/issues/mine?cursor=@@@", headers=alice).status_code == 400


def test_photos_attach_only_when_the_reporter_uploaded_them(
    client, db, outbox_rows, village, make_user
):
    _, alice = make_user()
    _, bob = make_user(name="李四")
    upload = client.post(
        "/api/v1/media",
        data={"file": (io.BytesIO(_jpeg()), "p.jpg")},
        headers=alice,
        content_type="multipart/form-data",
    )
    assert upload.status_code == 201, upload.json
    photo_id = upload.json["id"]
    stolen = client.post("/api/v1/issues", json=_report(photo_ids=[photo_id]), headers=bob)
    assert stolen.status_code == 422
    mine = client.post("/api/v1/issues", json=_report(photo_ids=[photo_id]), headers=alice)
    assert mine.status_code == 201
    again = client.post("/api/v1/issues", json=_report(photo_ids=[photo_id]), headers=alice)
    assert again.status_code == 422, "a photo belongs to one report"
    detail = client.get(f"/api/v1/issues/{mine.json['id']}", headers=alice).json
    assert detail["photos"][0]["id"] == photo_id
    with db.transaction() as session:
        assert str(session.get(Media, uuid.UUID(photo_id)).issue_id) == mine.json["id"]


def test_photos_are_served_to_the_uploader_and_to_staff_once_reported(client, village, make_user):
    _, alice = make_user()
    _, bob = make_user(name="李四")
    _, worker = make_user(roles=["grid_worker"], name="王网格", village_id=VILLAGE_ID)
    photo = client.post(
        "/api/v1/media",
        data={"file": (io.BytesIO(_jpeg()), "p.jpg")},
        headers=alice,
        content_type="multipart/form-data",
    ).json
    full = client.get(photo["url"], headers=alice)
    assert full.status_code == 200 and full.mimetype == "image/jpeg"
    assert client.get(photo["url"], headers=worker).status_code == 404, "not in a report yet"
    reported = client.post("/api/v1/issues", json=_report(photo_ids=[photo["id"]]), headers=alice)
    assert reported.status_code == 201
    thumb = client.get(photo["thumb_url"], headers=alice)
    assert thumb.status_code == 200
    assert max(Image.open(io.BytesIO(thumb.data)).size) <= 320 < photo["width"]
    assert client.get(photo["url"], headers=worker).status_code == 200
    assert client.get(photo["url"], headers=bob).status_code == 404
    assert client.get(photo["url"]).status_code == 401


def test_bad_uploads_get_4xx_and_store_nothing(client, db, make_user):
    _, alice = make_user()

    def upload(data: bytes, name: str):
        return client.post(
            "/api/v1/media",
            data={"file": (io.BytesIO(data), name)},
            headers=alice,
            content_type="multipart/form-data",
        )

    text = upload("这不是照片".encode() * 10, "photo.jpg")
    assert text.status_code == 415, text.json
    huge = upload(b"\xff\xd8\xff" + b"0" * (30 * 1024 * 1024), "big.jpg")
    assert huge.status_code == 413
    assert re.search(r"[\u4e00-\u9fff]", huge.json["error"]["message"])
    missing = client.post("/api/v1/media", data={}, headers=alice)
    assert missing.status_code == 400
    assert _count(db, Media) == 0


def test_the_reporter_rates_a_resolved_issue_once(client, db, outbox_rows, village, make_user):
    _, alice = make_user()
    _, bob = make_user(name="李四")
    issue_id = client.post("/api/v1/issues", json=_report(), headers=alice).json["id"]
    rating = {"rating": "satisfied", "comment": "很及时"}
    early = client.post(f"/api/v1/issues/{issue_id}/rating", json=rating, headers=alice)
    assert early.status_code == 409
    assert "办结后" in early.json["error"]["message"]
    _resolve(db, uuid.UUID(issue_id))
    detail = client.get(f"/api/v1/issues/{issue_id}", headers=alice).json
    assert detail["status"] == "resolved" and detail["can_rate"] is True
    assert detail["resolution_note"] == "已更换水管。"
    assert (
        client.post(f"/api/v1/issues/{issue_id}/rating", json=rating, headers=bob).status_code
        == 404
    )
    done = client.post(f"/api/v1/issues/{issue_id}/rating", json=rating, headers=alice)
    assert done.status_code == 201
    assert done.json["rating_label"] == "满意"
    twice = client.post(f"/api/v1/issues/{issue_id}/rating", json=rating, headers=alice)
    assert twice.status_code == 409
    rated = outbox_rows("issue.rated")
    assert len(rated) == 1
    assert rated[0]["envelope"]["data"]["rating"] == "satisfied"
    bad = client.post(f"/api/v1/issues/{issue_id}/rating", json={"rating": "meh"}, headers=alice)
    assert bad.status_code == 422


def test_report_creation_is_rate_limited_per_user(app, client, village, make_user):
    app.extensions["settings"].rate_limit_reports = "2 per hour"
    _, alice = make_user()
    _, bob = make_user(name="李四")
    for _ in range(2):
        assert client.post("/api/v1/issues", json=_report(), headers=alice).status_code == 201
    limited = client.post("/api/v1/issues", json=_report(), headers=alice)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert limited.json["error"]["code"] == "too_many_requests"
    assert client.post("/api/v1/issues", json=_report(), headers=bob).status_code == 201


def test_categories_and_villages_are_listed(client, village):
    categories = client.get("/api/v1/categories").json
    assert {c["code"] for c in categories} == {
        "admin_affairs",
        "road_traffic",
        "neighbor_dispute",
        "medical_elderly",
        "water_power",
        "other",
    }
    assert {"code": "water_power", "label": "用水用电"} in categories
    assert client.get("/api/v1/villages").json == [{"id": str(VILLAGE_ID), "name": "沙口集村"}]


def test_metrics_count_reports_and_pending_outbox_rows(client, village, make_user):
    _, alice = make_user()
    client.post("/api/v1/issues", json=_report(), headers=alice)
    client.post("/api/v1/issues", json=_report(category="other"), headers=alice)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'outbox_pending{service="intake"} 2.0' in text
    assert (
        'http_requests_total{method="POST",route="/api/v1/issues",service="intake",status="201"}'
        in text
    )
    assert 'issues_reported_total{category="other"}' in text


def test_photo_uploads_are_rate_limited_per_user(app, client, make_user):
    app.extensions["settings"].rate_limit_uploads = "2 per hour"
    _, alice = make_user()
    _, bob = make_user(name="李四")

    def upload(headers):
        return client.post(
            "/api/v1/media",
            data={"file": (io.BytesIO(_jpeg((40, 30))), "p.jpg")},
            headers=headers,
            content_type="multipart/form-data",
        )

    assert [upload(alice).status_code for _ in range(2)] == [201, 201]
    limited = upload(alice)
    assert limited.status_code == 429
    assert 0 < int(limited.headers["Retry-After"]) <= 3600
    assert upload(bob).status_code == 201, "the limit is per user, not per address"


def test_a_workers_photo_is_seen_by_other_staff_but_not_by_residents(client, make_user):
    _, worker = make_user(roles=["grid_worker"], name="王网格")
    _, admin = make_user(roles=["admin"], name="管理员")
    _, alice = make_user()
    photo = client.post(
        "/api/v1/media",
        data={"file": (io.BytesIO(_jpeg((40, 30))), "done.jpg")},
        headers=worker,
        content_type="multipart/form-data",
    ).json
    assert client.get(photo["url"], headers=admin).status_code == 200
    assert client.get(photo["url"], headers=alice).status_code == 404


def test_an_unsatisfied_resident_sees_the_reopening_and_rates_the_next_resolution(
    client, db, village, make_user
):
    from intake.handlers import handle_issue_reopened

    _, alice = make_user()
    leader, _ = make_user(roles=["area_leader"], name="赵志刚")
    issue_id = client.post("/api/v1/issues", json=_report(), headers=alice).json["id"]
    _resolve(db, uuid.UUID(issue_id))
    rate = {"rating": "unsatisfied", "comment": "还是漏水"}
    assert (
        client.post(f"/api/v1/issues/{issue_id}/rating", json=rate, headers=alice).status_code
        == 201
    )
    reopened = make_envelope(
        "issue.reopened",
        {
            "issue_id": issue_id,
            "reason": "unsatisfied",
            "assignee_id": None,
            "area_leader_id": str(leader.id),
        },
        producer="dispatch",
    )
    with db.transaction() as session:
        handle_issue_reopened(session, parse_envelope(reopened))
    detail = client.get(f"/api/v1/issues/{issue_id}", headers=alice).json
    assert detail["status"] == "reopened" and detail["can_rate"] is False
    step = detail["timeline"][-1]
    assert step["title"] == "群众不满意，重新办理"
    assert "赵志刚" in step["note"]
    _resolve(db, uuid.UUID(issue_id), note="已更换整段水管。")
    again = {"rating": "satisfied"}
    assert (
        client.post(f"/api/v1/issues/{issue_id}/rating", json=again, headers=alice).status_code
        == 201
    )


def test_issues_reported_total_counts_a_report_only_once_it_is_stored(
    app, db, settings, village, make_user
):
    from prometheus_client import REGISTRY

    from intake.services import NewReport, report_issue

    user, _headers = make_user()
    labels = {"category": "road_traffic"}
    before = REGISTRY.get_sample_value("issues_reported_total", labels) or 0.0
    report = NewReport(
        category="road_traffic", description="村口的路面塌了一个大坑。", village_id=VILLAGE_ID
    )

    with pytest.raises(RuntimeError), db.transaction() as session:
        report_issue(session, settings, user.id, report)
        raise RuntimeError("the commit never happens (a lost connection, say)")
    assert (REGISTRY.get_sample_value("issues_reported_total", labels) or 0.0) == before
    assert _count(db, Issue) == 0

    with db.transaction() as session:
        report_issue(session, settings, user.id, report)
    assert REGISTRY.get_sample_value("issues_reported_total", labels) == before + 1
