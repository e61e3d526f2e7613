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
    )


if __name__ == "__main__":
    run()
