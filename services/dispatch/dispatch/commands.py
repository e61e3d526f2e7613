"""dispatch's own commands: ``python -m dispatch scheduler`` (and ``scheduler --once``),
``python -m dispatch rebuild-stats [--check]`` (recompute the statistics' running aggregates) and
``python -m dispatch seed-history`` (dev only: works through intake's past demo reports)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from dispatch import services
from dispatch.app import make_database
from dispatch.models import Grid, GridMember, Issue, Staff
from dispatch.settings import DispatchSettings
from shared.auth import Principal
from shared.cli import Command
from shared.clock import SHANGHAI
from shared.db import Database
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


# --- rebuild-stats ---------------------------------------------------------------------------


def add_rebuild_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check", action="store_true", help="只报告差异，不写入 report differences only"
    )


def run_rebuild_stats(args: argparse.Namespace, settings: DispatchSettings) -> int:
    """Recompute the statistics' aggregates from the issues; print each difference (JSON lines)
    and a summary. Exit 0 when nothing differed, 1 when something did (fixed unless --check)."""
    from dispatch import aggregates

    db = make_database(settings)
    try:
        with db.transaction() as session:
            differences = aggregates.rebuild(session, fix=not args.check)
    finally:
        db.dispose()
    for d in differences:
        print(
            json.dumps(
                {
                    "table": d.table,
                    "key": [str(part) for part in d.key],
                    "column": d.column,
                    "stored": d.stored,
                    "expected": d.expected,
                },
                ensure_ascii=False,
            )
        )
    state = "仅检查 / checked only" if args.check else "已修正 / fixed"
    print(
        f"dispatch: 统计汇总差异 {len(differences)} 处 / {len(differences)} difference(s); {state}",
        file=sys.stderr,
    )
    return 1 if differences else 0


# --- seed-history ----------------------------------------------------------------------------

DEMO_ADMIN_NAME = "乡网格总管理员"  # intake's seed-demo admin


def month_start(moment: datetime) -> datetime:
    """The first instant (UTC) of ``moment``'s Asia/Shanghai month."""
    local = moment.astimezone(SHANGHAI)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


def _principal(staff: Staff) -> Principal:
    return Principal(id=staff.id, roles=frozenset(staff.roles), name=staff.name)


def _demo_admin(session: Session) -> Staff | None:
    admins = [
        s
        for s in session.scalars(sa.select(Staff).where(Staff.active.is_(True)))
        if "admin" in (s.roles or [])
    ]
    admins.sort(key=lambda s: (s.name != DEMO_ADMIN_NAME, str(s.id)))
    return admins[0] if admins else None


def _village_workers(session: Session, village_id: uuid.UUID) -> list[Staff]:
    """Active grid workers of the village's grids, grid by grid (by code), as they joined."""
    rows = session.execute(
        sa.select(Staff)
        .join(GridMember, GridMember.user_id == Staff.id)
        .join(Grid, Grid.id == GridMember.grid_id)
        .where(Grid.village_id == village_id, Staff.active.is_(True))
        .order_by(Grid.code, Grid.name, GridMember.added_at, Staff.id)
    ).scalars()
    return [s for s in rows if "grid_worker" in (s.roles or [])]


def past_reports(session: Session, now: datetime) -> list[Issue]:
    """Reports dated before this month, oldest first."""
    return list(
        session.scalars(
            sa.select(Issue)
            .where(Issue.reported_at < month_start(now))
            .order_by(Issue.reported_at, Issue.id)
        )
    )


def wait_for_reports(db: Database, expect: int, seconds: float, *, poll: float = 1.0) -> int:
    """Poll until dispatch holds at least ``expect`` past reports; their count, or -1 on timeout."""
    deadline = time.monotonic() + seconds
    while True:
        with db.transaction() as session:
            count = len(past_reports(session, datetime.now(UTC)))
        if count >= expect:
            return count
        if time.monotonic() >= deadline:
            return -1
        time.sleep(poll)


