"""scoring's own commands: ``rebuild`` (recompute the totals from the ledger) and
``publish-board`` (announce a month's 红黑榜)."""

from __future__ import annotations

import argparse
import json
import sys

from scoring import boards, domain
from scoring.app import make_database
from scoring.settings import ScoringSettings
from shared.cli import Command, fail
from shared.clock import utcnow


def add_rebuild_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check", action="store_true", help="只报告差异，不写入 report differences only"
    )


def run_rebuild(args: argparse.Namespace, settings: ScoringSettings) -> int:
    """Recompute every total from the ledger; print each difference (JSON lines) and a summary.
    Exit 0 when nothing differed, 1 when something did (fixed unless ``--check``)."""
    db = make_database(settings)
    try:
        with db.transaction() as session:
            differences = boards.rebuild(session, fix=not args.check)
    finally:
        db.dispose()
    for d in differences:
        print(
            json.dumps(
                {
                    "period": d.period,
                    "user_id": str(d.user_id),
                    "column": d.column,
                    "stored": d.stored,
                    "expected": d.expected,
                },
                ensure_ascii=False,
            )
        )
    state = "仅检查 / checked only" if args.check else "已修正 / fixed"
    print(
        f"scoring: 汇总差异 {len(differences)} 处 / {len(differences)} difference(s); {state}",
        file=sys.stderr,
    )
    return 1 if differences else 0


def add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--period",
        default=None,
        help="月份 month:YYYY-MM（默认上个月 / default: last month, Asia/Shanghai）",
    )
    parser.add_argument("--force", action="store_true", help="已发布过也再发布 publish again")


def last_month() -> domain.Period:
    previous = domain.current_month(utcnow()).previous()
    assert previous is not None
    return previous


def run_publish_board(args: argparse.Namespace, settings: ScoringSettings) -> int:
    """Emit ``leaderboard.published`` for a month (the relay of the worker sends it)."""
    try:
        period = domain.parse_period(args.period) if args.period else last_month()
    except domain.InvalidPeriod:
        raise fail(f"周期格式有误 / bad period: {args.period!r} (month:YYYY-MM)") from None
    if period.kind != "month":
        raise fail("红黑榜按月发布 / the board is monthly: use --period month:YYYY-MM")
    db = make_database(settings)
    try:
        with db.transaction() as session:
            if boards.already_published(session, period) and not args.force:
                print(f"scoring: {period.key} 已发布过 / already published (--force to repeat)")
                return 0
            data = boards.publish_board(session, settings, period, by="command")
    finally:
        db.dispose()
    print(json.dumps(data, ensure_ascii=False, default=str))
    return 0


COMMANDS: dict[str, Command] = {
    "rebuild": Command(
        "由积分明细重算全部汇总并报告差异 recompute every total from the ledger",
        add_rebuild_arguments,
        run_rebuild,
    ),
    "publish-board": Command(
        "发布月度红黑榜 publish a month's top and bottom (leaderboard.published)",
        add_publish_arguments,
        run_publish_board,
    ),
}
