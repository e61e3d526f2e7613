"""Reporting as the seed's residents do, on real PostgreSQL: a photo with few words, staff
reporting for a resident (代办), details, urging (催办) and withdrawal, a contact phone for
callbacks (typed and confirmed, or from WeChat against a local server that plays WeChat), the
callback in the timeline and "已办结事项" in one call."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from PIL import Image

from intake.app import create_app
from intake.handlers import SUBSCRIPTIONS
from intake.models import Issue, Media
from shared.events import make_envelope, parse_envelope

VILLAGE_ID = uuid.UUID("5a3c0000-0000-4000-8000-000000000001")  # the `village` fixture's id
NOW = datetime.now(UTC)


def _report(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "category": "water_power",
        "description": "村东头的自来水管破了，一直在漏水。",
        "village_id": str(VILLAGE_ID),
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 120, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def _photo(client, headers) -> str:
    response = client.post(
        "/api/v1/media",
        data={"file": (io.BytesIO(_jpeg()), "p.jpg")},
        headers=headers,
        content_type="multipart/form-data",
    )
    assert response.status_code == 201, response.json
    return response.json["id"]


def _new_issue(client, headers, **overrides: Any) -> str:
    response = client.post("/api/v1/issues", json=_report(**overrides), headers=headers)
    assert response.status_code == 201, response.json
    return response.json["id"]


def _data(outbox_rows, event_type: str) -> list[dict[str, Any]]:
    return [row["envelope"]["data"] for row in outbox_rows(event_type)]


def _snapshot(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "state": "assigned",
        "level": "grid",
        "assignee_id": None,
        "assignee_name": "王网格",
        "handler_id": None,
        "handler_name": None,
        "follower_id": None,
        "follower_name": None,
        "due_at": None,
        "resolution_no": 0,
        "resolution_note": None,
        "resolution_photo_ids": [],
        "resolved_at": None,
        "rating": None,
        "closed_at": None,
        "reject_reason": None,
    }
    base.update(changes)
    return base


def _deliver(db, event_type: str, issue_id: str, version: int, snapshot: dict, **data: Any):
    body = {"issue_id": issue_id, "issue_version": version, "snapshot": snapshot, **data}
    envelope = make_envelope(event_type, body, producer="dispatch")
    with db.transaction() as session:
        SUBSCRIPTIONS[event_type](session, parse_envelope(envelope))


def _timeline(client, headers, issue_id: str) -> list[dict[str, Any]]:
    return client.get(f"/api/v1/issues/{issue_id}", headers=headers).json["timeline"]


# --- a photo speaks for itself ------------------------------------------------------------------


def test_a_report_with_a_photo_may_have_a_short_description_or_none(
    client, village, make_user, outbox_rows
):
    _, alice = make_user()
    short = _new_issue(client, alice, description="漏水", photo_ids=[_photo(client, alice)])
    none = _new_issue(client, alice, description=..., photo_ids=[_photo(client, alice)])
    empty = _new_issue(client, alice, description="", photo_ids=[_photo(client, alice)])

    events = {d["issue_id"]: d for d in _data(outbox_rows, "issue.reported")}
    assert events[short]["description"] == "漏水"
    assert events[none]["description"] == events[empty]["description"] == ""
    one_char = client.post(
        "/api/v1/issues",
        json=_report(description="漏", photo_ids=[_photo(client, alice)]),
        headers=alice,
    )
    assert one_char.status_code == 422
    assert "2" in one_char.json["error"]["details"]["json"]["description"][0]


def test_a_report_without_a_photo_still_needs_a_description(client, village, make_user):
    _, alice = make_user()
    for description in (..., "", "   ", "漏水了"):
        response = client.post(
            "/api/v1/issues", json=_report(description=description), headers=alice
        )
        assert response.status_code == 422, description
        [message] = response.json["error"]["details"]["json"]["description"]
        assert "没有照片" in message


# --- staff report for a resident (代办/帮办) ------------------------------------------------------


def test_a_grid_worker_reports_for_a_resident_without_a_phone_and_both_are_recorded(
    client, db, village, make_user, outbox_rows
):
    worker, worker_headers = make_user(roles=["grid_worker"], name="刘网格")
    body = _report(on_behalf_of={"name": "李大娘", "phone": "138 0013 8000"})
    body["photo_ids"] = [_photo(client, worker_headers)]  # the worker took the photo

    issue_id = _new_issue(client, worker_headers, **body)

    [event] = _data(outbox_rows, "issue.reported")
    assert event["submitted_by"] == str(worker.id)
    assert event["reporter_id"] == str(worker.id)  # no account: the worker follows it for her
    assert (event["contact_name"], event["contact_phone"]) == ("李大娘", "13800138000")
    assert event["source"] == "on_behalf"
    detail = client.get(f"/api/v1/issues/{issue_id}", headers=worker_headers).json
    assert detail["submitted_by"] == str(worker.id)
    assert detail["contact_phone"] == "138****8000"
    assert detail["timeline"][0]["title"] == "已受理：网格员刘网格代为提交诉求"
    mine = client.get("/api/v1/issues/mine", headers=worker_headers).json["items"]
    assert [i["id"] for i in mine] == [issue_id]


def test_a_grid_leader_reports_for_a_resident_with_an_account_who_then_follows_it(
    client, db, village, make_user, outbox_rows
):
    resident, resident_headers = make_user(name="王大爷")
    leader, leader_headers = make_user(roles=["grid_leader"], name="孙网格长")
    _, stranger = make_user()

    issue_id = _new_issue(client, leader_headers, on_behalf_of={"resident_id": str(resident.id)})

    [event] = _data(outbox_rows, "issue.reported")
    assert (event["reporter_id"], event["submitted_by"]) == (str(resident.id), str(leader.id))
    assert event["contact_name"] == "王大爷"
    for headers in (resident_headers, leader_headers):
        mine = client.get("/api/v1/issues/mine", headers=headers).json["items"]
        assert [i["id"] for i in mine] == [issue_id]
        assert client.get(f"/api/v1/issues/{issue_id}", headers=headers).status_code == 200
    assert client.get(f"/api/v1/issues/{issue_id}", headers=stranger).status_code == 404


def test_only_staff_report_for_someone_else_and_only_for_a_known_resident(
    client, village, make_user
):
    _, alice = make_user()
    by_resident = client.post(
        "/api/v1/issues", json=_report(on_behalf_of={"name": "李大娘"}), headers=alice
    )
    assert by_resident.status_code == 403
    assert by_resident.json["error"]["code"] == "not_a_proxy"
    _, admin = make_user(roles=["admin"])
    unknown = client.post(
        "/api/v1/issues",
        json=_report(on_behalf_of={"resident_id": str(uuid.uuid4())}),
        headers=admin,
    )
    assert unknown.status_code == 422
    assert unknown.json["error"]["details"]["on_behalf_of"]["resident_id"]
    bad_phone = client.post(
        "/api/v1/issues",
        json=_report(on_behalf_of={"name": "李大娘", "phone": "12345"}),
        headers=admin,
    )
    assert bad_phone.status_code == 422
    nobody = client.post("/api/v1/issues", json=_report(on_behalf_of={}), headers=admin)
    assert nobody.status_code == 422


# --- details, urging, withdrawal ----------------------------------------------------------------


def test_the_reporter_adds_details_with_photos_of_their_own_to_an_open_report(
    client, db, village, make_user, outbox_rows
):
    alice_user, alice = make_user()
    _, bob = make_user()
    issue_id = _new_issue(client, alice)
    photo = _photo(client, alice)
    bobs_photo = _photo(client, bob)

    added = client.post(
        f"/api/v1/issues/{issue_id}/details",
        json={"text": "今天早上水漫到路上了。", "photo_ids": [photo]},
        headers=alice,
    )

    assert added.status_code == 201, added.json
    assert added.json["title"] == "群众补充说明"
    [event] = _data(outbox_rows, "issue.details_added")
    assert event["reporter_id"] == str(alice_user.id)
    assert (event["text"], event["photo_ids"]) == ("今天早上水漫到路上了。", [photo])
    with db.transaction() as session:
        assert session.get(Media, uuid.UUID(photo)).issue_id == uuid.UUID(issue_id)
    assert _timeline(client, alice, issue_id)[-1]["note"] == "今天早上水漫到路上了。"
    refused = [
        client.post(
            f"/api/v1/issues/{issue_id}/details",
            json={"text": "补充", "photo_ids": [bobs_photo]},
            headers=alice,
        ),
        client.post(f"/api/v1/issues/{issue_id}/details", json={"text": "长" * 501}, headers=alice),
        client.post(f"/api/v1/issues/{issue_id}/details", json={"text": "  "}, headers=alice),
    ]
    assert [r.status_code for r in refused] == [422, 422, 422]
    stranger = client.post(f"/api/v1/issues/{issue_id}/details", json={"text": "x"}, headers=bob)
    assert stranger.status_code == 404
    _deliver(db, "issue.closed", issue_id, 9, _snapshot(state="closed"), rating=None)
    closed = client.post(f"/api/v1/issues/{issue_id}/details", json={"text": "x"}, headers=alice)
    assert closed.status_code == 409
    assert len(outbox_rows("issue.details_added")) == 1


def test_urging_is_allowed_once_per_interval_and_a_second_urge_gets_a_chinese_429(
    client, db, village, make_user, outbox_rows
):
    alice_user, alice = make_user()
    issue_id = _new_issue(client, alice)

    first = client.post(f"/api/v1/issues/{issue_id}/urge", json={"text": "请尽快"}, headers=alice)
    second = client.post(f"/api/v1/issues/{issue_id}/urge", json={}, headers=alice)

    assert first.status_code == 200, first.json
    assert first.json["urge_count"] == 1
    assert second.status_code == 429
    assert second.json["error"]["code"] == "urged_recently"
    assert "再催办" in second.json["error"]["message"]
    assert 11 * 3600 < int(second.headers["Retry-After"]) <= 12 * 3600 + 1
    [event] = _data(outbox_rows, "issue.urged")
    assert (event["reporter_id"], event["text"], event["urge_count"]) == (
        str(alice_user.id),
        "请尽快",
        1,
    )
    # Twelve hours later (moved back in the database) the resident may urge again.
    with db.transaction() as session:
        issue = session.get(Issue, uuid.UUID(issue_id))
        issue.last_urged_at = issue.last_urged_at - timedelta(hours=12, seconds=1)
    third = client.post(f"/api/v1/issues/{issue_id}/urge", json={}, headers=alice)
    assert third.status_code == 200 and third.json["urge_count"] == 2
    detail = client.get(f"/api/v1/issues/{issue_id}", headers=alice).json
    assert detail["urge_count"] == 2
    assert [s["title"] for s in detail["timeline"]][-2:] == [
        "群众催办（第 1 次）",
        "群众催办（第 2 次）",
    ]


def test_two_urges_at_the_same_moment_count_once(settings, village, make_user, outbox_rows):
    """Each request in its own app (like two web workers) against the same row."""
    _, alice = make_user()
    apps = [create_app(settings), create_app(settings)]
    issue_id = _new_issue(apps[0].test_client(), alice)
    start = threading.Barrier(2)
    codes: list[int] = []

    def urge(app) -> None:
        client = app.test_client()
        start.wait()
        codes.append(
            client.post(f"/api/v1/issues/{issue_id}/urge", json={}, headers=alice).status_code
        )

    threads = [threading.Thread(target=urge, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for app in apps:
        app.extensions["db"].dispose()

    assert sorted(codes) == [200, 429]
    assert len(outbox_rows("issue.urged")) == 1


def test_a_resident_withdraws_a_report_not_yet_assigned_but_not_one_that_is(
    client, db, village, make_user, outbox_rows
):
    alice_user, alice = make_user()
    issue_id = _new_issue(client, alice)
    assigned_id = _new_issue(client, alice)
    _deliver(db, "issue.assigned", assigned_id, 2, _snapshot(), assignee_id=str(uuid.uuid4()))

    no_reason = client.post(f"/api/v1/issues/{issue_id}/withdraw", json={}, headers=alice)
    withdrawn = client.post(
        f"/api/v1/issues/{issue_id}/withdraw", json={"reason": "已自行修好"}, headers=alice
    )
    again = client.post(
        f"/api/v1/issues/{issue_id}/withdraw", json={"reason": "已自行修好"}, headers=alice
    )
    too_late = client.post(
        f"/api/v1/issues/{assigned_id}/withdraw", json={"reason": "不想等了"}, headers=alice
    )

    assert no_reason.status_code == 422
    assert withdrawn.status_code == 200, withdrawn.json
    assert (withdrawn.json["status"], withdrawn.json["status_label"]) == ("withdrawn", "已撤回")
    assert again.status_code == 409 and too_late.status_code == 409
    assert too_late.json["error"]["code"] == "not_withdrawable"
    [event] = _data(outbox_rows, "issue.withdrawn")
    assert (event["issue_id"], event["reporter_id"], event["text"]) == (
        issue_id,
        str(alice_user.id),
        "已自行修好",
    )
    urged = client.post(f"/api/v1/issues/{issue_id}/urge", json={}, headers=alice)
    assert urged.status_code == 409


def test_when_dispatch_had_already_assigned_it_the_withdrawal_is_declined_and_the_view_follows(
    client, db, village, make_user
):
    _, alice = make_user()
    issue_id = _new_issue(client, alice)
    assert (
        client.post(
            f"/api/v1/issues/{issue_id}/withdraw", json={"reason": "已自行修好"}, headers=alice
        ).status_code
        == 200
    )

    _deliver(db, "issue.assigned", issue_id, 2, _snapshot(), assignee_id=str(uuid.uuid4()))
    _deliver(
        db,
        "issue.withdrawal_declined",
        issue_id,
        3,
        _snapshot(),
        reason="事项已交办，将继续办理",
    )

    detail = client.get(f"/api/v1/issues/{issue_id}", headers=alice).json
    assert detail["status"] == "assigned"
    assert detail["timeline"][-1]["title"] == "撤回未成功"
    assert detail["timeline"][-1]["note"] == "事项已交办，将继续办理"


# --- a contact phone for callbacks --------------------------------------------------------------


def test_a_typed_phone_must_be_a_mobile_number_and_confirmed_then_goes_with_each_report(
    client, village, make_user, outbox_rows
):
    _, alice = make_user(name="李四")
    assert client.get("/api/v1/me/phone", headers=alice).json["phone"] is None
    refused = [
        client.put("/api/v1/me/phone", json={"phone": "13800138000"}, headers=alice),
        client.put("/api/v1/me/phone", json={"phone": "1234567", "confirm": True}, headers=alice),
        client.put(
            "/api/v1/me/phone", json={"phone": "12800138000", "confirm": True}, headers=alice
        ),
        client.put("/api/v1/me/phone", json={}, headers=alice),
    ]
    assert [r.status_code for r in refused] == [422, 422, 422, 422]
    assert "确认" in refused[0].json["error"]["details"]["json"]["confirm"][0]

    given = client.put(
        "/api/v1/me/phone", json={"phone": "+86 139-0013-9000", "confirm": True}, headers=alice
    )

    assert given.status_code == 200, given.json
    assert (given.json["phone"], given.json["source"]) == ("139****9000", "typed")
    assert given.json["confirmed_at"].endswith("+08:00")
    _new_issue(client, alice)
    [event] = _data(outbox_rows, "issue.reported")
    assert (event["contact_phone"], event["contact_name"]) == ("13900139000", "李四")
    assert event["submitted_by"] is None


APP_ID, APP_SECRET = "wx0123456789abcdef", "test-app-secret"


class FakeWeChatPhone:
    """A local WeChat: ``stable_token`` hands out access tokens, ``getuserphonenumber`` answers
    a button code with the number (``ok-<11 digits>``) or WeChat's errors; it records each call.
    ``expire_token()`` makes the current token answer 40001, as WeChat does after a refresh."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.tokens_issued = 0
        self.valid_token: str | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.calls.append({"path": url.path, "query": query, "body": body})
                self._answer(fake.answer(url.path, query, body))

            def _answer(self, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str, query: dict, body: dict) -> dict:
        if path == "/cgi-bin/stable_token":
            if (body.get("appid"), body.get("secret")) != (APP_ID, APP_SECRET):
                return {"errcode": 40125, "errmsg": "invalid appsecret"}
            if self.valid_token is None:
                self.tokens_issued += 1
                self.valid_token = f"token-{self.tokens_issued}"
            return {"access_token": self.valid_token, "expires_in": 7200}
        if path == "/wxa/business/getuserphonenumber":
            if query.get("access_token") != self.valid_token:
                return {"errcode": 40001, "errmsg": "invalid credential"}
            code = body.get("code", "")
            if code.startswith("ok-"):
                number = code.removeprefix("ok-")
                return {
                    "errcode": 0,
                    "errmsg": "ok",
                    "phone_info": {
                        "phoneNumber": number,
                        "purePhoneNumber": number,
                        "countryCode": "86",
                        "watermark": {"timestamp": 1700000000, "appid": APP_ID},
                    },
                }
            if code == "too-fast":
                return {"errcode": 45011, "errmsg": "api minute-quota reach limit"}
            return {"errcode": 40029, "errmsg": "invalid code"}
        return {"errcode": 404, "errmsg": "not found"}

    def expire_token(self) -> None:
        self.valid_token = None

    def __enter__(self) -> FakeWeChatPhone:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def wechat() -> Iterator[FakeWeChatPhone]:
    with FakeWeChatPhone() as fake:
        yield fake


