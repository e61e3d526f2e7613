"""Load the demo township (deploy/demo/township.yaml) into a running Service365, over HTTP only.

Accounts go through intake's admin API, the organisation (departments, villages, grids and their
members, area leaders) through dispatch's, so it works the same against ``make run`` and against
a deployed system. It is idempotent: what already matches is left alone, so a second run
changes nothing (and says so).

    python deploy/demo/load_township.py --intake http://localhost:8001 \\
        --dispatch http://localhost:8002 --admin-username admin --admin-password demo365 \\
        --password demo365

Order matters because intake accepts an account's village only once dispatch's
``village.upserted`` has reached it: villages first, then (after intake knows them) accounts,
then grids and area leaders, which name people by the ids intake gave them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

HERE = Path(__file__).resolve().parent
TIMEOUT = 15


class LoadError(RuntimeError):
    """Something the operator must fix (wrong URL, wrong password, a service says no)."""


@dataclass
class Summary:
    """What one run created or changed, per kind; all zero on a second run."""

    created: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)

    def add(self, bucket: str, kind: str) -> None:
        target = self.created if bucket == "created" else self.changed
        target[kind] = target.get(kind, 0) + 1

    @property
    def nothing_changed(self) -> bool:
        return not self.created and not self.changed


@dataclass(frozen=True)
class Account:
    username: str
    name: str
    roles: tuple[str, ...]
    phone: str | None = None
    village_code: str | None = None


class Api:
    """A tiny JSON client for one service, with the admin's token."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201)):
        url = f"{self.base}/api/v1{path}"
        try:
            response = self.http.request(method, url, json=body, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise LoadError(f"{method} {url}: 无法连接 / cannot connect: {exc}") from None
        if response.status_code not in ok:
            raise LoadError(f"{method} {url} → {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None


def read_township(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key in ("villages", "departments", "grids", "area_leaders", "supervisors", "admins"):
        if key not in data:
            raise LoadError(f"{path}: missing section {key!r}")
    return data


def accounts_of(data: dict[str, Any]) -> list[Account]:
    """Every staff account the township file names, with its roles and village."""
    people: list[Account] = []
    for admin in data["admins"]:
        people.append(Account(admin["username"], admin["name"], ("admin",), admin.get("phone")))
    for leader in data["area_leaders"]:
        people.append(
            Account(leader["username"], leader["name"], ("area_leader",), leader.get("phone"))
        )
    for supervisor in data["supervisors"]:
        people.append(
            Account(
                supervisor["username"], supervisor["name"], ("supervisor",), supervisor.get("phone")
            )
        )
    for grid in data["grids"]:
        lead = grid["leader"]
        people.append(
            Account(
                lead["username"], lead["name"], ("grid_leader",), lead.get("phone"), grid["village"]
            )
        )
        for worker in grid["workers"]:
            people.append(
                Account(
                    worker["username"],
                    worker["name"],
                    ("grid_worker",),
                    worker.get("phone"),
                    grid["village"],
                )
            )
    for department in data.get("township_departments") or []:
        for member in department.get("staff") or []:
            people.append(
                Account(
                    member["username"], member["name"], ("department_staff",), member.get("phone")
                )
            )
    usernames = [p.username for p in people]
    if len(set(usernames)) != len(usernames):
        raise LoadError("township file: a username appears twice")
    return people


def sign_in(intake_url: str, username: str, password: str) -> str:
    answer = Api(intake_url).call(
        "POST", "/auth/login", {"username": username, "password": password}
    )
    if "admin" not in answer.get("user", {}).get("roles", []):
        raise LoadError(f"{username} is not an admin")
    return answer["access_token"]


def load_departments(dispatch: Api, data: dict[str, Any], summary: Summary) -> None:
    current = {d["id"]: d for d in dispatch.call("GET", "/departments")}
    for dept in data["departments"]:
        have = current.get(dept["id"])
        if have is None:
            dispatch.call("POST", "/departments", {**dept, "active": True})
            summary.add("created", "departments")
        elif (have["code"], have["name"], have["active"]) != (dept["code"], dept["name"], True):
            dispatch.call(
                "PATCH",
                f"/departments/{dept['id']}",
                {"code": dept["code"], "name": dept["name"], "active": True},
            )
            summary.add("changed", "departments")


def load_township_departments(
    dispatch: Api, data: dict[str, Any], ids: dict[str, str], summary: Summary
) -> None:
    """The township departments (分管部门) with their staff as members (after the accounts)."""
    current = {d["id"]: d for d in dispatch.call("GET", "/departments")}
    for dept in data.get("township_departments") or []:
        wanted = {
            "code": dept["code"],
            "name": dept["name"],
            "kind": "township",
            "active": True,
            "member_ids": [ids[m["username"]] for m in dept.get("staff") or []],
        }
        have = current.get(dept["id"])
        if have is None:
            dispatch.call("POST", "/departments", {"id": dept["id"], **wanted})
            summary.add("created", "departments")
            continue
        changes = {
            k: v
            for k, v in wanted.items()
            if (sorted(have.get(k) or []) != sorted(v) if k == "member_ids" else have.get(k) != v)
        }
        if changes:
            dispatch.call("PATCH", f"/departments/{dept['id']}", changes)
            summary.add("changed", "departments")


def load_villages(dispatch: Api, data: dict[str, Any], summary: Summary) -> None:
    current = {v["id"]: v for v in dispatch.call("GET", "/villages")}
    for village in data["villages"]:
        have = current.get(village["id"])
        wanted = {"code": village["code"], "name": village["name"]}
        if have is None:
            dispatch.call("POST", "/villages", {"id": village["id"], **wanted})
            summary.add("created", "villages")
        elif {k: have[k] for k in wanted} != wanted:
            dispatch.call("PATCH", f"/villages/{village['id']}", wanted)
            summary.add("changed", "villages")


def wait_for_intake_villages(intake: Api, data: dict[str, Any], wait_seconds: float) -> None:
    """Intake learns villages from dispatch's events; accounts need them there first."""
    wanted = {v["id"] for v in data["villages"]}
    deadline = time.monotonic() + wait_seconds
    while True:
        known = {v["id"] for v in intake.call("GET", "/villages")}
        if wanted <= known:
            return
        if time.monotonic() > deadline:
            raise LoadError(
                f"intake knows {len(wanted & known)} of {len(wanted)} villages after "
                f"{wait_seconds:.0f}s: is dispatch's worker (outbox relay) and intake's worker "
                "running?"
            )
        time.sleep(0.5)


def existing_accounts(intake: Api) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        page = intake.call("GET", "/accounts?limit=100" + (f"&cursor={cursor}" if cursor else ""))
        for account in page["items"]:
            if account.get("username"):
                found[account["username"]] = account
        cursor = page.get("next_cursor")
        if not cursor:
            return found


def load_accounts(
    intake: Api, data: dict[str, Any], password: str | None, summary: Summary
) -> dict[str, str]:
    """Create or bring back every account; returns username → user id."""
    village_ids = {v["code"]: v["id"] for v in data["villages"]}
    current = existing_accounts(intake)
    ids: dict[str, str] = {}
    for person in accounts_of(data):
        wanted = {
            "name": person.name,
            "phone": person.phone,
            "roles": sorted(person.roles),
            "village_id": village_ids[person.village_code] if person.village_code else None,
            "active": True,
        }
        have = current.get(person.username)
        if have is None:
            body = {"username": person.username, **wanted}
            if password:
                body["password"] = password
            have = intake.call("POST", "/accounts", body)
            summary.add("created", "accounts")
        else:
            changes = {k: v for k, v in wanted.items() if _differs(have.get(k), v)}
            if changes:
                have = intake.call("PATCH", f"/accounts/{have['id']}", changes)
                summary.add("changed", "accounts")
        ids[person.username] = have["id"]
    return ids


def _differs(have: Any, wanted: Any) -> bool:
    if isinstance(wanted, list):
        return sorted(have or []) != wanted
    return have != wanted


def load_grids(dispatch: Api, data: dict[str, Any], ids: dict[str, str], summary: Summary) -> None:
    village_ids = {v["code"]: v["id"] for v in data["villages"]}
    current = {g["id"]: g for g in dispatch.call("GET", "/grids")}
    for grid in data["grids"]:
        wanted = {
            "code": grid["code"],
            "village_id": village_ids[grid["village"]],
            "name": grid["name"],
            "leader_id": ids[grid["leader"]["username"]],
            "member_ids": [ids[w["username"]] for w in grid["workers"]],
        }
        have = current.get(grid["id"])
        if have is None:
            dispatch.call("POST", "/grids", {"id": grid["id"], **wanted})
            summary.add("created", "grids")
            continue
        changes = {
            k: v
            for k, v in wanted.items()
            if (sorted(have[k]) != sorted(v) if k == "member_ids" else have[k] != v)
        }
        if changes:
            dispatch.call("PATCH", f"/grids/{grid['id']}", changes)
            summary.add("changed", "grids")


def load_area_leaders(
    dispatch: Api, data: dict[str, Any], ids: dict[str, str], summary: Summary
) -> None:
    village_ids = {v["code"]: v["id"] for v in data["villages"]}
    current = {
        a["user_id"]: sorted(v["id"] for v in a["villages"])
        for a in dispatch.call("GET", "/area-leaders")
    }
    for leader in data["area_leaders"]:
        user_id = ids[leader["username"]]
        wanted = sorted(village_ids[code] for code in leader["villages"])
        if current.get(user_id, []) != wanted:
            dispatch.call("PUT", f"/area-leaders/{user_id}", {"village_ids": wanted})
            summary.add("changed", "area_leaders")


def wait_until_ready(base_urls: list[str], wait_seconds: float) -> None:
    """Wait for every service's /readyz (the loader may start beside the services)."""
    deadline = time.monotonic() + wait_seconds
    for base in base_urls:
        url = f"{base.rstrip('/')}/readyz"
        while True:
            try:
                if requests.get(url, timeout=3).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise LoadError(f"{url} 未就绪 / not ready after {wait_seconds:.0f}s")
            time.sleep(1)


def load(
    township: Path,
    intake_url: str,
    dispatch_url: str,
    admin_username: str,
    admin_password: str,
    password: str | None = None,
    wait_seconds: float = 60.0,
) -> Summary:
    """Bring the running system to the township file; returns what was created or changed."""
    data = read_township(township)
    wait_until_ready([intake_url, dispatch_url], wait_seconds)
    token = sign_in(intake_url, admin_username, admin_password)
    intake, dispatch = Api(intake_url, token), Api(dispatch_url, token)
    summary = Summary()
    load_departments(dispatch, data, summary)
    load_villages(dispatch, data, summary)
    wait_for_intake_villages(intake, data, wait_seconds)
    ids = load_accounts(intake, data, password, summary)
    load_grids(dispatch, data, ids, summary)
    load_area_leaders(dispatch, data, ids, summary)
    load_township_departments(dispatch, data, ids, summary)
    return summary


def demo_parser(description: str) -> argparse.ArgumentParser:
    """The options every demo loader takes: the township file, the services, the admin."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--file", type=Path, default=HERE / "township.yaml")
    parser.add_argument("--intake", default=os.environ.get("INTAKE_URL", "http://localhost:8001"))
    parser.add_argument(
        "--dispatch", default=os.environ.get("DISPATCH_URL", "http://localhost:8002")
    )
    parser.add_argument("--admin-username", default=os.environ.get("DEMO_ADMIN_USERNAME", "admin"))
    parser.add_argument(
        "--admin-password", default=os.environ.get("DEMO_ADMIN_PASSWORD", "demo365")
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = demo_parser("载入演示乡镇 / load the demo township over HTTP")
    parser.add_argument(
        "--password",
        default=os.environ.get("DEMO_PASSWORD"),
        help="新账号的初始密码 password for new accounts (none: they cannot sign in yet)",
    )
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for intake")
    args = parser.parse_args(argv)
    try:
        summary = load(
            args.file,
            args.intake,
            args.dispatch,
            args.admin_username,
            args.admin_password,
            args.password,
            args.wait,
        )
    except LoadError as exc:
        print(f"载入失败 / load failed: {exc}", file=sys.stderr)
        return 1
    if summary.nothing_changed:
        print("演示乡镇已是最新 / the township is already loaded: nothing changed")
    else:
        print(f"新增 created: {summary.created}; 更新 changed: {summary.changed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
