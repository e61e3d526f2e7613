"""The delivery loop against the real PostgreSQL and a local provider server: retries with
back-off, final failure, quiet hours, the admin's retry, and two workers racing for rows.
Time is driven by passing ``now``; nothing sleeps."""

from __future__ import annotations

import multiprocessing
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from fake_providers import (
    SMS_PATH,
    WEBHOOK_PATH,
    WECHAT_SEND_PATH,
    Answer,
    add_delivery,
    channel_settings,
    wechat_error,
)
from prometheus_client import REGISTRY

from notify import deliveries
from notify.channels import Outcome, SmsChannel, WebhookChannel, WeChatChannel
from notify.models import Base, Delivery, Preference
from shared.clock import SHANGHAI
from shared.db import Database
from shared.errors import Conflict, NotFound
from shared.testing import at


@pytest.fixture
def notify_db(settings):
    db = Database(settings.sqlalchemy_url, metadata=Base.metadata, producer="notify")
    yield db
    db.dispose()


@pytest.fixture
def on(settings, fake_provider):
    return channel_settings(
        settings,
        fake_provider,
        delivery_max_attempts=5,
        delivery_backoff_base_seconds=10.0,
        delivery_backoff_max_seconds=600.0,
    )


def load(db: Database, delivery_id: uuid.UUID) -> Delivery:
    with db.transaction() as session:
        return session.get(Delivery, delivery_id)


def sent_count(channel: str, outcome: str) -> float:
    labels = {"service": "notify", "channel": channel, "outcome": outcome}
    return REGISTRY.get_sample_value("notifications_sent_total", labels) or 0.0


