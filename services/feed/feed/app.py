"""create_app for feed: the shared web plumbing plus feed's routes."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider

from feed.models import Base, Person
from feed.services import ViewCounter
from feed.settings import FeedSettings
from shared.auth import snapshot_account_check
from shared.db import Database
from shared.settings import load_settings
from shared.web import create_service_app


class HtmlSafeJSON(DefaultJSONProvider):
    """JSON whose ``<``, ``>`` and ``&`` are written as ``\\u003c`` ... (the same strings once
    parsed). Why: feed shows text residents and party members typed, and an answer that a
    browser or WebView ever sniffs or embeds as HTML must not carry a live ``<script>``."""

    ensure_ascii = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        text = super().dumps(obj, **kwargs)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def make_database(settings: FeedSettings) -> Database:
    return Database(settings.sqlalchemy_url, metadata=Base.metadata, producer="feed")


def create_app(settings: FeedSettings | None = None) -> Flask:
    """Build the feed web app; nothing connects until the first request needs it."""
    settings = settings or load_settings(FeedSettings)
    db = make_database(settings)
    from feed.handlers import SUBSCRIPTIONS

    app, api = create_service_app(
        settings,
        db,
        title="Service365 feed 魅力沙口集 · 党建朋友圈",
        subscriptions=SUBSCRIPTIONS,
        account_check=snapshot_account_check(db, Person, known=Person.account_known),
    )
    app.json = HtmlSafeJSON(app)
    app.extensions["view_counter"] = ViewCounter(
        db, settings.view_flush_seconds, settings.view_flush_views
    )

    @app.after_request
    def _no_sniffing(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    from feed import api as routes

    api.register_blueprint(routes.news)
    api.register_blueprint(routes.party)
    return app