@pytest.fixture
def wechat_client(settings, wechat):
    app = create_app(
        settings.model_copy(
            update={
                "wechat_mode": "real",
                "wechat_api_base": wechat.url,
                "wechat_app_id": APP_ID,
                "wechat_app_secret": APP_SECRET,
                "wechat_timeout_seconds": 2.0,
            }
        )
    )
    yield app.test_client()
    app.extensions["db"].dispose()


def test_a_wechat_phone_code_is_exchanged_server_side_with_one_cached_access_token(
    wechat_client, wechat, make_user
):
    _, alice = make_user()
    _, bob = make_user()

    first = wechat_client.put("/api/v1/me/phone", json={"code": "ok-13700137000"}, headers=alice)
    second = wechat_client.put("/api/v1/me/phone", json={"code": "ok-13600136000"}, headers=bob)

    assert first.status_code == 200, first.json
    assert (first.json["phone"], first.json["source"]) == ("137****7000", "wechat")
    assert second.status_code == 200 and second.json["phone"] == "136****6000"
    paths = [c["path"] for c in wechat.calls]
    assert paths == [
        "/cgi-bin/stable_token",
        "/wxa/business/getuserphonenumber",
        "/wxa/business/getuserphonenumber",
    ], "the access token is fetched once and reused"
    assert wechat.calls[0]["body"]["grant_type"] == "client_credential"
    assert wechat.calls[1]["body"] == {"code": "ok-13700137000"}
    assert wechat.calls[1]["query"]["access_token"] == "token-1"


