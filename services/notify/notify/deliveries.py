"""Sending the pending deliveries: claim one due row, send it, record what came of it.

Each delivery is claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` and its lock is held while
the channel's HTTP call runs, so two worker processes never send one delivery twice; the other
process skips the locked row and takes the next. A failure is tried again after an exponential
back-off with jitter, and after ``DELIVERY_MAX_ATTEMPTS`` the delivery is ``failed`` with its
last error (an admin may send it again: ``retry_delivery``). Quiet hours hold a delivery until
the window ends without counting an attempt.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from notify.channels import Channel, Outcome, SmsChannel, WebhookChannel, WeChatChannel
from notify.metrics import NOTIFICATIONS_SENT
from notify.models import Delivery, Notification, Person, Preference
from notify.settings import NotifySettings
from shared.clock import SHANGHAI, utcnow
from shared.db import Database, after_commit
from shared.errors import Conflict, NotFound

log = logging.getLogger(__name__)

# Quiet hours (the township's for SMS, a person's own) hold these channels; a webhook is a
# machine and is never held.
PERSONAL_QUIET_CHANNELS = frozenset({"wechat", "sms"})
LAST_ERROR_LENGTH = 500


def configured_channels(settings: NotifySettings) -> dict[str, Channel]:
    """The channels switched on in the settings, by name."""
    channels: dict[str, Channel] = {}
    if settings.wechat_notify_enabled:
        channels["wechat"] = WeChatChannel(settings)
    if settings.sms_enabled:
        channels["sms"] = SmsChannel(settings)
    if settings.webhook_url:
        channels["webhook"] = WebhookChannel(settings)
    return channels


# --- quiet hours -----------------------------------------------------------------------------


class QuietHours(Protocol):
    quiet_start: str | None
    quiet_end: str | None


def _clock_time(text: str | None) -> time | None:
    """``"22:30"`` → 22:30; anything unreadable means no window."""
    if not text:
        return None
    try:
        return time.fromisoformat(text)
    except ValueError:
        return None


def _window_end(start: time, end: time, local: datetime) -> datetime | None:
    """If ``local`` (Asia/Shanghai) lies in [start, end) — a window that may cross midnight —
    the local moment it ends; otherwise None. ``start == end`` is no window at all."""
    now = local.time().replace(tzinfo=None)
    day: date = local.date()
    if start == end:
        return None
    if start < end:
        inside, end_day = start <= now < end, day
    else:
        inside = now >= start or now < end
        end_day = day + timedelta(days=1) if now >= start else day
    if not inside:
        return None
    return datetime.combine(end_day, end, tzinfo=SHANGHAI)


def quiet_until(
    channel: str,
    urgent: bool,
    preference: QuietHours | None,
    settings: NotifySettings,
    now: datetime,
) -> datetime | None:
    """When a delivery on ``channel`` made or due at ``now`` may go out, if quiet hours hold
    it (the UTC moment the window ends); None when it may go now. SMS waits out the township's
    window (``SMS_QUIET_START``–``SMS_QUIET_END``), WeChat and SMS the person's own; urgent
    ones (overdue alerts) and webhooks are never held. Back-to-back windows are waited out."""
    if urgent:
        return None
    windows: list[tuple[time, time]] = []
    if channel == "sms":
        windows.append((settings.sms_quiet_start, settings.sms_quiet_end))
    if channel in PERSONAL_QUIET_CHANNELS and preference is not None:
        start, end = _clock_time(preference.quiet_start), _clock_time(preference.quiet_end)
        if start is not None and end is not None:
            windows.append((start, end))
    moment = now.astimezone(SHANGHAI)
    held = False
    # Each window ends within a day, so a few rounds reach a moment no window holds.
    for _ in range(len(windows) + 1):
        ends = [e for s, t in windows if (e := _window_end(s, t, moment)) is not None]
        if not ends:
            break
        moment, held = max(ends), True
    return moment.astimezone(UTC) if held else None


# --- back-off --------------------------------------------------------------------------------


def backoff_seconds(
    attempts: int,
    settings: NotifySettings,
    minimum: float = 0.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """The wait after the ``attempts``-th failed try: ``base * 2**(attempts-1)``, capped at the
    maximum, scaled by a random factor in [0.5, 1.0] (so retries of many deliveries spread
    out), and never below the provider's ``minimum``."""
    ceiling = min(
        settings.delivery_backoff_max_seconds,
        settings.delivery_backoff_base_seconds * 2 ** max(0, attempts - 1),
    )
    return max(minimum, ceiling * (0.5 + 0.5 * rand()))


