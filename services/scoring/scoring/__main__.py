"""``python -m scoring migrate|web|worker|declare|replay-dlq|rebuild|publish-board``."""

from __future__ import annotations

from collections.abc import Mapping

from shared.cli import default_environment, main

SERVICE = "scoring"


def _subscriptions() -> Mapping:
    """What scoring consumes, from the one table in ``scoring.handlers``."""
    from scoring.handlers import SUBSCRIPTIONS

    return SUBSCRIPTIONS


def _make_database(settings):
    from scoring.app import make_database
    from scoring.handlers import use_settings

    use_settings(settings)
    return make_database(settings)


def _jobs(settings) -> list:
    """The worker's timers: last month's 红黑榜 once the month is over (if switched on)."""
    from scoring import boards
    from shared.worker import PeriodicJob

    def publish(db) -> None:
        with db.transaction() as session:
            boards.publish_last_month(session, settings)

    if not settings.publish_board_monthly:
        return []
    return [PeriodicJob("publish-board", settings.publish_board_check_seconds, publish)]


def run() -> None:
    """Entry point; the metrics folder is chosen before anything imports prometheus_client."""
    default_environment(SERVICE)
    from scoring.commands import COMMANDS
    from scoring.settings import ScoringSettings

    main(
        SERVICE,
        settings_cls=ScoringSettings,
        create_app_path="scoring.app:create_app()",
        make_database=_make_database,
        subscriptions=_subscriptions,
        commands=COMMANDS,
        jobs=_jobs,
    )


if __name__ == "__main__":
    run()
