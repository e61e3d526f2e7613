"""create_app for scoring: the shared web plumbing plus scoring's routes."""

from __future__ import annotations

from flask import Flask

from scoring.models import Base, Person
from scoring.settings import ScoringSettings
from shared.auth import AccountCheck, Principal, refusal_reason
from shared.db import Database
from shared.settings import load_settings
from shared.web import create_service_app


def make_database(settings: ScoringSettings) -> Database:
    return Database(settings.sqlalchemy_url, metadata=Base.metadata, producer="scoring")


def _account_check(db: Database) -> AccountCheck:
    """Refuse a token whose account intake has since disabled, demoted or re-passworded (as told
    by ``account.upserted``); an account not heard of yet (or only as a name on an issue event)
    is let in on its signed token."""

    def check(principal: Principal) -> str | None:
        with db.transaction() as session:
            person = session.get(Person, principal.id)
            if person is None or not person.account_known:
                return None
            return refusal_reason(
                principal,
                active=person.active,
                roles=person.roles or [],
                tokens_valid_after=person.tokens_valid_after,
            )

    return check


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
        account_check=_account_check(db),
    )

    from scoring import api as routes

    api.register_blueprint(routes.blp)
    return app
