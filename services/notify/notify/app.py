"""create_app for notify: the shared web plumbing plus the inbox, preferences and deliveries."""

from __future__ import annotations

from flask import Flask

from notify import services
from notify.models import Base, Person
from notify.settings import NotifySettings
from shared.auth import AccountCheck, Principal, refusal_reason
from shared.db import Database
from shared.metrics import ScrapeGauge
from shared.settings import load_settings
from shared.web import create_service_app


def make_database(settings: NotifySettings) -> Database:
    return Database(settings.sqlalchemy_url, metadata=Base.metadata, producer="notify")


def _account_check(db: Database) -> AccountCheck:
    """Refuse a token whose account intake has since disabled, demoted or re-passworded (as told
    by ``account.upserted``); an account not heard of yet is let in on its signed token."""

    def check(principal: Principal) -> str | None:
        with db.transaction() as session:
            person = session.get(Person, principal.id)
            if person is None or person.revision is None:
                return None
            return refusal_reason(
                principal,
                active=person.active,
                roles=person.roles or [],
                tokens_valid_after=person.tokens_valid_after,
            )

    return check


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
        account_check=_account_check(db),
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