def test_an_access_token_wechat_no_longer_takes_is_fetched_again_at_once(
    wechat_client, wechat, make_user
):
    _, alice = make_user()
    assert (
        wechat_client.put(
            "/api/v1/me/phone", json={"code": "ok-13700137000"}, headers=alice
        ).status_code
        == 200
    )
    wechat.expire_token()

    again = wechat_client.put("/api/v1/me/phone", json={"code": "ok-13500135000"}, headers=alice)

    assert again.status_code == 200, again.json
    assert again.json["phone"] == "135****5000"
    assert wechat.tokens_issued == 2
    assert wechat.calls[-1]["query"]["access_token"] == "token-2"


def test_wechat_phone_errors_are_told_in_chinese(wechat_client, wechat, make_user):
    _, alice = make_user()
    invalid = wechat_client.put("/api/v1/me/phone", json={"code": "used"}, headers=alice)
    too_fast = wechat_client.put("/api/v1/me/phone", json={"code": "too-fast"}, headers=alice)
    both = wechat_client.put(
        "/api/v1/me/phone", json={"code": "ok-1", "phone": "13800138000"}, headers=alice
    )

    assert invalid.status_code == 422
    assert invalid.json["error"]["code"] == "wechat_phone_code_invalid"
    assert "重新" in invalid.json["error"]["message"]
    assert too_fast.status_code == 429 and "Retry-After" in too_fast.headers
    assert both.status_code == 422
    assert wechat_client.get("/api/v1/me/phone", headers=alice).json["phone"] is None


