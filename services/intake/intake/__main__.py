"""``python -m intake migrate|web|worker|create-user|seed-demo``: intake's processes and tools."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from shared.cli import Command, default_environment, main

SERVICE = "intake"


def _commands() -> Mapping[str, Command]:
    try:
        from intake.commands import COMMANDS
    except ModuleNotFoundError as exc:
        if exc.name != "intake.commands":
            raise
        # migrate, web and worker still work; the missing tools are named once, plainly.
        print(
            "intake: 缺少 intake/commands.py，create-user 和 seed-demo 不可用 / "
            "intake.commands is missing: create-user and seed-demo are unavailable",
            file=sys.stderr,
        )
        return {}
    return COMMANDS


def _subscriptions() -> Mapping:
    """What intake consumes, from the one table in ``intake.handlers``."""
    from intake.handlers import SUBSCRIPTIONS

    return SUBSCRIPTIONS


def _make_database(settings):
    from intake.app import make_database

    return make_database(settings)


def run() -> None:
    """Entry point; the metrics folder is chosen before anything imports prometheus_client."""
    default_environment(SERVICE)
    from intake.settings import IntakeSettings

    main(
        SERVICE,
        settings_cls=IntakeSettings,
        create_app_path="intake.app:create_app()",
        make_database=_make_database,
        subscriptions=_subscriptions,
        commands=_commands(),
    )


if __name__ == "__main__":
    run()