def seed_history(
    session: Session, settings: DispatchSettings, *, now: datetime | None = None
) -> tuple[int, int]:
    """Assign, start and resolve each unassigned past report, dated after it (about one in six
    resolved after its 48-hour deadline). Returns (resolved, skipped)."""
    now = now or datetime.now(UTC)
    admin_staff = _demo_admin(session)
    if admin_staff is None:
        raise LookupError("没有管理员账号 / no admin known to dispatch (load the township first)")
    admin = _principal(admin_staff)
    done = skipped = 0
    workers: dict[uuid.UUID, list[Staff]] = {}
    for n, issue in enumerate(past_reports(session, now)):
        if issue.state != "reported":
            continue  # handled already (a second run), or withdrawn
        reported = issue.reported_at
        late = n % 6 == 5
        resolved_at = reported + timedelta(hours=60 if late else 20)
        if issue.village_id not in workers:
            workers[issue.village_id] = _village_workers(session, issue.village_id)
        staff = workers[issue.village_id]
        if not staff or resolved_at >= now:
            skipped += 1
            continue
        worker = staff[n % len(staff)]
        services.assign(
            session,
            settings,
            admin,
            issue.id,
            assignee_id=worker.id,
            difficulty=1 + n % 5,
            due_in_hours=48,
            now=reported + timedelta(hours=2),
        )
        services.start(session, _principal(worker), issue.id, now=reported + timedelta(hours=4))
        services.resolve(
            session, _principal(worker), issue.id, note="已到现场处理完毕。", now=resolved_at
        )
        done += 1
    return done, skipped


def add_seed_history_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--expect",
        type=int,
        default=36,
        help="等到收到这么多过去的诉求 wait until this many past reports arrived "
        "(intake seed-history's --months x --per-month; default 3 x 12)",
    )
    parser.add_argument(
        "--wait", type=float, default=120, help="最多等几秒 seconds to wait for them"
    )


def run_seed_history(args: argparse.Namespace, settings: DispatchSettings) -> int:
    """Resolve intake's past demo reports with past times, so scoring credits those months."""
    if settings.is_production:
        print(
            "生产环境不能写入演示数据 / seed-history is refused when APP_ENV=production",
            file=sys.stderr,
        )
        return 2
    db = make_database(settings)
    try:
        count = wait_for_reports(db, args.expect, args.wait)
        if count < 0:
            print(
                f"等待超时：{args.wait:.0f} 秒内未收到 {args.expect} 件过去的演示诉求 / timed out: "
                f"dispatch did not receive {args.expect} past demo reports within "
                f"{args.wait:.0f}s (did `intake seed-history` run, are the workers running?)",
                file=sys.stderr,
            )
            return 1
        try:
            with db.transaction() as session:
                done, skipped = seed_history(session, settings)
        except LookupError as exc:
            print(exc, file=sys.stderr)
            return 1
    finally:
        db.dispose()
    if done:
        print(f"演示历史诉求 {done} 件已办结 / {done} past demo reports resolved")
    else:
        print("演示历史诉求已办结 / past demo reports already handled: nothing changed")
    if skipped:
        print(
            f"跳过 skipped {skipped}（所在村没有网格员，或办结时间未到 / "
            "no grid worker in their village, or too recent）"
        )
    return 0


COMMANDS: dict[str, Command] = {
    "scheduler": Command(
        "定时任务：到期提醒、超期、升级、自动关闭、回访抽样 run the scheduler",
        add_scheduler_arguments,
        run_scheduler,
    ),
    "rebuild-stats": Command(
        "重算统计汇总表 recompute the statistics' aggregates from the issues",
        add_rebuild_stats_arguments,
        run_rebuild_stats,
    ),
    "seed-history": Command(
        "办结过去几个月的演示诉求 resolve the past demo reports (dev only)",
        add_seed_history_arguments,
        run_seed_history,
    ),
}
