"""Each channel against a local server that answers as WeChat, the SMS provider and a township
webhook do: what is sent, how it is signed, and what every kind of answer comes to."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fake_providers import (
    APP_ID,
    APP_SECRET,
    SMS_KEY_ID,
    SMS_KEY_SECRET,
    SMS_PATH,
    WEBHOOK_PATH,
    WEBHOOK_SECRET,
    WECHAT_SEND_PATH,
    WECHAT_TOKEN_PATH,
    Answer,
    add_delivery,
    channel_settings,
    sms_answer,
    wechat_error,
    wechat_ok,
)

from notify import templates
from notify.channels import (
    SmsChannel,
    WebhookChannel,
    WebhookReceiver,
    WeChatChannel,
    percent_encode,
    sign_rpc,
    verify_webhook,
    webhook_signature,
)
from notify.models import AccessToken, Base
from shared.clock import utcnow
from shared.db import Database


@pytest.fixture
def notify_db(settings):
    db = Database(settings.sqlalchemy_url, metadata=Base.metadata, producer="notify")
    yield db
    db.dispose()


@pytest.fixture
def on(settings, fake_provider):
    """Settings with every channel pointed at the fake provider."""
    return channel_settings(settings, fake_provider)


def send(channel, db, delivery, notification):
    return channel.send(db, delivery, notification, None)


def token_row(db) -> AccessToken | None:
    with db.transaction() as session:
        return session.get(AccessToken, "wechat")


# --- WeChat ----------------------------------------------------------------------------------


def test_wechat_message_goes_to_the_openid_with_template_page_and_shanghai_due_time(
    on, notify_db, fake_provider
):
    delivery, notification = add_delivery(
        notify_db,
        "wechat",
        kind="assigned",
        address="o-zhang",
        # As services.tell stores them: the due time as an ISO string in UTC.
        variables={
            "ticket_no": "SKJ-20261128-0007",
            "category": "用水用电",
            "difficulty": 3,
            "due_at": "2026-11-28T13:00:00+00:00",
        },
    )

    outcome = send(WeChatChannel(on), notify_db, delivery, notification)

    assert outcome.status == "sent"
    (token_call,) = fake_provider.received(WECHAT_TOKEN_PATH)
    assert token_call.method == "POST"
    assert token_call.json == {
        "grant_type": "client_credential",
        "appid": APP_ID,
        "secret": APP_SECRET,
        "force_refresh": False,
    }
    (sent,) = fake_provider.received(WECHAT_SEND_PATH)
    assert sent.method == "POST"
    assert sent.query == {"access_token": "token-1"}
    assert sent.json == {
        "touser": "o-zhang",
        "template_id": "tmpl-assigned",
        "page": f"pages/issue/detail?id={notification.link_id}",
        "data": {
            "character_string1": {"value": "SKJ-20261128-0007"},
            "thing2": {"value": "用水用电"},
            "time3": {"value": "2026年11月28日 21:00"},
            "number4": {"value": "3"},
        },
        "miniprogram_state": "trial",
        "lang": "zh_CN",
    }


def test_wechat_43101_unsubscribed_is_final_and_says_the_inbox_still_has_it(
    on, notify_db, fake_provider
):
    fake_provider.script(WECHAT_SEND_PATH, wechat_error(43101, "user refuse to accept the msg"))
    delivery, notification = add_delivery(notify_db, "wechat")

    outcome = send(WeChatChannel(on), notify_db, delivery, notification)

    assert outcome.status == "failed"
    assert "43101" in outcome.reason and "取消订阅" in outcome.reason
    assert len(fake_provider.received(WECHAT_SEND_PATH)) == 1


@pytest.mark.parametrize("errcode", [40001, 42001])
def test_wechat_refused_token_is_refreshed_once_and_the_message_sent_again(
    errcode, on, notify_db, fake_provider
):
    fake_provider.script(WECHAT_SEND_PATH, wechat_error(errcode, "invalid credential"))
    delivery, notification = add_delivery(notify_db, "wechat")

    outcome = send(WeChatChannel(on), notify_db, delivery, notification)

    assert outcome.status == "sent"
    tokens = fake_provider.received(WECHAT_TOKEN_PATH)
    assert [t.json["force_refresh"] for t in tokens] == [False, True]
    sends = fake_provider.received(WECHAT_SEND_PATH)
    assert [s.query["access_token"] for s in sends] == ["token-1", "token-2"]
    assert token_row(notify_db).token == "token-2"


def test_wechat_token_refused_twice_is_tried_again_later_not_in_a_loop(
    on, notify_db, fake_provider
):
    fake_provider.script(
        WECHAT_SEND_PATH, wechat_error(40001, "invalid"), wechat_error(40001, "invalid")
    )
    delivery, notification = add_delivery(notify_db, "wechat")

    outcome = send(WeChatChannel(on), notify_db, delivery, notification)

    assert outcome.status == "retry"
    assert len(fake_provider.received(WECHAT_SEND_PATH)) == 2
    assert len(fake_provider.received(WECHAT_TOKEN_PATH)) == 2


def test_wechat_45009_quota_is_retried_after_a_long_pause(on, notify_db, fake_provider):
    fake_provider.script(WECHAT_SEND_PATH, wechat_error(45009, "reach max api daily quota limit"))
    delivery, notification = add_delivery(notify_db, "wechat")

    outcome = send(WeChatChannel(on), notify_db, delivery, notification)

    assert outcome.status == "retry"
    assert outcome.min_delay >= 60


@pytest.mark.parametrize(
    ("errcode", "errmsg"),
    [
        (47003, "argument invalid! data.thing2.value exceed max length"),
        (40003, "invalid openid"),
        (40037, "invalid template_id"),
        (41030, "invalid page"),
    ],
)
def test_wechat_bad_openid_template_data_or_page_is_final_with_errmsg(
    errcode, errmsg, on, notify_db, fake_provider
):
    fake_provider.script(WECHAT_SEND_PATH, wechat_error(errcode, errmsg))
    delivery, notification = add_delivery(notify_db, "wechat")

    outcome = send(WeChatChannel(on), notify_db, delivery, notification)

    assert outcome.status == "failed"
    assert str(errcode) in outcome.reason and errmsg in outcome.reason
    assert len(fake_provider.received(WECHAT_SEND_PATH)) == 1


@pytest.mark.parametrize(
    "answer",
    [
        wechat_error(-1, "system error"),
        Answer(502, "<html>bad gateway</html>"),
        Answer(200, "<html>maintenance</html>"),
        Answer(200, wechat_ok().json, delay=1.5),  # longer than the 0.5 s timeout
    ],
    ids=["busy", "http-502", "not-json", "timeout"],
)
def test_wechat_busy_server_error_or_timeout_is_retried(answer, on, notify_db, fake_provider):
    fake_provider.script(WECHAT_SEND_PATH, answer)
    delivery, notification = add_delivery(notify_db, "wechat")

    outcome = send(WeChatChannel(on), notify_db, delivery, notification)

    assert outcome.status == "retry"
    assert outcome.reason


def test_wechat_without_a_token_sends_nothing_and_is_retried(on, notify_db, fake_provider):
    fake_provider.script(WECHAT_TOKEN_PATH, Answer(200, {"errcode": 40125, "errmsg": "bad"}))
    delivery, notification = add_delivery(notify_db, "wechat")

    outcome = send(WeChatChannel(on), notify_db, delivery, notification)

    assert outcome.status == "retry" and "40125" in outcome.reason
    assert fake_provider.received(WECHAT_SEND_PATH) == []
    assert token_row(notify_db) is None  # no half-made row left behind


def test_wechat_kind_without_a_template_is_final_and_sends_nothing(on, notify_db, fake_provider):
    delivery, notification = add_delivery(notify_db, "wechat", kind="news")

    outcome = send(WeChatChannel(on), notify_db, delivery, notification)

    assert outcome.status == "failed"
    assert fake_provider.received() == []


def test_wechat_token_is_fetched_once_and_reused_by_another_process(
    on, settings, notify_db, fake_provider
):
    first, first_n = add_delivery(notify_db, "wechat")
    second, second_n = add_delivery(notify_db, "wechat")
    # A second worker process: its own engine and its own channel, the same table.
    other_db = Database(settings.sqlalchemy_url, metadata=Base.metadata, producer="notify")
    try:
        assert send(WeChatChannel(on), notify_db, first, first_n).status == "sent"
        assert send(WeChatChannel(on), other_db, second, second_n).status == "sent"
    finally:
        other_db.dispose()

    assert len(fake_provider.received(WECHAT_TOKEN_PATH)) == 1
    sends = fake_provider.received(WECHAT_SEND_PATH)
    assert [s.query["access_token"] for s in sends] == ["token-1", "token-1"]
    row = token_row(notify_db)
    assert row.token == "token-1"
    assert abs((row.expires_at - utcnow()) - timedelta(seconds=7200)) < timedelta(seconds=30)


def test_wechat_token_is_refreshed_when_it_nears_expiry(on, notify_db, fake_provider):
    channel = WeChatChannel(on)
    delivery, notification = add_delivery(notify_db, "wechat")
    assert send(channel, notify_db, delivery, notification).status == "sent"
    # Four minutes left: inside the five-minute margin.
    with notify_db.transaction() as session:
        session.get(AccessToken, "wechat").expires_at = utcnow() + timedelta(minutes=4)

    later, later_n = add_delivery(notify_db, "wechat")
    assert send(channel, notify_db, later, later_n).status == "sent"

    tokens = fake_provider.received(WECHAT_TOKEN_PATH)
    assert [t.json["force_refresh"] for t in tokens] == [False, False]
    assert [s.query["access_token"] for s in fake_provider.received(WECHAT_SEND_PATH)] == [
        "token-1",
        "token-2",
    ]


def test_two_processes_needing_a_token_at_once_fetch_it_once(on, settings, fake_provider):
    # The token answer is slow, so both would fetch if the row lock did not make one wait.
    fake_provider.script(
        WECHAT_TOKEN_PATH, Answer(200, {"access_token": "only-one", "expires_in": 7200}, 0.3)
    )
    databases = [
        Database(settings.sqlalchemy_url, metadata=Base.metadata, producer="notify")
        for _ in range(2)
    ]
    start = threading.Barrier(2)
    tokens: list[str] = []

    def worker(db: Database) -> None:
        channel = WeChatChannel(on)
        start.wait()
        tokens.append(channel.tokens.get(db))

    threads = [threading.Thread(target=worker, args=(db,)) for db in databases]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    finally:
        for db in databases:
            db.dispose()

    assert tokens == ["only-one", "only-one"]
    assert len(fake_provider.received(WECHAT_TOKEN_PATH)) == 1


# --- SMS -------------------------------------------------------------------------------------


def test_sign_rpc_matches_aliyuns_published_example():
    # The worked example of Aliyun's SMS signature documentation (AccessKeySecret testSecret).
    parameters = {
        "AccessKeyId": "testId",
        "Action": "SendSms",
        "Format": "XML",
        "OutId": "123",
        "PhoneNumbers": "15300000001",
        "RegionId": "cn-hangzhou",
        "SignName": "阿里云短信测试专用",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "45e25e9b-0a6f-4070-8c85-2956eda1b466",
        "SignatureVersion": "1.0",
        "TemplateCode": "SMS_71390007",
        "TemplateParam": '{"customer":"test"}',
        "Timestamp": "2017-07-12T02:42:19Z",
        "Version": "2017-05-25",
    }

    assert sign_rpc(parameters, "testSecret") == "zJDF+Lrzhj/ThnlvIToysFRq6t4="
    assert sign_rpc(parameters, "otherSecret") != "zJDF+Lrzhj/ThnlvIToysFRq6t4="


def test_percent_encoding_follows_aliyuns_rules():
    assert percent_encode("a b*c~d/e+f") == "a%20b%2Ac~d%2Fe%2Bf"
    assert percent_encode("沙口") == "%E6%B2%99%E5%8F%A3"
    assert percent_encode("A-Z_a.z0~9") == "A-Z_a.z0~9"


def test_sms_request_is_signed_and_carries_template_and_parameters(on, notify_db, fake_provider):
    variables = {"ticket_no": "SKJ-20261128-0007", "due_at": "11月28日 21:00"}
    delivery, notification = add_delivery(
        notify_db, "sms", kind="assigned", address="13800138000", variables=variables
    )

    outcome = send(SmsChannel(on), notify_db, delivery, notification)

    assert outcome.status == "sent"
    (request,) = fake_provider.received(SMS_PATH)
    assert request.method == "GET"
    query = dict(request.query)
    signature = query.pop("Signature")
    assert query.pop("SignatureNonce") and query.pop("Timestamp").endswith("Z")
    assert query == {
        "AccessKeyId": SMS_KEY_ID,
        "Action": "SendSms",
        "Format": "JSON",
        "PhoneNumbers": "13800138000",
        "RegionId": "cn-hangzhou",
        "SignName": "沙口镇",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "TemplateCode": "SMS_100001",
        "TemplateParam": query["TemplateParam"],
        "Version": "2017-05-25",
    }
    assert json.loads(query["TemplateParam"]) == templates.sms_parameters("assigned", variables)
    # The receiver's check: recompute from what arrived, without the signature itself.
    unsigned = {k: v for k, v in request.query.items() if k != "Signature"}
    assert sign_rpc(unsigned, SMS_KEY_SECRET) == signature
    assert sign_rpc(unsigned, "a-wrong-secret") != signature
    # Aliyun's encoding on the wire: no "+" for spaces, the sign name in UTF-8 escapes.
    assert "+" not in request.raw_query
    assert "SignName=%E6%B2%99%E5%8F%A3%E9%95%87" in request.raw_query


def test_sms_uses_the_default_template_and_a_new_nonce_each_time(on, notify_db, fake_provider):
    channel = SmsChannel(on)
    for _ in range(2):
        delivery, notification = add_delivery(notify_db, "sms", kind="resolved")
        assert send(channel, notify_db, delivery, notification).status == "sent"

    requests_ = fake_provider.received(SMS_PATH)
    assert {r.query["TemplateCode"] for r in requests_} == {"SMS_100000"}
    assert len({r.query["SignatureNonce"] for r in requests_}) == 2


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (sms_answer("isv.BUSINESS_LIMIT_CONTROL", "触发号码天级流控"), "retry"),
        (sms_answer("Throttling.User", "Request was denied due to user flow control."), "retry"),
        (sms_answer("isp.SYSTEM_ERROR", "系统错误"), "retry"),
        (sms_answer("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号"), "failed"),
        (sms_answer("isv.TEMPLATE_MISSING_PARAMETERS", "模版缺少变量"), "failed"),
        (Answer(503, "<html>busy</html>"), "retry"),
        (Answer(200, sms_answer().json, delay=1.5), "retry"),
    ],
    ids=["limit", "throttling", "isp", "illegal-number", "isv-other", "http-503", "timeout"],
)
def test_sms_answers_come_to_retry_or_final_failure(answer, status, on, notify_db, fake_provider):
    fake_provider.script(SMS_PATH, answer)
    delivery, notification = add_delivery(notify_db, "sms")

    outcome = send(SmsChannel(on), notify_db, delivery, notification)

    assert outcome.status == status
    assert outcome.reason
    if isinstance(answer.json, dict) and answer.json.get("Code", "").endswith("LIMIT_CONTROL"):
        assert outcome.min_delay >= 60
        assert "isv.BUSINESS_LIMIT_CONTROL" in outcome.reason


# --- webhook ---------------------------------------------------------------------------------


def test_webhook_posts_the_message_signed_with_timestamp_and_delivery_id(
    on, notify_db, fake_provider
):
    delivery, notification = add_delivery(notify_db, "webhook", kind="resolved")

    outcome = send(WebhookChannel(on), notify_db, delivery, notification)

    assert outcome.status == "sent"
    (request,) = fake_provider.received(WEBHOOK_PATH)
    assert request.method == "POST"
    assert request.json == {
        "id": str(delivery.id),
        "event_id": str(notification.event_id),
        "kind": "resolved",
        "user_id": str(notification.user_id),
        "title": notification.title,
        "body": notification.body,
        "link": {"type": "issue", "id": notification.link_id},
        "created_at": notification.created_at.isoformat().replace("+00:00", "Z"),
    }
    headers = request.headers
    assert headers["X-Service365-Delivery"] == str(delivery.id)
    assert abs(int(headers["X-Service365-Timestamp"]) - time.time()) < 30
    assert headers["X-Service365-Signature"] == webhook_signature(
        WEBHOOK_SECRET, headers["X-Service365-Timestamp"], request.body
    )
    assert verify_webhook(
        WEBHOOK_SECRET,
        headers["X-Service365-Timestamp"],
        request.body,
        headers["X-Service365-Signature"],
        now=time.time(),
    )


def test_webhook_receiver_refuses_replays_tampering_old_times_and_wrong_secrets(
    on, notify_db, fake_provider
):
    delivery, notification = add_delivery(notify_db, "webhook")
    assert send(WebhookChannel(on), notify_db, delivery, notification).status == "sent"
    (request,) = fake_provider.received(WEBHOOK_PATH)
    headers, body = request.headers, request.body
    sent_at = int(headers["X-Service365-Timestamp"])
    receiver = WebhookReceiver(WEBHOOK_SECRET)

    assert receiver.accept(headers, body, sent_at + 2)
    assert not receiver.accept(headers, body, sent_at + 3)  # the same delivery again: a replay

    fresh = WebhookReceiver(WEBHOOK_SECRET)
    tampered = body.replace(b'"kind":"resolved"', b'"kind":"rejected"')
    assert tampered != body
    assert not fresh.accept(headers, tampered, sent_at)
    # A captured request re-sent with a new timestamp no longer matches its signature.
    assert not fresh.accept({**headers, "X-Service365-Timestamp": str(sent_at + 60)}, body, sent_at)
    assert not fresh.accept(headers, body, sent_at + 301)  # too old
    assert not fresh.accept(headers, body, sent_at - 301)  # from the future
    assert not WebhookReceiver("another-secret").accept(headers, body, sent_at)
    assert not fresh.accept({**headers, "X-Service365-Signature": "sha256=00"}, body, sent_at)
    unsigned = {k: v for k, v in headers.items() if k != "X-Service365-Signature"}
    assert not fresh.accept(unsigned, body, sent_at)
    assert not verify_webhook(WEBHOOK_SECRET, "yesterday", body, "sha256=00", sent_at)
    # None of the refusals used up the id: the genuine request still passes once.
    assert fresh.accept(headers, body, sent_at + 299)


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (Answer(200), "sent"),
        (Answer(204, ""), "sent"),
        (Answer(400), "failed"),
        (Answer(401), "failed"),
        (Answer(404), "failed"),
        (Answer(408), "retry"),
        (Answer(429), "retry"),
        (Answer(500), "retry"),
        (Answer(503), "retry"),
        (Answer(200, delay=1.5), "retry"),
    ],
    ids=lambda v: str(v.status) + ("-timeout" if v.delay else "") if isinstance(v, Answer) else v,
)
def test_webhook_status_comes_to_sent_retry_or_final_failure(
    answer, status, on, notify_db, fake_provider
):
    fake_provider.script(WEBHOOK_PATH, answer)
    delivery, notification = add_delivery(notify_db, "webhook")

    outcome = send(WebhookChannel(on), notify_db, delivery, notification)

    assert outcome.status == status


def test_webhook_goes_to_the_current_url_and_nothing_touches_the_token_table(
    settings, notify_db, fake_provider
):
    moved = channel_settings(settings, fake_provider, webhook_url=fake_provider.url + "/v2/hook")
    fake_provider.default("/v2/hook", Answer(200))
    delivery, notification = add_delivery(notify_db, "webhook")

    assert send(WebhookChannel(moved), notify_db, delivery, notification).status == "sent"
    assert [r.path for r in fake_provider.received()] == ["/v2/hook"]
    with notify_db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(AccessToken)) == 0
