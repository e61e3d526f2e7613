"""A local HTTP server that plays WeChat, the SMS provider and a township webhook for notify's
tests: it records every request and answers from a script the test sets.

Example::

    def test_x(fake_provider):
        fake_provider.script("/hook", Answer(500), Answer(200))  # then the default (200 {})
        fake_provider.default("/cgi-bin/stable_token", Answer(200, {"access_token": "T"}))
        ...
        assert [r.headers["X-Service365-Delivery"] for r in fake_provider.received("/hook")]

Answers for a path are taken in order; when the queue is empty the path's default answers,
and a path with neither gets ``404 {"errcode": 404}``. ``Answer(delay=...)`` holds the reply
that long (to make the client time out); a callable default builds the answer per request.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from notify import templates
from notify.models import Delivery, Notification
from shared.clock import utcnow


@dataclass(frozen=True)
class Answer:
    status: int = 200
    json: Any = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    """One request as the server saw it (``query`` keeps the raw string for signatures)."""

    method: str
    path: str
    raw_query: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Responder = Answer | Callable[[Received], Answer]


class FakeProvider:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._queues: dict[str, deque[Answer]] = defaultdict(deque)
        self._defaults: dict[str, Responder] = {}
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                received = Received(
                    method=self.command,
                    path=url.path,
                    raw_query=url.query,
                    query=dict(parse_qsl(url.query, keep_blank_values=True)),
                    headers={k: v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b"",
                )
                answer = fake._answer_for(received)
                if answer.delay:
                    time.sleep(answer.delay)  # the server is slow, on purpose
                raw = (
                    answer.json.encode()
                    if isinstance(answer.json, str)
                    else json.dumps(answer.json).encode()
                )
                try:
                    self.send_response(answer.status)
                    # WeChat answers JSON as text/plain; clients must not rely on the type.
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before the answer came

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll interval: shutdown() waits up to one interval, at every test's end.
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def _answer_for(self, received: Received) -> Answer:
        with self._lock:
            self.requests.append(received)
            queue = self._queues.get(received.path)
            if queue:
                return queue.popleft()
            responder = self._defaults.get(received.path)
        if responder is None:
            return Answer(404, {"errcode": 404, "errmsg": "not found"})
        return responder(received) if callable(responder) else responder

    # --- the script ------------------------------------------------------------------------

    def script(self, path: str, *answers: Answer) -> None:
        """Answer the next requests to ``path`` with these, in order."""
        with self._lock:
            self._queues[path].extend(answers)

    def default(self, path: str, answer: Responder) -> None:
        """Answer ``path`` with this whenever its script is used up."""
        with self._lock:
            self._defaults[path] = answer

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # --- life ------------------------------------------------------------------------------

    def __enter__(self) -> FakeProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# Answers the way the real providers do.
WECHAT_TOKEN_PATH = "/cgi-bin/stable_token"
WECHAT_SEND_PATH = "/cgi-bin/message/subscribe/send"
SMS_PATH = "/"
WEBHOOK_PATH = "/township/hook"


def wechat_ok() -> Answer:
    return Answer(200, {"errcode": 0, "errmsg": "ok", "msgid": 1234567890})


def wechat_error(errcode: int, errmsg: str = "error") -> Answer:
    return Answer(200, {"errcode": errcode, "errmsg": errmsg})


def sms_answer(code: str = "OK", message: str = "OK", status: int = 200) -> Answer:
    return Answer(
        status,
        {"Code": code, "Message": message, "RequestId": "F655A8D5-B967-440B-8683-DAD6FF8DE990"}
        | ({"BizId": "900619746936498440^0"} if code == "OK" else {}),
    )


class TokenIssuer:
    """``stable_token`` that hands out ``token-1``, ``token-2``, ... and remembers the calls."""

    def __init__(self, expires_in: int = 7200) -> None:
        self.expires_in = expires_in
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, received: Received) -> Answer:
        with self._lock:
            self.count += 1
            token = f"token-{self.count}"
        return Answer(200, {"access_token": token, "expires_in": self.expires_in})


@pytest.fixture
def fake_provider() -> Iterator[FakeProvider]:
    """The fake WeChat / SMS / webhook server: WeChat's token and send answer success and the
    webhook answers 200 until a test scripts otherwise."""
    with FakeProvider() as fake:
        fake.default(WECHAT_TOKEN_PATH, TokenIssuer())
        fake.default(WECHAT_SEND_PATH, wechat_ok())
        fake.default(SMS_PATH, sms_answer())
        fake.default(WEBHOOK_PATH, Answer(200, {"ok": True}))
        yield fake


# --- notify's side: settings pointing at the fake, and rows to send ------------------------------

APP_ID, APP_SECRET = "wx0123456789abcdef", "test-app-secret"
SMS_KEY_ID, SMS_KEY_SECRET = "LTAI-test-key", "test-key-secret"
WEBHOOK_SECRET = "township-shared-secret"


def channel_settings(settings, fake: FakeProvider, **overrides: Any):
    """``settings`` with every channel switched on and pointed at ``fake``."""
    values: dict[str, Any] = {
        "wechat_notify_enabled": True,
        "wechat_api_base": fake.url,
        "wechat_app_id": APP_ID,
        "wechat_app_secret": APP_SECRET,
        "wechat_templates": {"assigned": "tmpl-assigned", "resolved": "tmpl-resolved"},
        "wechat_miniprogram_state": "trial",
        "sms_enabled": True,
        "sms_api_base": fake.url,
        "sms_access_key_id": SMS_KEY_ID,
        "sms_access_key_secret": SMS_KEY_SECRET,
        "sms_templates": {"assigned": "SMS_100001"},
        "sms_default_template": "SMS_100000",
        "webhook_url": fake.url + WEBHOOK_PATH,
        "webhook_secret": WEBHOOK_SECRET,
        "channel_timeout_seconds": 0.5,
    }
    values.update(overrides)
    return settings.model_copy(update=values)


def add_delivery(
    db,
    channel: str,
    *,
    kind: str = "resolved",
    address: str | None = None,
    variables: dict[str, Any] | None = None,
    urgent: bool = False,
    due: Any = None,
    user_id: Any = None,
):
    """A notification and its pending delivery on ``channel``, written as ``services.tell``
    writes them (variables as stored JSON); returns ``(delivery, notification)``."""
    now = utcnow()
    user_id = user_id or uuid.uuid4()
    variables = variables if variables is not None else {"ticket_no": "SKJ-20261128-0007"}
    rendered = templates.render(kind, variables)
    link_type = templates.TEMPLATES[kind].link_type
    defaults = {"wechat": "o-resident-openid", "sms": "13800138000", "webhook": "hook"}
    with db.transaction() as session:
        notification = Notification(
            id=uuid.uuid4(),
            user_id=user_id,
            event_id=uuid.uuid4(),
            event_type="issue.resolved",
            kind=kind,
            title=rendered.title,
            body=rendered.body,
            link_type=link_type,
            link_id=str(uuid.uuid4()) if link_type in ("issue", "news", "post") else None,
            variables=variables,
            created_at=now,
        )
        session.add(notification)
        session.flush()
        delivery = Delivery(
            id=uuid.uuid4(),
            notification_id=notification.id,
            event_id=notification.event_id,
            user_id=user_id,
            channel=channel,
            kind=kind,
            address=address if address is not None else defaults[channel],
            status="pending",
            urgent=urgent,
            attempts=0,
            next_attempt_at=due or now,
            created_at=now,
        )
        session.add(delivery)
    return delivery, notification
