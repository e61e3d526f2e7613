"""The channels beyond the inbox: WeChat subscribe messages, SMS (Aliyun-style signed API) and a
signed webhook for the township's own systems.

Every channel has one method, ``send(db, delivery, notification, person) -> Outcome``, and never
raises for a provider's error: it says ``sent``, ``retry`` (with the least delay the provider asks
for) or ``failed`` (final, with the reason kept on the delivery). ``notify.deliveries`` decides
when to try again. Base URLs are settings, so tests point them at a local server (WECHAT.md).

The receiver's side of the webhook is here too (``verify_webhook``, ``WebhookReceiver``): a
township system checks ``X-Service365-Signature`` (``sha256=`` + hex HMAC-SHA256 of
``f"{timestamp}.{raw body}"`` with the shared secret), refuses a timestamp more than five minutes
from its clock, and drops a ``X-Service365-Delivery`` id it has already taken (a replay)::

    receiver = WebhookReceiver(secret)
    if not receiver.accept(request.headers, request.get_data(), time.time()):
        return "", 401
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol
from urllib.parse import quote

import requests
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from notify import templates
from notify.models import AccessToken, Delivery, Notification, Person
from notify.settings import NotifySettings
from shared.clock import utcnow
from shared.db import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: ``sent``; ``retry`` no sooner than ``min_delay`` seconds;
    ``failed`` for good (``reason`` is kept as the delivery's ``last_error``)."""

    status: Literal["sent", "retry", "failed"]
    reason: str | None = None
    min_delay: float = 0.0

    @classmethod
    def sent(cls) -> Outcome:
        return cls("sent")

    @classmethod
    def retry(cls, reason: str, min_delay: float = 0.0) -> Outcome:
        return cls("retry", reason, min_delay)

    @classmethod
    def failed(cls, reason: str) -> Outcome:
        return cls("failed", reason)


class Channel(Protocol):
    name: str

    def send(
        self,
        db: Database,
        delivery: Delivery,
        notification: Notification,
        person: Person | None,
    ) -> Outcome: ...


def _transport_outcome(what: str, exc: requests.RequestException) -> Outcome:
    # Only the exception's type: requests' messages carry the URL, which may carry a token.
    return Outcome.retry(f"{what}: {type(exc).__name__}")


def _http_outcome(what: str, status: int) -> Outcome:
    """2xx → sent; 408/429/5xx → retry; any other 4xx → failed."""
    if 200 <= status < 300:
        return Outcome.sent()
    if status in (408, 429) or status >= 500:
        return Outcome.retry(f"{what}: HTTP {status}")
    return Outcome.failed(f"{what}: HTTP {status}")


# --- WeChat subscribe messages ---------------------------------------------------------------

WECHAT_TOKEN_NAME = "wechat"
# 40001 invalid credential, 42001 expired, 40014 invalid token: fetch a new one and send again.
WECHAT_TOKEN_ERRCODES = frozenset({40001, 42001, 40014})
# Wrong openid, template, data or page: sending again cannot help.
WECHAT_FINAL_ERRCODES = frozenset({40003, 40037, 47003, 41030})
WECHAT_UNSUBSCRIBED = 43101
WECHAT_QUOTA = 45009
# The daily quota is spent (45009): no point trying again within minutes.
WECHAT_QUOTA_RETRY_SECONDS = 600.0
# Where a message opens the mini-program, by the notification's link type.
WECHAT_PAGES = {
    "issue": "pages/issue/detail?id={id}",
    "news": "pages/news/detail?id={id}",
    "post": "pages/party/detail?id={id}",
    "board": "pages/board/index",
    "callbacks": "pages/callbacks/index",
}


def wechat_page(link_type: str | None, link_id: str | None) -> str | None:
    """The mini-program page a message opens, or None (WeChat then opens nothing)."""
    pattern = WECHAT_PAGES.get(link_type or "")
    if pattern is None or ("{id}" in pattern and not link_id):
        return None
    return pattern.format(id=link_id)


