"""create_app for intake: the shared web plumbing plus intake's routes, issuer and limiter."""

from __future__ import annotations

import logging

from flask import Flask

from intake.models import Base, User
from intake.settings import IntakeSettings
from shared.auth import TokenIssuer, snapshot_account_check
from shared.db import Database
from shared.settings import load_settings
from shared.web import create_service_app

log = logging.getLogger(__name__)


def make_database(settings: IntakeSettings) -> Database:
    return Database(settings.sqlalchemy_url, metadata=Base.metadata, producer="intake")


def create_app(settings: IntakeSettings | None = None) -> Flask:
    """Build the intake web app; nothing connects until the first request needs it."""
    settings = settings or load_settings(IntakeSettings)
    db = make_database(settings)
    from intake.handlers import SUBSCRIPTIONS

    app, api = create_service_app(
        settings,
        db,
        title="Service365 intake 受理网关",
        subscriptions=SUBSCRIPTIONS,
        # Refuse a token whose account is gone, disabled, demoted or re-passworded since.
        account_check=snapshot_account_check(db, User, refuse_unknown=True),
    )
    if not settings.private_key_path.exists():
        raise SystemExit(
            f"找不到令牌私钥 / JWT private key not found at {settings.private_key_path}: "
            "set JWT_PRIVATE_KEY_FILE or run `make keys`"
        )
    app.extensions["token_issuer"] = TokenIssuer(
        settings.private_key_path.read_bytes(),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=settings.access_token_ttl_seconds,
    )
    if settings.wechat_mode == "dev":
        log.warning("WECHAT_MODE=dev: the login code is taken as the openid (never in production)")

    from intake import api as reports_api
    from intake import auth_api, open311
    from intake.limits import init_limiter
    from intake.media import storage_from_settings

    app.extensions["media_storage"] = storage_from_settings(settings)
    init_limiter(app, settings)
    api.register_blueprint(reports_api.blp)
    api.register_blueprint(auth_api.blp)
    app.register_blueprint(open311.blp)
    # Every body is capped at MAX_JSON_BODY_BYTES, but a 10 MB photo gets through with its
    # multipart framing; larger bodies get a JSON 413.
    app.extensions["request_guard"].allow_larger_body(
        app, f"{reports_api.blp.name}.upload_media", settings.media_max_bytes + 256 * 1024
    )
    return app
