"""intake's own commands: ``python -m intake create-user``, ``seed-demo`` and ``seed-history``.

Both write accounts through the same use cases as the admin API, so the other services hear of
every account they create (``account.upserted`` in the outbox, same transaction).
"""

from __future__ import annotations

import argparse
import getpass
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

from intake import accounts, domain, services
from intake.app import make_database
from intake.models import Issue, User, Village
from intake.settings import IntakeSettings
from shared.auth import ROLES
from shared.cli import Command
from shared.errors import DomainError
from shared.settings import PROJECT_ROOT

TOWNSHIP_FILE = PROJECT_ROOT / "deploy" / "demo" / "township.yaml"


class PasswordProblem(ValueError):
    """The password typed or piped in cannot be used."""


def read_password(minimum: int) -> str:
    """Twice from the terminal (not echoed), or the first line of stdin when it is piped."""
    if sys.stdin.isatty():
        first = getpass.getpass("密码 / password: ")
        if first != getpass.getpass("再输入一次 / repeat password: "):
            raise PasswordProblem("两次输入的密码不一致 / the two passwords differ")
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    if len(first) < minimum:
        raise PasswordProblem(
            f"密码至少 {minimum} 个字符 / the password needs at least {minimum} characters"
        )
    return first


# --- create-user -----------------------------------------------------------------------------


def add_create_user_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--username", required=True, help="登录用户名 login name")
    parser.add_argument(
        "--role",
        dest="roles",
        action="append",
        required=True,
        choices=ROLES,
        help="角色，可重复 role (repeat for several)",
    )
    parser.add_argument("--name", default=None, help="姓名 display name (default: username)")
    parser.add_argument("--phone", default=None, help="电话 phone")
    parser.add_argument("--village-id", type=uuid.UUID, default=None, help="所属村庄 village id")