def _as_time(value: Any) -> Any:
    """An ISO-8601 string (how variables come back from the JSON column) as an aware datetime;
    anything else unchanged. A time without a zone is taken as UTC, as notify stores them."""
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def wechat_variables(kind: str, variables: Mapping[str, Any]) -> dict[str, Any]:
    """The stored variables with the ones behind the template's ``time``/``date`` keys turned
    back into datetimes, so ``templates.wechat_data`` shows them as WeChat wants them."""
    revived = dict(variables)
    for key, pattern in templates.TEMPLATES[kind].wechat.items():
        if key.rstrip("0123456789") in ("time", "date"):
            name = pattern.strip("{}")
            if name in revived:
                revived[name] = _as_time(revived[name])
    return revived


class TokenUnavailable(Exception):
    """WeChat gave no access token (transport error or errcode); the send is tried later."""


class WeChatTokens:
    """The app's access token, shared by every process through the ``access_tokens`` row.

    Read without a lock while it is fresh; when it is missing, near expiry or refused, one
    process fetches under the row's lock (``SELECT ... FOR UPDATE``) and the others, waiting on
    that lock, find the new token instead of fetching their own. ``stable_token`` is used so a
    fetch does not invalidate the token other processes are sending with (WECHAT.md).
    """

    def __init__(self, settings: NotifySettings, clock=utcnow) -> None:
        self.settings = settings
        self.base_url = settings.wechat_api_base.rstrip("/")
        self.clock = clock

    def _fresh(self, row: AccessToken | None) -> bool:
        if row is None or not row.token:
            return False
        margin = timedelta(seconds=self.settings.wechat_token_refresh_margin_seconds)
        return row.expires_at - margin > self.clock()

    def get(self, db: Database, *, refused: str | None = None) -> str:
        """A token to send with; ``refused`` is one WeChat just called invalid or expired."""
        if refused is None:
            with db.transaction() as session:
                row = session.get(AccessToken, WECHAT_TOKEN_NAME)
                if self._fresh(row):
                    return row.token
        with db.transaction() as session:
            dialect = postgresql if db.engine.dialect.name == "postgresql" else sqlite
            # Make sure the row exists, so there is something to lock (rolled back with us).
            session.execute(
                dialect.insert(AccessToken)
                .values(
                    name=WECHAT_TOKEN_NAME,
                    token="",
                    expires_at=datetime(1970, 1, 1, tzinfo=UTC),
                    fetched_at=self.clock(),
                )
                .on_conflict_do_nothing(index_elements=["name"])
            )
            row = session.execute(
                sa.select(AccessToken)
                .where(AccessToken.name == WECHAT_TOKEN_NAME)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).scalar_one()
            # Another process may have fetched while we waited for the lock.
            if self._fresh(row) and row.token != refused:
                return row.token
            token, expires_in = self._fetch(force_refresh=refused is not None)
            now = self.clock()
            row.token = token
            row.expires_at = now + timedelta(seconds=expires_in)
            row.fetched_at = now
            return token

    def _fetch(self, *, force_refresh: bool) -> tuple[str, int]:
        try:
            response = requests.post(
                f"{self.base_url}/cgi-bin/stable_token",
                json={
                    "grant_type": "client_credential",
                    "appid": self.settings.wechat_app_id,
                    "secret": self.settings.wechat_app_secret,
                    "force_refresh": force_refresh,
                },
                timeout=self.settings.channel_timeout_seconds,
            )
            answer = response.json()
        except requests.RequestException as exc:
            raise TokenUnavailable(f"stable_token: {type(exc).__name__}") from None
        except ValueError:
            raise TokenUnavailable(f"stable_token: HTTP {response.status_code}, no JSON") from None
        if not isinstance(answer, dict):
            raise TokenUnavailable("stable_token: unexpected answer")
        token = answer.get("access_token")
        if (answer.get("errcode") or 0) != 0 or not isinstance(token, str) or not token:
            raise TokenUnavailable(
                f"stable_token errcode {answer.get('errcode')}: {answer.get('errmsg')}"
            )
        expires_in = answer.get("expires_in")
        return token, expires_in if isinstance(expires_in, int) and expires_in > 0 else 7200


