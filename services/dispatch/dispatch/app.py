"""create_app for dispatch: the shared web plumbing plus dispatch's routes and business gauges."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from dispatch.metrics import township_gauges
from dispatch.models import Base, Staff
from dispatch.settings import DispatchSettings
from shared.auth import snapshot_account_check
from shared.db import Database
from shared.metrics import ScrapeGauge
from shared.settings import load_settings
from shared.web import create_service_app


def make_database(settings: DispatchSettings) -> Database:
    return Database(settings.sqlalchemy_url, metadata=Base.metadata, producer="dispatch")


def _open_by_state_and_level(db: Database) -> Callable[[], list[tuple[tuple[str, str], int]]]:
    def read() -> list[tuple[tuple[str, str], int]]:
        from dispatch.stats import open_counts

        with db.transaction() as session:
            return [((state, level), count) for state, level, count in open_counts(session)]

    return read


def _overdue(db: Database) -> Callable[[], float]:
    def read() -> float:
        from dispatch.stats import overdue_count

        with db.transaction() as session:
            return overdue_count(session)

    return read


def create_app(settings: DispatchSettings | None = None) -> Flask:
    """Build the dispatch web app; nothing connects until the first request needs it."""
    settings = settings or load_settings(DispatchSettings)
    db = make_database(settings)
    from dispatch.handlers import SUBSCRIPTIONS

    app, api = create_service_app(
        settings,
        db,
        title="Service365 dispatch 网格化管理",
        subscriptions=SUBSCRIPTIONS,
        account_check=snapshot_account_check(db, Staff),
        scrape_gauges=[
            ScrapeGauge("issues_overdue", "Open work items past their deadline", _overdue(db)),
            ScrapeGauge(
                "issues_open",
                "Open work items by state and level",
                _open_by_state_and_level(db),
                labels=("state", "level"),
            ),
            *township_gauges(db),
        ],
    )

    from dispatch import api as routes

    api.register_blueprint(routes.blp)
    api.register_blueprint(routes.org)
    return app
