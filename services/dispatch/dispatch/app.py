"""create_app for dispatch: the shared web plumbing plus dispatch's routes and business gauges."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from dispatch.models import Base
from dispatch.settings import DispatchSettings
from shared.db import Database
from shared.settings import load_settings
from shared.web import create_service_app


def make_database(settings: DispatchSettings) -> Database:
    return Database(settings.sqlalchemy_url, metadata=Base.metadata, producer="dispatch")


class OpenIssuesCollector:
    """``issues_open{service,state,level}``, counted in the database when /metrics is scraped.

    Why not ``scrape_gauges``: those carry only the ``service`` label.
    """

    def __init__(self, db: Database, service: str) -> None:
        self.db, self.service = db, service

    def collect(self):
        from dispatch.stats import open_counts

        try:
            with self.db.transaction() as session:
                counts = open_counts(session)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database is away
            return
        family = GaugeMetricFamily(
            "issues_open",
            "Open work items by state and level",
            labels=["service", "state", "level"],
        )
        for state, level, count in counts:
            family.add_metric([self.service, state, level], count)
        yield family


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
    app, api = create_service_app(
        settings,
        db,
        title="Service365 dispatch 网格化管理",
        scrape_gauges=[("issues_overdue", "Open work items past their deadline", _overdue(db))],
    )
    _add_labelled_gauges(app, OpenIssuesCollector(db, settings.service_name))

    from dispatch import api as routes

    api.register_blueprint(routes.blp)
    api.register_blueprint(routes.org)
    return app


def _add_labelled_gauges(app: Flask, collector: OpenIssuesCollector) -> None:
    """Append labelled scrape-time series to the shared /metrics answer."""
    shared_view = app.view_functions["metrics"]

    def metrics() -> Response:
        response = shared_view()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        response.set_data(response.get_data() + generate_latest(registry))
        return response

    app.view_functions["metrics"] = metrics