def run_create_user(args: argparse.Namespace, settings: IntakeSettings) -> int:
    """Create one staff account with a password typed in (or piped in for scripts)."""
    try:
        password = read_password(settings.password_min_length)
    except PasswordProblem as exc:
        print(exc, file=sys.stderr)
        return 1
    db = make_database(settings)
    try:
        with db.transaction() as session:
            user = accounts.create_account(
                session,
                username=args.username,
                name=args.name or args.username,
                roles=args.roles,
                phone=args.phone,
                village_id=args.village_id,
                password=password,
            )
    except DomainError as exc:
        english = {
            "username_taken": f"username {args.username} already exists",
            "unknown_village": f"village {args.village_id} does not exist",
        }.get(exc.code, exc.code)
        print(f"{exc.message} / {english}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    print(f"已创建账号 / created user {user.username} ({user.id}), roles: {', '.join(user.roles)}")
    return 0


# --- seed-demo -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoStaff:
    username: str
    name: str
    roles: tuple[str, ...]
    village_code: str | None = None


DEMO_STAFF = (
    DemoStaff("admin", "乡网格总管理员", ("admin",)),
    DemoStaff("worker01", "王建国", ("grid_worker",), "V01"),
    DemoStaff("worker02", "陈丽", ("grid_worker", "party_member"), "V02"),
    DemoStaff("leader01", "李秀英", ("grid_leader",), "V01"),
    DemoStaff("supervisor01", "张卫东", ("supervisor",)),
    DemoStaff("publicist01", "刘芳", ("publicist", "party_member")),
    DemoStaff("area01", "赵志刚", ("area_leader",)),
)


@dataclass
class SeedSummary:
    villages_added: int = 0
    villages_changed: int = 0
    accounts_added: list[str] = field(default_factory=list)
    accounts_changed: list[str] = field(default_factory=list)


def load_township(path: Path) -> list[dict[str, Any]]:
    """The villages of ``deploy/demo/township.yaml``: ``[{id, code, name}, ...]``."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [
        {"id": uuid.UUID(str(v["id"])), "code": str(v["code"]), "name": str(v["name"])}
        for v in data["villages"]
    ]


def seed_demo(session: Session, villages: list[dict[str, Any]], password: str) -> SeedSummary:
    """Villages and demo staff, created or brought back to the demo values; safe to run again."""
    summary = SeedSummary()
    for item in villages:
        village = session.get(Village, item["id"])
        if village is None:
            session.add(Village(id=item["id"], name=item["name"]))
            summary.villages_added += 1
        elif village.name != item["name"]:
            village.name = item["name"]
            summary.villages_changed += 1
    session.flush()
    village_ids = {v["code"]: v["id"] for v in villages}
    for staff in DEMO_STAFF:
        wanted = {
            "name": staff.name,
            "roles": sorted(staff.roles),
            "village_id": village_ids.get(staff.village_code) if staff.village_code else None,
            "active": True,
        }
        existing = session.scalars(
            sa.select(User).where(User.username == staff.username)
        ).one_or_none()
        if existing is None:
            accounts.create_account(session, username=staff.username, password=password, **wanted)
            summary.accounts_added.append(staff.username)
        elif any(getattr(existing, key) != value for key, value in wanted.items()):
            # An existing password is left alone: someone may have changed it on purpose.
            accounts.change_account(session, existing.id, wanted)
            summary.accounts_changed.append(staff.username)
    return summary


def add_seed_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--township", type=Path, default=TOWNSHIP_FILE, help="村庄清单 villages YAML file"
    )


def run_seed_demo(args: argparse.Namespace, settings: IntakeSettings) -> int:
    """Demo villages and staff logins for ``make run``; never in production."""
    if settings.is_production:
        print(
            "生产环境不能写入演示数据 / seed-demo is refused when APP_ENV=production",
            file=sys.stderr,
        )
        return 2
    villages = load_township(args.township)
    db = make_database(settings)
    try:
        with db.transaction() as session:
            summary = seed_demo(session, villages, settings.demo_password)
    finally:
        db.dispose()
    print(
        f"村庄 villages: {len(villages)}（新增 added {summary.villages_added}，"
        f"更新 updated {summary.villages_changed}）"
    )
    print(
        f"账号 accounts: 新增 added {len(summary.accounts_added)}，"
        f"更新 updated {len(summary.accounts_changed)}"
    )
    print(
        f"演示登录 demo logins (POST /api/v1/auth/login), 密码 password: {settings.demo_password}"
    )
    for staff in DEMO_STAFF:
        print(f"  {staff.username:<14} {staff.name:<8} {', '.join(staff.roles)}")
    print(
        "演示居民 demo resident (WECHAT_MODE=dev): "
        'POST /api/v1/auth/wechat {"code": "demo-resident-1"}'
    )
    return 0


# --- seed-history ----------------------------------------------------------------------------

HISTORY_RESIDENTS = 8  # demo-history-resident-01 … -08 (WeChat dev codes, like load_resolved.py)
HISTORY_DESCRIPTIONS = {
    "water_power": "村里自来水管漏水，请尽快派人维修。",
    "road_traffic": "村口道路有个大坑，晚上看不清容易摔倒。",
    "admin_affairs": "想咨询一下养老保险认证怎么办理。",
    "medical_elderly": "独居老人行动不便，希望有人上门看看。",
    "other": "村头垃圾堆放多日没有清运，请处理。",
}


def month_start(moment: datetime, months_back: int = 0) -> datetime:
    """The first instant (UTC) of the Asia/Shanghai month ``months_back`` before ``moment``'s."""
    local = moment.astimezone(domain.SHANGHAI)
    index = local.year * 12 + local.month - 1 - months_back
    first = datetime(index // 12, index % 12 + 1, 1, tzinfo=domain.SHANGHAI)
    return first.astimezone(UTC)


def history_villages(path: Path) -> list[uuid.UUID]:
    """The demo villages that have grids (dispatch hands their reports to a grid worker)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    ids = {str(v["code"]): uuid.UUID(str(v["id"])) for v in data["villages"]}
    codes = sorted({str(g["village"]) for g in data.get("grids") or []})
    return [ids[c] for c in codes if c in ids]


def _demo_resident(session: Session, openid: str) -> User:
    """Found by openid, or created as a WeChat sign-in would (announced with account.upserted)."""
    user = session.scalars(sa.select(User).where(User.openid == openid)).one_or_none()
    if user is None:
        user = User(openid=openid, name="", roles=["resident"])
        session.add(user)
        accounts._announce(session, user)
        session.flush()
    return user


def seed_history(
    session: Session,
    settings: IntakeSettings,
    village_ids: list[uuid.UUID],
    *,
    months: int,
    per_month: int,
    now: datetime | None = None,
) -> int:
    """Demo reports with ``reported_at`` in each of the past ``months`` months (Asia/Shanghai),
    through ``services.report_issue``; nothing if any report predates this month already."""
    now = now or datetime.now(UTC)
    this_month = month_start(now)
    earlier = session.scalar(sa.select(Issue.id).where(Issue.reported_at < this_month).limit(1))
    if earlier is not None:
        return 0
    residents = [
        _demo_resident(session, f"demo-history-resident-{n + 1:02d}")
        for n in range(HISTORY_RESIDENTS)
    ]
    categories = list(HISTORY_DESCRIPTIONS)
    made = 0
    for back in range(months, 0, -1):
        first = month_start(now, back)
        for k in range(per_month):
            # Days 1..25, 08:00-15:59 local: assigned, started and resolved (+60 h at most)
            # all fall before the month is out, so none of it lies in the future.
            reported_at = first + timedelta(
                days=(k * 2 + back) % 25, hours=8 + (k * 3) % 8, minutes=(k * 7) % 60
            )
            category = categories[made % len(categories)]
            services.report_issue(
                session,
                settings,
                residents[made % len(residents)].id,
                services.NewReport(
                    category=category,
                    description=HISTORY_DESCRIPTIONS[category],
                    village_id=village_ids[made % len(village_ids)],
                ),
                now=reported_at,
            )
            made += 1
    return made


def add_seed_history_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--months", type=int, default=3, help="过去几个月 how many past months")
    parser.add_argument(
        "--per-month", type=int, default=12, help="每月几件 reports in each of those months"
    )
    parser.add_argument(
        "--township", type=Path, default=TOWNSHIP_FILE, help="村庄和网格 villages and grids YAML"
    )


def run_seed_history(args: argparse.Namespace, settings: IntakeSettings) -> int:
    """Past months of demo reports (``issue.reported`` with a past ``reported_at``); dev only."""
    if settings.is_production:
        print(
            "生产环境不能写入演示数据 / seed-history is refused when APP_ENV=production",
            file=sys.stderr,
        )
        return 2
    if args.months < 1 or args.per_month < 1:
        print("--months 和 --per-month 至少为 1 / must be at least 1", file=sys.stderr)
        return 2
    db = make_database(settings)
    try:
        with db.transaction() as session:
            known = set(session.scalars(sa.select(Village.id)))
            villages = [v for v in history_villages(args.township) if v in known]
            if not villages:
                print(
                    "还没有演示村庄，请先载入演示乡镇 / no demo villages yet "
                    "(run seed-demo or deploy/demo/load_township.py first)",
                    file=sys.stderr,
                )
                return 1
            made = seed_history(
                session, settings, villages, months=args.months, per_month=args.per_month
            )
    finally:
        db.dispose()
    if made:
        print(f"演示历史诉求 {made} 件已写入 / {made} past demo reports filed")
    else:
        print("演示历史诉求已存在 / past demo reports are already there: nothing changed")
    return 0


def run_announce_accounts(args: argparse.Namespace, settings: IntakeSettings) -> int:
    """Every account once more as ``account.upserted``, through the outbox."""
    db = make_database(settings)
    try:
        with db.transaction() as session:
            count = accounts.announce_all_accounts(session)
    finally:
        db.dispose()
    print(f"已重新发布 {count} 个账号 / {count} accounts announced (account.upserted)")
    return 0


COMMANDS: dict[str, Command] = {
    "create-user": Command(
        "创建工作人员账号 create a staff account", add_create_user_arguments, run_create_user
    ),
    "seed-demo": Command(
        "写入演示村庄和账号 seed demo villages and staff", add_seed_demo_arguments, run_seed_demo
    ),
    "seed-history": Command(
        "写入过去几个月的演示诉求 file past months of demo reports (dev only)",
        add_seed_history_arguments,
        run_seed_history,
    ),
    "announce-accounts": Command(
        "重新发布全部账号，供后加入的服务同步 re-send account.upserted for every account",
        lambda _parser: None,
        run_announce_accounts,
    ),
}
