"""intake's own commands: ``python -m intake create-user`` and ``python -m intake seed-demo``.

Both write accounts through the same use cases as the admin API, so the other services hear of
every account they create (``account.upserted`` in the outbox, same transaction).
"""

from __future__ import annotations

import argparse
import getpass
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

from intake import accounts
from intake.app import make_database
from intake.models import User, Village
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
    "announce-accounts": Command(
        "重新发布全部账号，供后加入的服务同步 re-send account.upserted for every account",
        lambda _parser: None,
        run_announce_accounts,
    ),
}
