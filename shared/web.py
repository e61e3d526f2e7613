"""The part of every service's ``create_app`` that is the same: errors, logging, auth, metrics,
health and readiness, OpenAPI and its docs page.

Example::

    def create_app(settings=None):
        settings = settings or load_settings(IntakeSettings)
        db = Database(settings.sqlalchemy_url, metadata=Base.metadata, producer="intake")
        app, api = create_service_app(settings, db, title="Service365 intake")
        api.register_blueprint(blp)
        return app
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import flask_swagger_ui
import marshmallow as ma
import pika
from flask import Flask, Response, current_app, g, jsonify, request, send_from_directory
from flask_smorest import Api
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

import shared.i18n  # noqa: F401 - Chinese validation messages
from shared.auth import AccountCheck, TokenVerifier, init_auth
from shared.consumer import Handler
from shared.db import Database
from shared.errors import Conflict, http_error_response, register_error_handlers
from shared.logging import configure_logging, correlation_id
from shared.metrics import ScrapeGauge, ScrapeTimeGauges, init_http_metrics, metrics_response
from shared.relay import oldest_pending_seconds, pending_count
from shared.request_guard import RequestGuard
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

CORRELATION_HEADER = "X-Correlation-ID"
# Swagger UI's files, served by every service itself (no third-party CDN in a government back end).
SWAGGER_UI_DIST = Path(flask_swagger_ui.__file__).parent / "dist"
SWAGGER_UI_ASSETS = "/docs/assets/"


class ErrorDetailSchema(ma.Schema):
    code = ma.fields.String(required=True, metadata={"description": "错误代码 machine code"})
    message = ma.fields.String(required=True, metadata={"description": "给人看的中文说明"})
    details = ma.fields.Raw(
        required=True, allow_none=True, metadata={"description": "字段级的说明（如有）"}
    )


class ErrorSchema(ma.Schema):
    """The error body every route answers with (DESIGN.md, ``shared.errors.error_body``)."""

    error = ma.fields.Nested(ErrorDetailSchema, required=True)


class ServiceApi(Api):
    """flask-smorest's Api, but its HTTP errors use our JSON error body, and its OpenAPI
    document says so (``default`` and 422 responses: ``ErrorSchema``, not flask-smorest's)."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException):  # type: ignore[override]
        return http_error_response(error)


XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def file_responses(description: str, *content_types: str) -> dict:
    """``@blp.doc(responses=file_responses("台账", "text/csv", XLSX))``: the documented 200 of a
    route that answers a file instead of JSON (its errors stay the JSON ``default``)."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {"200": {"description": description, "content": {t: binary for t in content_types}}}


def json_object_responses(description: str) -> dict:
    """The documented 200 of a route that answers a JSON object without a schema of its own."""
    schema = {"type": "object", "additionalProperties": True}
    return {
        "200": {"description": description, "content": {"application/json": {"schema": schema}}}
    }


class BrokerProbe:
    """Checks that RabbitMQ answers, remembering the answer for a few seconds.

    With ``topology`` (a service that consumes events), the check declares the service's
    exchange, queues and bindings as configured: a queue the broker holds with other arguments
    makes the service not ready, with the queue and the broker's reason in the answer.
    """

    def __init__(
        self,
        url: str,
        cache_seconds: float = 3.0,
        topology: Callable[[], str | None] | None = None,
    ) -> None:
        self.url = url
        self.cache_seconds = cache_seconds
        self.topology = topology
        self._checked_at = 0.0
        self._error: str | None = None

    def check(self) -> str | None:
        now = time.monotonic()
        if now - self._checked_at < self.cache_seconds:
            return self._error
        params = pika.URLParameters(self.url)
        params.socket_timeout = 2
        params.connection_attempts = 1
        params.blocked_connection_timeout = 2
        try:
            if self.topology is not None:
                conflict = self.topology()
                self._error = f"broker: configuration error: {conflict}" if conflict else None
            else:
                pika.BlockingConnection(params).close()
                self._error = None
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            self._error = f"broker: {type(exc).__name__}"
        self._checked_at = now
        return self._error


READINESS_WORDS = {
    "database": "数据库连接不上",
    "broker: configuration error": "消息队列的队列设置与现有的不一致",
    "broker": "消息队列（RabbitMQ）连接不上",
}


def readiness_message(problems: list[str]) -> str:
    """The on-call person's sentence for ``/readyz``'s problems (which stay for machines)."""
    said = []
    for problem in problems:
        words = next(w for key, w in READINESS_WORDS.items() if problem.startswith(key))
        if words not in said:
            said.append(words)
    return "服务未就绪：" + "；".join(said) + "。"


def create_service_app(
    settings: ServiceSettings,
    db: Database,
    *,
    title: str,
    scrape_gauges: list[ScrapeGauge] | None = None,
    subscriptions: Mapping[str, Handler] | None = None,
    account_check: AccountCheck | None = None,
) -> tuple[Flask, Api]:
    """A Flask app with everything every Service365 web process has.

    ``subscriptions`` (the service's table of event handlers) lets ``/readyz`` check that the
    service's queues can be declared as configured. ``account_check`` (principal → refusal
    reason or None) refuses tokens whose account has changed since (``shared.auth``)."""
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    app = Flask(settings.service_name)
    if settings.trusted_proxy_hops:
        # The client's address (rate limits, failed-login counts) from the trusted proxies'
        # X-Forwarded-For (and the scheme from X-Forwarded-Proto); any more entries are the
        # client's own and not trusted.
        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    app.config.update(
        JSON_AS_ASCII=False,
        API_TITLE=title,
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=SWAGGER_UI_ASSETS,
        API_SPEC_OPTIONS={
            "components": {
                "securitySchemes": {
                    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
                }
            }
        },
    )
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions["settings"] = settings
    app.extensions["db"] = db
    api = ServiceApi(app)
    register_error_handlers(app)

    @app.before_request
    def _correlate() -> None:
        incoming = request.headers.get(CORRELATION_HEADER, "")
        try:
            value = str(uuid.UUID(incoming))
        except ValueError:
            value = str(uuid.uuid4())
        g.correlation_token = correlation_id.set(value)

    @app.after_request
    def _echo_correlation(response: Response) -> Response:
        value = correlation_id.get()
        if value:
            response.headers[CORRELATION_HEADER] = value
        return response

    @app.teardown_request
    def _forget_correlation(_exc: BaseException | None) -> None:
        token = g.pop("correlation_token", None)
        if token is not None:
            correlation_id.reset(token)

    init_http_metrics(app, settings.service_name)
    # Body size cap, JSON depth limit and storable text, before any view (and after the
    # correlation id and the timer, so a refused request is still logged and counted).
    RequestGuard(settings.max_json_body_bytes, settings.max_json_depth).init_app(app)
    if settings.public_key_path.exists():
        init_auth(
            app,
            TokenVerifier(
                settings.public_key_path.read_bytes(),
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
            ),
            account_check=account_check,
        )
    else:
        raise SystemExit(
            f"找不到令牌公钥 / JWT public key not found at {settings.public_key_path}: "
            "set JWT_PUBLIC_KEY_FILE or run `make keys`"
        )

    topology = None
    if subscriptions:
        from shared.worker import consumer_for

        topology = consumer_for(settings, db, subscriptions).check_topology
    broker = BrokerProbe(settings.rabbitmq_url, topology=topology)
    app.extensions["broker_probe"] = broker
    has_outbox = "outbox" in db.metadata.tables
    gauges = ScrapeTimeGauges(
        [
            ScrapeGauge(
                "outbox_pending",
                "Outbox rows not yet confirmed by the broker",
                lambda: pending_count(db) if has_outbox else None,
            ),
            ScrapeGauge(
                "outbox_oldest_pending_seconds",
                "Age of the oldest outbox row not yet confirmed (0 when none waits)",
                lambda: oldest_pending_seconds(db) if has_outbox else None,
            ),
            *list(scrape_gauges or []),
        ],
        settings.service_name,
    )

    @app.get(SWAGGER_UI_ASSETS + "<path:filename>")
    def docs_assets(filename: str):
        return send_from_directory(SWAGGER_UI_DIST, filename, max_age=86400)

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok", "service": settings.service_name})

    @app.get("/readyz")
    def readyz():
        problems = []
        try:
            db.ping()
        except Exception as exc:  # noqa: BLE001 - the reason is the answer
            problems.append(f"database: {type(exc).__name__}")
        broker_problem = broker.check()
        if broker_problem:
            problems.append(broker_problem)
        if problems:
            body = {
                "status": "unavailable",
                "service": settings.service_name,
                "message": readiness_message(problems),
                "problems": problems,
            }
            return jsonify(body), 503
        return jsonify({"status": "ready", "service": settings.service_name})

    @app.get("/metrics")
    def metrics():
        return metrics_response(gauges)

    return app, api


@contextmanager
def request_transaction() -> Iterator[Session]:
    """The request's transaction on the app's database; a lost race on a unique key (two
    requests inserting the same row at once) is a 409 with a message, never a 500."""
    try:
        with current_app.extensions["db"].transaction() as session:
            yield session
    except IntegrityError:
        raise Conflict("数据已被他人同时修改，请刷新后重试。", code="integrity_conflict") from None