# --- the callback in the timeline; 已办结事项 in one call ----------------------------------


def test_the_timeline_shows_the_callback_verdict_but_not_the_supervisors_notes(
    client, db, village, make_user
):
    _, alice = make_user()
    issue_id = _new_issue(client, alice)
    closed = _snapshot(state="closed", resolution_no=1, rating="satisfied")
    notes = "督导组内部：网格员态度需改进"

    _deliver(
        db,
        "issue.callback_recorded",
        issue_id,
        7,
        closed,
        supervisor_id=str(uuid.uuid4()),
        method="phone",
        lawful=True,
        implemented=True,
        accepted=True,
        passed=True,
        notes=notes,
    )
    _deliver(
        db,
        "issue.callback_recorded",
        issue_id,
        8,
        _snapshot(state="reopened", resolution_no=1),
        supervisor_id=str(uuid.uuid4()),
        method="visit",
        lawful=True,
        implemented=False,
        accepted=False,
        passed=False,
        notes=notes,
    )

    detail = client.get(f"/api/v1/issues/{issue_id}", headers=alice)
    steps = [(s["title"], s["note"]) for s in detail.json["timeline"]][-2:]
    assert steps == [
        ("督导组电话回访：满意", "回访通过"),
        ("督导组上门回访：不满意", "回访未通过，将重新办理"),
    ]
    assert notes not in detail.get_data(as_text=True)
    assert detail.json["status"] == "reopened"


def test_already_done_is_one_call_covering_resolved_and_closed(client, db, village, make_user):
    _, alice = make_user()
    resolved, closed, open_, rejected = (_new_issue(client, alice) for _ in range(4))
    _deliver(db, "issue.resolved", resolved, 3, _snapshot(state="resolved", resolution_no=1))
    _deliver(db, "issue.closed", closed, 4, _snapshot(state="closed", resolution_no=1))
    _deliver(db, "issue.rejected", rejected, 2, _snapshot(state="rejected", reject_reason="重复"))

    done = client.get("/api/v1/issues/mine?status=done", headers=alice)
    still_open = client.get("/api/v1/issues/mine?status=open", headers=alice)

    assert done.status_code == 200
    assert {i["id"] for i in done.json["items"]} == {resolved, closed}
    assert [i["id"] for i in still_open.json["items"]] == [open_]
    assert client.get("/api/v1/issues/mine?status=finished", headers=alice).status_code == 422
    with_db = sa.select(sa.func.count()).select_from(Issue)
    with db.transaction() as session:
        assert session.scalar(with_db) == 4