class WeChatChannel:
    """Subscribe messages to residents (``subscribeMessage.send``) at their openid."""

    name = "wechat"

    def __init__(self, settings: NotifySettings, clock=utcnow) -> None:
        self.settings = settings
        self.base_url = settings.wechat_api_base.rstrip("/")
        self.tokens = WeChatTokens(settings, clock)

    def message(self, delivery: Delivery, notification: Notification) -> dict[str, Any]:
        """The JSON body WeChat gets (without the token)."""
        kind = notification.kind
        body: dict[str, Any] = {
            "touser": delivery.address,
            "template_id": self.settings.wechat_templates.get(kind, ""),
            "data": templates.wechat_data(
                kind, wechat_variables(kind, notification.variables or {})
            ),
            "miniprogram_state": self.settings.wechat_miniprogram_state,
            "lang": "zh_CN",
        }
        page = wechat_page(notification.link_type, notification.link_id)
        if page:
            body["page"] = page
        return body

    def send(
        self,
        db: Database,
        delivery: Delivery,
        notification: Notification,
        person: Person | None,
    ) -> Outcome:
        if not delivery.address:
            return Outcome.failed("没有该用户的微信 openid")
        if not self.settings.wechat_templates.get(notification.kind):
            return Outcome.failed(f"未配置 {notification.kind} 类消息的微信模板")
        body = self.message(delivery, notification)
        refused: str | None = None
        for _ in range(2):  # a refused token is fetched again and the message sent once more
            try:
                token = self.tokens.get(db, refused=refused)
            except TokenUnavailable as exc:
                return Outcome.retry(f"微信 access_token 获取失败：{exc}")
            outcome, token_refused = self._post(token, body)
            if not token_refused:
                return outcome
            refused = token
        return outcome

    def _post(self, token: str, body: dict[str, Any]) -> tuple[Outcome, bool]:
        """(outcome, whether WeChat refused the token)."""
        try:
            response = requests.post(
                f"{self.base_url}/cgi-bin/message/subscribe/send",
                params={"access_token": token},
                data=json.dumps(body, ensure_ascii=False).encode(),
                headers={"Content-Type": "application/json; charset=utf-8"},
                timeout=self.settings.channel_timeout_seconds,
            )
        except requests.RequestException as exc:
            return _transport_outcome("wechat", exc), False
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            return Outcome.retry(f"wechat: HTTP {response.status_code}, no JSON"), False
        # WeChat answers errors with HTTP 200: the errcode decides, always.
        errcode = answer.get("errcode") or 0
        errmsg = str(answer.get("errmsg") or "")
        if errcode == 0:
            if response.status_code >= 300:
                return _http_outcome("wechat", response.status_code), False
            return Outcome.sent(), False
        if errcode in WECHAT_TOKEN_ERRCODES:
            return Outcome.retry(f"wechat errcode {errcode}: {errmsg}"), True
        if errcode == WECHAT_UNSUBSCRIBED:
            return Outcome.failed(
                "用户未订阅或已取消订阅（errcode 43101），消息仍在站内信中"
            ), False
        if errcode == WECHAT_QUOTA:
            return (
                Outcome.retry(f"wechat errcode 45009: {errmsg}", WECHAT_QUOTA_RETRY_SECONDS),
                False,
            )
        if errcode in WECHAT_FINAL_ERRCODES:
            return Outcome.failed(f"wechat errcode {errcode}: {errmsg}"), False
        # -1 (system busy) and anything unknown: try again later, a bounded number of times.
        return Outcome.retry(f"wechat errcode {errcode}: {errmsg}"), False


