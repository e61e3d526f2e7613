"""``python -m notify migrate|web|stream|worker|declare|replay-dlq|demo``."""

from __future__ import annotations

from collections.abc import Mapping

from shared.cli import default_environment, main

SERVICE = "notify"


def _subscriptions() -> Mapping:
    """What notify consumes, from the one table in ``notify.handlers``."""
    from notify.handlers import SUBSCRIPTIONS

    return SUBSCRIPTIONS


def _make_database(settings):
    from notify.app import make_database
    from notify.handlers import use_settings

    use_settings(settings)
    return make_database(settings)


def _jobs(settings) -> list:
    """The worker's timer: send the deliveries that are due (WeChat, SMS, webhook)."""
    from notify import deliveries
    from shared.worker import PeriodicJob

    channels = deliveries.configured_channels(settings)
    if not channels:
        return []

    def deliver(db) -> None:
        deliveries.send_due(db, settings, channels)

    return [PeriodicJob("deliver", settings.delivery_poll_seconds, deliver)]


def run() -> None:
    """Entry point; the metrics folder is chosen before anything imports prometheus_client."""
    default_environment(SERVICE)
    from notify.commands import COMMANDS
    from notify.settings import NotifySettings

    main(
        SERVICE,
        settings_cls=NotifySettings,
        create_app_path="notify.app:create_app()",
        make_database=_make_database,
        subscriptions=_subscriptions,
        commands=COMMANDS,
        jobs=_jobs,
    )


if __name__ == "__main__":
    run()
