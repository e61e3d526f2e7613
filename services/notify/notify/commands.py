"""notify's own commands: ``stream`` (the server-sent events process) and ``demo-preferences``
(dev only: the demo township's residents follow the news, grid leaders keep quiet hours)."""

from __future__ import annotations

import argparse
import sys
import time

import sqlalchemy as sa

from notify.app import make_database
from notify.models import Person, PersonRole, Preference
from notify.settings import NotifySettings
from shared.cli import Command, fail
from shared.clock import utcnow


def run_stream(args: argparse.Namespace, settings: NotifySettings) -> int:
    from notify.stream import run_stream as start

    return start(args, settings)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait", type=float, default=120.0, help="等待账号同步的秒数 seconds to wait for accounts"
    )


def run_demo_preferences(args: argparse.Namespace, settings: NotifySettings) -> int:
    """Give the demo's people preferences a real township would have; nobody's choice is
    overwritten (a person with a preference row is left alone), so it can run every start."""
    if settings.is_production:
        raise fail("生产环境不载入演示数据 / no demo data in production")
    db = make_database(settings)
    deadline = time.monotonic() + args.wait
    try:
        while True:
            with db.transaction() as session:
                known = session.scalar(sa.select(sa.func.count()).select_from(Person)) or 0
            if known or time.monotonic() > deadline:
                break
            time.sleep(2)
        with db.transaction() as session:
            chosen = set(session.scalars(sa.select(Preference.user_id)))
            rows = session.execute(sa.select(PersonRole.user_id, PersonRole.role)).all()
            made = 0
            for user_id, role in rows:
                if user_id in chosen:
                    continue
                if role == "resident":
                    session.add(Preference(user_id=user_id, follow_news=True, channels={}))
                elif role == "grid_leader":
                    session.add(
                        Preference(
                            user_id=user_id,
                            quiet_start="22:00",
                            quiet_end="07:00",
                            channels={"reported": {"sms": True}},
                            updated_at=utcnow(),
                        )
                    )
                else:
                    continue
                chosen.add(user_id)
                made += 1
    finally:
        db.dispose()
    print(f"notify: 演示提醒设置 {made} 条 / {made} demo preference(s) made", file=sys.stderr)
    return 0


COMMANDS: dict[str, Command] = {
    "stream": Command(
        "启动实时消息推送进程 (server-sent events; gthread, STREAM_PORT)",
        lambda parser: None,
        run_stream,
    ),
    "demo-preferences": Command(
        "载入演示提醒设置 demo preferences (dev only; keeps what people chose)",
        add_demo_arguments,
        run_demo_preferences,
    ),
}