def shanghai(text: str) -> datetime:
    """``shanghai("2026-11-28 23:30")``: that wall-clock time in Asia/Shanghai, as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI).astimezone(UTC)


# --- configuration ---------------------------------------------------------------------------


def test_only_the_channels_switched_on_are_configured(settings, on):
    assert deliveries.configured_channels(settings) == {}
    channels = deliveries.configured_channels(on)
    assert isinstance(channels["wechat"], WeChatChannel)
    assert isinstance(channels["sms"], SmsChannel)
    assert isinstance(channels["webhook"], WebhookChannel)
    just_hook = on.model_copy(update={"wechat_notify_enabled": False, "sms_enabled": False})
    assert list(deliveries.configured_channels(just_hook)) == ["webhook"]


# --- retries ---------------------------------------------------------------------------------


def test_a_channel_that_fails_three_times_then_recovers_delivers_exactly_once(
    on, notify_db, fake_provider
):
    fake_provider.script(WEBHOOK_PATH, Answer(503), Answer(500), Answer(429))
    delivery, _ = add_delivery(notify_db, "webhook")
    channels = deliveries.configured_channels(on)
    retries_before = sent_count("webhook", "retry")
    sent_before = sent_count("webhook", "sent")
    now = delivery.next_attempt_at

    for attempt in range(1, 4):
        assert deliveries.send_due(notify_db, on, channels, now=now) == 1
        row = load(notify_db, delivery.id)
        assert (row.status, row.attempts) == ("pending", attempt)
        assert row.next_attempt_at > now and row.last_error.startswith("webhook: HTTP")
        # Not due yet: a pass just before the retry time sends nothing.
        before = row.next_attempt_at - timedelta(milliseconds=1)
        assert deliveries.send_due(notify_db, on, channels, now=before) == 0
        now = row.next_attempt_at
    assert deliveries.send_due(notify_db, on, channels, now=now) == 1
    assert deliveries.send_due(notify_db, on, channels, now=now + timedelta(days=1)) == 0

    row = load(notify_db, delivery.id)
    assert (row.status, row.attempts, row.sent_at) == ("sent", 4, now)
    ids = [r.headers["X-Service365-Delivery"] for r in fake_provider.received(WEBHOOK_PATH)]
    assert ids == [str(delivery.id)] * 4  # three refused, one taken: delivered once
    assert sent_count("webhook", "retry") - retries_before == 3
    assert sent_count("webhook", "sent") - sent_before == 1


def test_a_channel_that_keeps_failing_ends_failed_after_max_attempts_with_the_error(
    on, notify_db, fake_provider
):
    fake_provider.default(WEBHOOK_PATH, Answer(503))
    delivery, _ = add_delivery(notify_db, "webhook")
    channels = deliveries.configured_channels(on)
    failed_before = sent_count("webhook", "failed")
    now = delivery.next_attempt_at

    for _ in range(on.delivery_max_attempts):
        assert deliveries.send_due(notify_db, on, channels, now=now) == 1
        now = load(notify_db, delivery.id).next_attempt_at
    assert deliveries.send_due(notify_db, on, channels, now=now + timedelta(days=30)) == 0

    row = load(notify_db, delivery.id)
    assert (row.status, row.attempts, row.last_error) == ("failed", 5, "webhook: HTTP 503")
    assert row.sent_at is None
    assert len(fake_provider.received(WEBHOOK_PATH)) == 5
    assert sent_count("webhook", "failed") - failed_before == 1


def test_a_final_answer_fails_at_once_and_logs_the_delivery_id(
    on, notify_db, fake_provider, caplog
):
    fake_provider.script(WECHAT_SEND_PATH, wechat_error(43101, "user refuse to accept the msg"))
    delivery, _ = add_delivery(notify_db, "wechat")

    with caplog.at_level("WARNING", logger="notify.deliveries"):
        handled = deliveries.send_due(notify_db, on, deliveries.configured_channels(on))

    assert handled == 1
    row = load(notify_db, delivery.id)
    assert (row.status, row.attempts) == ("failed", 1)
    assert "43101" in row.last_error
    assert [r for r in caplog.records if str(delivery.id) in r.getMessage()]


def test_backoff_doubles_up_to_the_cap_with_jitter_between_half_and_full(on):
    # base 10 s, cap 600 s
    assert [deliveries.backoff_seconds(n, on, rand=lambda: 1.0) for n in range(1, 9)] == [
        10,
        20,
        40,
        80,
        160,
        320,
        600,
        600,
    ]
    assert deliveries.backoff_seconds(3, on, rand=lambda: 0.0) == 20
    assert deliveries.backoff_seconds(1, on, minimum=600, rand=lambda: 1.0) == 600
    rng = random.Random(7)
    samples = [deliveries.backoff_seconds(4, on, rand=rng.random) for _ in range(500)]
    assert all(40 <= s <= 80 for s in samples)
    assert max(samples) - min(samples) > 20  # spread, not one value


def test_retry_times_grow_within_the_jitter_bounds_when_sending(on, notify_db, fake_provider):
    fake_provider.default(WEBHOOK_PATH, Answer(500))
    rows = [add_delivery(notify_db, "webhook")[0] for _ in range(20)]
    channels = deliveries.configured_channels(on)
    now = max(r.next_attempt_at for r in rows)
    waits: dict[int, list[float]] = {1: [], 2: [], 3: []}

    for attempt in (1, 2, 3):
        assert deliveries.send_due(notify_db, on, channels, now=now) == 20
        for row in rows:
            wait = (load(notify_db, row.id).next_attempt_at - now).total_seconds()
            waits[attempt].append(wait)
        now += timedelta(seconds=on.delivery_backoff_base_seconds * 2**attempt)

    for attempt, values in waits.items():
        full = 10 * 2 ** (attempt - 1)
        assert all(full / 2 <= w <= full for w in values), (attempt, values)
        assert len(set(values)) > 1  # jitter: the twenty do not come back together


def test_a_provider_asking_for_a_long_pause_is_not_retried_sooner(on, notify_db, fake_provider):
    fake_provider.script(WECHAT_SEND_PATH, wechat_error(45009, "reach max api daily quota limit"))
    delivery, _ = add_delivery(notify_db, "wechat")
    now = delivery.next_attempt_at

    deliveries.send_due(notify_db, on, deliveries.configured_channels(on), now=now)

    row = load(notify_db, delivery.id)
    assert row.status == "pending" and row.attempts == 1
    assert row.next_attempt_at - now >= timedelta(seconds=60)


def test_a_channel_that_raises_is_counted_as_a_failed_attempt_not_stuck(on, notify_db):
    class FakeBrokenChannel:
        name = "webhook"

        def send(self, db, delivery, notification, person) -> Outcome:
            raise KeyError("a bug")

    delivery, _ = add_delivery(notify_db, "webhook")

    handled = deliveries.send_due(notify_db, on, {"webhook": FakeBrokenChannel()})

    assert handled == 1
    row = load(notify_db, delivery.id)
    assert (row.status, row.attempts) == ("pending", 1)
    assert "KeyError" in row.last_error


def test_only_due_rows_on_configured_channels_are_taken_oldest_first_up_to_the_limit(
    on, notify_db, fake_provider
):
    base = at("2026-11-28T02:00:00Z")
    late = add_delivery(notify_db, "webhook", due=base - timedelta(minutes=1))[0]
    early = add_delivery(notify_db, "webhook", due=base - timedelta(minutes=5))[0]
    future = add_delivery(notify_db, "webhook", due=base + timedelta(minutes=5))[0]
    sms = add_delivery(notify_db, "sms", due=base - timedelta(minutes=9))[0]
    hook_only = {"webhook": WebhookChannel(on)}

    assert deliveries.send_due(notify_db, on, hook_only, now=base, limit=1) == 1
    assert deliveries.send_due(notify_db, on, hook_only, now=base) == 1

    ids = [r.headers["X-Service365-Delivery"] for r in fake_provider.received(WEBHOOK_PATH)]
    assert ids == [str(early.id), str(late.id)]
    assert load(notify_db, future.id).status == "pending"
    assert load(notify_db, sms.id).status == "pending"
    assert fake_provider.received(SMS_PATH) == []


# --- quiet hours -----------------------------------------------------------------------------


def test_quiet_hours_hold_an_sms_until_seven_in_shanghai_and_let_an_overdue_alert_through(
    on, notify_db, fake_provider
):
    night = shanghai("2026-11-28 23:30")
    ordinary = add_delivery(notify_db, "sms", kind="resolved", due=night)[0]
    overdue = add_delivery(notify_db, "sms", kind="overdue", urgent=True, due=night)[0]
    channels = deliveries.configured_channels(on)

    assert deliveries.send_due(notify_db, on, channels, now=night) == 2

    held = load(notify_db, ordinary.id)
    assert (held.status, held.attempts) == ("pending", 0)
    assert held.next_attempt_at == shanghai("2026-11-29 07:00")
    assert load(notify_db, overdue.id).status == "sent"
    (request,) = fake_provider.received(SMS_PATH)
    assert request.query["PhoneNumbers"] == overdue.address
    assert request.query["TemplateCode"] == "SMS_100000"

    morning = shanghai("2026-11-29 07:00")
    assert deliveries.send_due(notify_db, on, channels, now=morning - timedelta(seconds=1)) == 0
    assert deliveries.send_due(notify_db, on, channels, now=morning) == 1
    row = load(notify_db, ordinary.id)
    assert (row.status, row.attempts, row.sent_at) == ("sent", 1, morning)


def test_a_persons_own_quiet_hours_hold_wechat_but_not_the_webhook(on, notify_db, fake_provider):
    noon = shanghai("2026-11-28 12:30")
    user_id = uuid.uuid4()
    with notify_db.transaction() as session:
        session.add(Preference(user_id=user_id, quiet_start="12:00", quiet_end="14:00"))
    wechat = add_delivery(notify_db, "wechat", user_id=user_id, due=noon)[0]
    hook = add_delivery(notify_db, "webhook", user_id=user_id, due=noon)[0]

    deliveries.send_due(notify_db, on, deliveries.configured_channels(on), now=noon)

    held = load(notify_db, wechat.id)
    assert (held.status, held.attempts) == ("pending", 0)
    assert held.next_attempt_at == shanghai("2026-11-28 14:00")
    assert fake_provider.received(WECHAT_SEND_PATH) == []
    assert load(notify_db, hook.id).status == "sent"


@pytest.mark.parametrize(
    ("channel", "local", "preference", "urgent", "until"),
    [
        # The township's SMS window, 22:00-07:00 across midnight.
        ("sms", "2026-11-28 21:59", None, False, None),
        ("sms", "2026-11-28 22:00", None, False, "2026-11-29 07:00"),
        ("sms", "2026-11-29 00:30", None, False, "2026-11-29 07:00"),
        ("sms", "2026-11-29 06:59", None, False, "2026-11-29 07:00"),
        ("sms", "2026-11-29 07:00", None, False, None),
        ("sms", "2026-11-28 23:00", None, True, None),
        ("wechat", "2026-11-28 23:00", None, False, None),
        ("webhook", "2026-11-28 23:00", ("21:00", "08:00"), False, None),
        # A person's own window, on WeChat and SMS.
        ("wechat", "2026-11-28 12:30", ("12:00", "14:00"), False, "2026-11-28 14:00"),
        ("wechat", "2026-11-28 14:00", ("12:00", "14:00"), False, None),
        ("wechat", "2026-11-28 23:30", ("23:00", "06:00"), False, "2026-11-29 06:00"),
        ("wechat", "2026-11-28 23:30", ("23:00", "06:00"), True, None),
        ("sms", "2026-11-28 12:30", ("12:00", "14:00"), False, "2026-11-28 14:00"),
        # Back to back: the township's night, then the person's lie-in.
        ("sms", "2026-11-28 23:00", ("06:30", "08:30"), False, "2026-11-29 08:30"),
        # No window: unset, empty, unreadable.
        ("wechat", "2026-11-28 12:30", (None, "14:00"), False, None),
        ("wechat", "2026-11-28 12:30", ("12:00", "12:00"), False, None),
        ("wechat", "2026-11-28 12:30", ("noon", "14:00"), False, None),
    ],
)
def test_quiet_until_gives_the_end_of_the_window_in_utc(
    settings, channel, local, preference, urgent, until
):
    prefs = Preference(quiet_start=preference[0], quiet_end=preference[1]) if preference else None

    held = deliveries.quiet_until(channel, urgent, prefs, settings, shanghai(local))

    assert held == (shanghai(until) if until else None)
    if held is not None:
        assert held.utcoffset() == timedelta(0)


# --- the admin's retry -----------------------------------------------------------------------


def test_an_admin_sends_a_failed_delivery_again(on, notify_db, fake_provider):
    fake_provider.script(WEBHOOK_PATH, Answer(410))
    delivery, _ = add_delivery(notify_db, "webhook")
    channels = deliveries.configured_channels(on)
    deliveries.send_due(notify_db, on, channels)
    assert load(notify_db, delivery.id).status == "failed"
    now = at("2026-11-28T03:00:00Z")

    with notify_db.transaction() as session:
        again = deliveries.retry_delivery(session, delivery.id, now=now)
        assert (again.status, again.attempts, again.next_attempt_at) == ("pending", 0, now)
    deliveries.send_due(notify_db, on, channels, now=now)

    row = load(notify_db, delivery.id)
    assert (row.status, row.attempts) == ("sent", 1)


def test_only_a_failed_delivery_can_be_sent_again(on, notify_db):
    pending, _ = add_delivery(notify_db, "webhook")

    with pytest.raises(Conflict) as refused, notify_db.transaction() as session:
        deliveries.retry_delivery(session, pending.id)
    assert refused.value.status == 409 and "失败" in refused.value.message
    with pytest.raises(NotFound), notify_db.transaction() as session:
        deliveries.retry_delivery(session, uuid.uuid4())
    assert load(notify_db, pending.id).status == "pending"


# --- two workers -----------------------------------------------------------------------------


def _worker(url: str, settings, ready, start, results) -> None:
    """One worker process: its own engine, channels and loop, until nothing is due."""
    db = Database(url, metadata=Base.metadata, producer="notify")
    channels = deliveries.configured_channels(settings)
    db.ping()
    ready.wait()
    start.wait()
    handled = 0
    while True:
        n = deliveries.send_due(db, settings, channels, limit=10)
        handled += n
        if n == 0:
            break
    db.dispose()
    results.put(handled)


def test_two_worker_processes_never_send_one_delivery_twice(on, notify_db, fake_provider):
    # A short answer delay keeps each row locked a while, as a real provider would.
    fake_provider.default(WEBHOOK_PATH, Answer(200, {"ok": True}, delay=0.005))
    hook_only = on.model_copy(update={"wechat_notify_enabled": False, "sms_enabled": False})
    created = [add_delivery(notify_db, "webhook")[0].id for _ in range(200)]
    context = multiprocessing.get_context("spawn")
    ready, start, results = context.Barrier(3), context.Event(), context.Queue()
    workers = [
        context.Process(
            target=_worker, args=(hook_only.sqlalchemy_url, hook_only, ready, start, results)
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        ready.wait(timeout=60)
        start.set()
        handled = [results.get(timeout=120) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert [w.exitcode for w in workers] == [0, 0]

    received = Counter(r.headers["X-Service365-Delivery"] for r in fake_provider.received())
    assert set(received) == {str(i) for i in created}
    assert set(received.values()) == {1}
    assert sum(handled) == 200 and min(handled) > 0  # both took part
    with notify_db.transaction() as session:
        statuses = session.execute(
            sa.select(Delivery.status, sa.func.count()).group_by(Delivery.status)
        ).all()
    assert dict(statuses) == {"sent": 200}