# --- SMS (Aliyun-style SendSms) --------------------------------------------------------------

# Per-number and account limits: a later try may pass.
SMS_THROTTLE_CODES = frozenset({"isv.BUSINESS_LIMIT_CONTROL", "isv.DAY_LIMIT_CONTROL"})
SMS_THROTTLE_RETRY_SECONDS = 60.0


def percent_encode(value: str) -> str:
    """Aliyun's percent-encoding: UTF-8, only ``A-Z a-z 0-9 - _ . ~`` left as they are (so a
    space is ``%20``, ``*`` is ``%2A`` and ``~`` stays)."""
    return quote(value, safe="~")


def sign_rpc(parameters: Mapping[str, str], secret: str, method: str = "GET") -> str:
    """Aliyun RPC signature (SignatureVersion 1.0): base64 of HMAC-SHA1 with ``secret + "&"``
    over ``METHOD&%2F&`` + the percent-encoded, sorted, percent-encoded query."""
    canonical = "&".join(
        f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(parameters.items())
    )
    to_sign = f"{method}&{percent_encode('/')}&{percent_encode(canonical)}"
    digest = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signed_query(parameters: Mapping[str, str], secret: str) -> str:
    """The query string to send: the parameters plus their ``Signature``, Aliyun-encoded."""
    signed = {**parameters, "Signature": sign_rpc(parameters, secret)}
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(signed.items()))


class SmsChannel:
    """Text messages through an Aliyun-style ``SendSms`` API at the person's phone number."""

    name = "sms"

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings
        self.base_url = settings.sms_api_base.rstrip("/")

    def parameters(
        self, delivery: Delivery, notification: Notification, *, now: datetime | None = None
    ) -> dict[str, str]:
        """The request's parameters before signing (a new nonce and timestamp each time)."""
        kind = notification.kind
        template = self.settings.sms_templates.get(kind) or self.settings.sms_default_template
        moment = (now or utcnow()).astimezone(UTC)
        return {
            "AccessKeyId": self.settings.sms_access_key_id,
            "Action": "SendSms",
            "Format": "JSON",
            "PhoneNumbers": delivery.address,
            "RegionId": "cn-hangzhou",
            "SignName": self.settings.sms_sign_name,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": str(uuid.uuid4()),
            "SignatureVersion": "1.0",
            "TemplateCode": template,
            "TemplateParam": json.dumps(
                templates.sms_parameters(kind, notification.variables or {}),
                ensure_ascii=False,
                separators=(",", ":"),
            ),
            "Timestamp": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": "2017-05-25",
        }

    def send(
        self,
        db: Database,
        delivery: Delivery,
        notification: Notification,
        person: Person | None,
    ) -> Outcome:
        if not delivery.address:
            return Outcome.failed("没有该用户的手机号")
        parameters = self.parameters(delivery, notification)
        if not parameters["TemplateCode"]:
            return Outcome.failed(f"未配置 {notification.kind} 类消息的短信模板")
        query = signed_query(parameters, self.settings.sms_access_key_secret)
        try:
            response = requests.get(
                f"{self.base_url}/?{query}", timeout=self.settings.channel_timeout_seconds
            )
        except requests.RequestException as exc:
            return _transport_outcome("sms", exc)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        code = answer.get("Code") if isinstance(answer, dict) else None
        if not isinstance(code, str):
            if response.status_code < 300:
                return Outcome.retry(f"sms: HTTP {response.status_code} without a Code")
            return _http_outcome("sms", response.status_code)
        message = f"sms {code}: {answer.get('Message') or ''}".strip()
        if code == "OK":
            return Outcome.sent()
        if code in SMS_THROTTLE_CODES or code.startswith("Throttling"):
            return Outcome.retry(message, SMS_THROTTLE_RETRY_SECONDS)
        if code.startswith("isv."):
            return Outcome.failed(message)
        # isp.* (the provider's side), SignatureNonceUsed, HTTP 5xx and the unknown: later.
        return Outcome.retry(message)


