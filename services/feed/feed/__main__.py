"""``python -m feed migrate|web|worker|declare|replay-dlq|seed-demo|publish-due``."""

from __future__ import annotations

from collections.abc import Mapping

from shared.cli import default_environment, main

SERVICE = "feed"


def _subscriptions() -> Mapping:
    """What feed consumes, from the one table in ``feed.handlers``."""
    from feed.handlers import SUBSCRIPTIONS

    return SUBSCRIPTIONS


def _make_database(settings):
    from feed.app import make_database

    return make_database(settings)


def _jobs(settings) -> list:
    """The worker's timer: scheduled news whose time has come is published."""
    from feed import services
    from shared.clock import utcnow
    from shared.worker import PeriodicJob

    def publish(db) -> None:
        with db.transaction() as session:
            services.publish_due(session, utcnow())

    return [
        PeriodicJob("publish-scheduled-news", settings.scheduled_publish_check_seconds, publish)
    ]


def run() -> None:
    """Entry point; the metrics folder is chosen before anything imports prometheus_client."""
    default_environment(SERVICE)
    from feed.commands import COMMANDS
    from feed.settings import FeedSettings

    main(
        SERVICE,
        settings_cls=FeedSettings,
        create_app_path="feed.app:create_app()",
        make_database=_make_database,
        subscriptions=_subscriptions,
        commands=COMMANDS,
        jobs=_jobs,
    )


if __name__ == "__main__":
    run()
