"""dispatch's own commands: ``python -m dispatch scheduler`` (and ``scheduler --once``)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from dispatch.app import make_database
from dispatch.settings import DispatchSettings
from shared.cli import Command
from shared.logging import configure_logging


def add_scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--once", action="store_true", help="只运行一遍后退出 run one pass and exit (for cron)"
    )


def run_scheduler(args: argparse.Namespace, settings: DispatchSettings) -> int:
    """Reminders, overdue flags, escalation, auto-close and callback sampling on a timer."""
    from dispatch import scheduler

    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    db = make_database(settings)
    try:
        if args.once:
            print(json.dumps(asdict(scheduler.run_once(db, settings))))
        else:
            scheduler.run_scheduler(settings, db)
    finally:
        db.dispose()
    return 0


COMMANDS: dict[str, Command] = {
    "scheduler": Command(
        "定时任务：到期提醒、超期、升级、自动关闭、回访抽样 run the scheduler",
        add_scheduler_arguments,
        run_scheduler,
    ),
}