# --- sending ---------------------------------------------------------------------------------


def _count(session: Session, channel: str, outcome: str) -> None:
    after_commit(
        session,
        lambda: NOTIFICATIONS_SENT.labels(service="notify", channel=channel, outcome=outcome).inc(),
    )


def _claim(session: Session, channels: Mapping[str, Any], now: datetime) -> Delivery | None:
    return session.execute(
        sa.select(Delivery)
        .where(
            Delivery.status == "pending",
            Delivery.next_attempt_at <= now,
            Delivery.channel.in_(list(channels)),
        )
        .order_by(Delivery.next_attempt_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).scalar_one_or_none()


def _attempt(
    db: Database,
    session: Session,
    channel: Channel,
    delivery: Delivery,
    notification: Notification | None,
) -> Outcome:
    if notification is None:
        return Outcome.failed("找不到对应的站内消息")
    person = session.get(Person, delivery.user_id)
    try:
        return channel.send(db, delivery, notification, person)
    except Exception as exc:  # a bug must not leave the row due for ever: count it, log it
        log.exception("delivery %s on %s raised", delivery.id, delivery.channel)
        return Outcome.retry(f"internal error: {type(exc).__name__}")


def _record(
    session: Session, delivery: Delivery, outcome: Outcome, settings: NotifySettings, now: datetime
) -> None:
    delivery.updated_at = now
    delivery.attempts += 1
    if outcome.status == "sent":
        delivery.status = "sent"
        delivery.sent_at = now
        _count(session, delivery.channel, "sent")
        return
    delivery.last_error = (outcome.reason or "unknown error")[:LAST_ERROR_LENGTH]
    if outcome.status == "failed" or delivery.attempts >= settings.delivery_max_attempts:
        delivery.status = "failed"
        _count(session, delivery.channel, "failed")
        log.warning(
            "delivery %s on %s failed after %d attempt(s): %s",
            delivery.id,
            delivery.channel,
            delivery.attempts,
            delivery.last_error,
        )
        return
    delay = backoff_seconds(delivery.attempts, settings, outcome.min_delay)
    delivery.next_attempt_at = now + timedelta(seconds=delay)
    _count(session, delivery.channel, "retry")
    log.warning(
        "delivery %s on %s: attempt %d/%d failed, next in %.0fs: %s",
        delivery.id,
        delivery.channel,
        delivery.attempts,
        settings.delivery_max_attempts,
        delay,
        delivery.last_error,
    )


def send_due(
    db: Database,
    settings: NotifySettings,
    channels: Mapping[str, Channel],
    now: datetime | None = None,
    limit: int | None = None,
) -> int:
    """Send the deliveries that are due on ``channels``, one row per transaction, until none is
    due or ``limit`` (``DELIVERY_BATCH_SIZE``) were handled; returns how many were handled
    (sent, rescheduled, held for quiet hours or failed). ``now`` is fixed in tests."""
    if not channels:
        return 0
    limit = settings.delivery_batch_size if limit is None else limit
    handled = 0
    while handled < limit:
        moment = now or utcnow()
        with db.transaction() as session:
            delivery = _claim(session, channels, moment)
            if delivery is None:
                break
            handled += 1
            personal = delivery.channel in PERSONAL_QUIET_CHANNELS and not delivery.urgent
            preference = session.get(Preference, delivery.user_id) if personal else None
            held = quiet_until(delivery.channel, delivery.urgent, preference, settings, moment)
            if held is not None:
                delivery.next_attempt_at = held
                delivery.updated_at = moment
                continue
            notification = session.get(Notification, delivery.notification_id)
            outcome = _attempt(db, session, channels[delivery.channel], delivery, notification)
            _record(session, delivery, outcome, settings, now or utcnow())
    return handled


def retry_delivery(
    session: Session, delivery_id: uuid.UUID, now: datetime | None = None
) -> Delivery:
    """An admin sends a failed delivery again: pending, due now, its attempts counted anew."""
    delivery = session.get(Delivery, delivery_id, with_for_update=True)
    if delivery is None:
        raise NotFound("未找到该发送记录。")
    if delivery.status != "failed":
        raise Conflict("只有发送失败的消息才能重新发送。", code="wrong_state")
    moment = now or utcnow()
    delivery.status = "pending"
    delivery.attempts = 0
    delivery.next_attempt_at = moment
    delivery.updated_at = moment
    session.flush()
    return delivery
