"""create_app for scoring: the shared web plumbing plus scoring's routes."""

from __future__ import annotations

from flask import Flask

from scoring.models import Base, Person
from scoring.settings import ScoringSettings
from shared.auth import snapshot_account_check
from shared.db import Database
from shared.settings import load_settings
from shared.web import create_service_app


def make_database(settings: ScoringSettings) -> Database:
    return Database(settings.sqlalchemy_url, metadata=Base.metadata, producer="scoring")


def create_app(settings: ScoringSettings | None = None) -> Flask:
    """Build the scoring web app; nothing connects until the first request needs it."""
    settings = settings or load_settings(ScoringSettings)
    db = make_database(settings)
    from scoring.handlers import SUBSCRIPTIONS

    app, api = create_service_app(
        settings,
        db,
        title="Service365 scoring 积分排行",
        subscriptions=SUBSCRIPTIONS,
        account_check=snapshot_account_check(db, Person, known=Person.account_known),
    )

    from scoring import api as routes

    api.register_blueprint(routes.blp)
    return app