# --- webhook ---------------------------------------------------------------------------------

WEBHOOK_TOLERANCE_SECONDS = 300


def webhook_signature(secret: str, timestamp: str | int, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256(secret, ``f"{timestamp}.{body}"``)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _unix(now: datetime | float) -> float:
    return now.timestamp() if isinstance(now, datetime) else float(now)


def verify_webhook(
    secret: str,
    timestamp: str | int | None,
    body: bytes,
    signature: str | None,
    now: datetime | float,
    tolerance: float = WEBHOOK_TOLERANCE_SECONDS,
) -> bool:
    """The receiver's check: the signature matches this body and timestamp (compared in
    constant time), and the timestamp is within ``tolerance`` seconds of ``now``, so a request
    captured earlier cannot be played again later. Drop repeated delivery ids as well
    (``WebhookReceiver``): within the tolerance a copy carries a valid signature."""
    if not secret or not timestamp or not signature:
        return False
    try:
        sent_at = int(str(timestamp))
    except ValueError:
        return False
    if abs(_unix(now) - sent_at) > tolerance:
        return False
    expected = webhook_signature(secret, str(timestamp), body)
    return hmac.compare_digest(expected.encode(), signature.strip().encode())


class WebhookReceiver:
    """A township system's side: ``verify_webhook`` plus forgetting nothing it took within the
    tolerance, so a replayed request (same ``X-Service365-Delivery``) is refused."""

    def __init__(self, secret: str, tolerance: float = WEBHOOK_TOLERANCE_SECONDS) -> None:
        self.secret = secret
        self.tolerance = tolerance
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def accept(self, headers: Mapping[str, str], body: bytes, now: datetime | float) -> bool:
        lowered = {k.lower(): v for k, v in headers.items()}
        delivery_id = lowered.get("x-service365-delivery")
        if not delivery_id or not verify_webhook(
            self.secret,
            lowered.get("x-service365-timestamp"),
            body,
            lowered.get("x-service365-signature"),
            now,
            self.tolerance,
        ):
            return False
        moment = _unix(now)
        with self._lock:
            # Older ids can go: their timestamps are refused anyway.
            horizon = moment - 2 * self.tolerance
            self._seen = {k: t for k, t in self._seen.items() if t >= horizon}
            if delivery_id in self._seen:
                return False
            self._seen[delivery_id] = moment
        return True


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


class WebhookChannel:
    """A signed JSON POST to the township's own system (``WEBHOOK_URL``)."""

    name = "webhook"

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings

    @staticmethod
    def payload(delivery: Delivery, notification: Notification) -> dict[str, Any]:
        return {
            "id": str(delivery.id),
            "event_id": str(notification.event_id),
            "kind": notification.kind,
            "user_id": str(notification.user_id),
            "title": notification.title,
            "body": notification.body,
            "link": {"type": notification.link_type, "id": notification.link_id},
            "created_at": _iso(notification.created_at),
        }

    def send(
        self,
        db: Database,
        delivery: Delivery,
        notification: Notification,
        person: Person | None,
    ) -> Outcome:
        raw = json.dumps(
            self.payload(delivery, notification), ensure_ascii=False, separators=(",", ":")
        ).encode()
        timestamp = str(int(time.time()))
        try:
            response = requests.post(
                self.settings.webhook_url,
                data=raw,
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "X-Service365-Timestamp": timestamp,
                    "X-Service365-Signature": webhook_signature(
                        self.settings.webhook_secret, timestamp, raw
                    ),
                    "X-Service365-Delivery": str(delivery.id),
                },
                timeout=self.settings.channel_timeout_seconds,
            )
        except requests.RequestException as exc:
            return _transport_outcome("webhook", exc)
        return _http_outcome("webhook", response.status_code)
