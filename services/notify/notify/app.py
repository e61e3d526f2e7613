"""create_app for notify: the shared web plumbing plus the inbox, preferences and deliveries."""

from __future__ import annotations

from flask import Flask

from notify import services
from notify.models import Base, Person
from notify.settings import NotifySettings
from shared.auth import AccountCheck, snapshot_account_check
from shared.db import Database
from shared.metrics import ScrapeGauge
from shared.settings import load_settings
from shared.web import create_service_app


def make_database(settings: NotifySettings) -> Database:
    return Database(settings.sqlalchemy_url, metadata=Base.metadata, producer="notify")


def account_check(db: Database) -> AccountCheck:
    """Tokens checked against the accounts notify heard of (a person made from an event before
    their account's own event has no revision yet and is let in on the signed token)."""
    return snapshot_account_check(db, Person, known=Person.revision.is_not(None))


def create_app(settings: NotifySettings | None = None) -> Flask:
    """Build the notify web app; nothing connects until the first request needs it."""
    settings = settings or load_settings(NotifySettings)
    db = make_database(settings)
    from notify.handlers import SUBSCRIPTIONS

    app, api = create_service_app(
        settings,
        db,
        title="Service365 notify 消息通知",
        subscriptions=SUBSCRIPTIONS,
        account_check=account_check(db),
        scrape_gauges=[
            ScrapeGauge(
                "deliveries_pending",
                "Deliveries waiting to be sent (held ones included), by channel",
                lambda: services.pending_by_channel(db),
                labels=("channel",),
            ),
            ScrapeGauge(
                "deliveries_oldest_pending_seconds",
                "Age of the oldest pending delivery that is due now (0 when none waits)",
                lambda: services.oldest_pending_seconds(db),
            ),
        ],
    )

    from notify import api as routes

    api.register_blueprint(routes.blp)
    return app
