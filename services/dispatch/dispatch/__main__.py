"""``python -m dispatch migrate|web|worker|scheduler``: dispatch's processes."""

from __future__ import annotations

from collections.abc import Mapping

from shared.cli import default_environment, main

SERVICE = "dispatch"


def _subscriptions() -> Mapping:
    """What dispatch consumes, from the one table in ``dispatch.handlers``."""
    from dispatch.handlers import SUBSCRIPTIONS

    return SUBSCRIPTIONS


def _make_database(settings):
    from dispatch.app import make_database
    from dispatch.handlers import use_settings

    use_settings(settings)
    return make_database(settings)


def run() -> None:
    """Entry point; the metrics folder is chosen before anything imports prometheus_client."""
    default_environment(SERVICE)
    from dispatch.commands import COMMANDS
    from dispatch.settings import DispatchSettings

    main(
        SERVICE,
        settings_cls=DispatchSettings,
        create_app_path="dispatch.app:create_app()",
        make_database=_make_database,
        subscriptions=_subscriptions,
        commands=COMMANDS,
    )


if __name__ == "__main__":
    run()
