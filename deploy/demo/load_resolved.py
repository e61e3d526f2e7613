"""Resolved demo reports, so that scoring's leaderboard (积分排行) is not empty after ``make run``.

Everything goes through the services' own APIs, so scoring earns its points from dispatch's real
events: demo residents report (intake, WeChat dev login), the admin assigns each report to a grid
worker of the demo township with a difficulty (dispatch), the worker starts and resolves it, the
resident rates it. A few are resolved after their deadline (late: no points), a few are rated
unsatisfied, reopened, resolved again and then rated satisfied (the clawback and the second
resolution). Run after ``load_township.py``; idempotent: a demo resident who has reports already
reports nothing more, so a second run changes nothing.

    python deploy/demo/load_resolved.py --intake http://localhost:8001 \\
        --dispatch http://localhost:8002 --admin-password demo365 --password demo365

Needs ``WECHAT_MODE=dev`` on intake (the demo residents sign in with a made-up code), which
``make run`` / ``make up`` set. The points all fall in the current month: dispatch's API stamps
every step with the time it happens and has no way to backdate one.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from load_township import (
    Api,
    LoadError,
    demo_parser,
    existing_accounts,
    read_township,
    sign_in,
    wait_until_ready,
)

HERE = Path(__file__).resolve().parent
CATEGORIES = ["water_power", "road_traffic", "admin_affairs", "medical_elderly", "other"]
DESCRIPTIONS = {
    "water_power": "村里自来水管漏水，请尽快派人维修。",
    "road_traffic": "村口道路有个大坑，晚上看不清容易摔倒。",
    "admin_affairs": "想咨询一下养老保险认证怎么办理。",
    "medical_elderly": "独居老人行动不便，希望有人上门看看。",
    "other": "村头垃圾堆放多日没有清运，请处理。",
}
RESIDENTS = 8  # demo-board-resident-01 … -08 (each reports well under intake's hourly limit)
LATE_SECONDS = 4  # the late items get a deadline this far ahead and are resolved after it
WAIT_SECONDS = 60  # for one event to cross the broker (report → dispatch, resolve → intake)


@dataclass
class Work:
    """One demo report and what happens to it."""

    resident: str
    worker: str
    village_id: str
    category: str
    difficulty: int
    late: bool = False
    unsatisfied: bool = False  # rated unsatisfied first: reopened, resolved again, satisfied
    rating: str = "satisfied"
    issue_id: str | None = None


def plan(data: dict[str, Any], workers: int) -> list[Work]:
    """A fixed plan: the first worker of the first ``workers`` grids, each with a few reports."""
    villages = {v["code"]: v["id"] for v in data["villages"]}
    grids = data["grids"][:workers]
    work: list[Work] = []
    for g, grid in enumerate(grids):
        for k in range(1 + g % 3):  # 1, 2 or 3 reports, so the points differ
            n = len(work)
            work.append(
                Work(
                    resident=f"demo-board-resident-{n % RESIDENTS + 1:02d}",
                    worker=grid["workers"][0]["username"],
                    village_id=villages[grid["village"]],
                    category=CATEGORIES[n % len(CATEGORIES)],
                    difficulty=1 + (g * 2 + k) % 5,
                    late=n % 7 == 3,
                    unsatisfied=n % 9 == 5,
                    rating="basically_satisfied" if n % 4 == 2 else "satisfied",
                )
            )
    return work


def wait(what: str, predicate, seconds: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LoadError(
                f"{what}: 等待超时 / not seen after {seconds:.0f}s (are the workers running?)"
            )
        time.sleep(0.3)


def resident_login(intake_url: str, code: str) -> Api:
    answer = Api(intake_url).call("POST", "/auth/wechat", {"code": code})
    return Api(intake_url, answer["access_token"])


def staff_login(intake_url: str, username: str, password: str) -> Api:
    answer = Api(intake_url).call(
        "POST", "/auth/login", {"username": username, "password": password}
    )
    return Api(intake_url, answer["access_token"])


def on(api: Api, base_url: str) -> Api:
    """The same person, talking to another service."""
    other = Api(base_url)
    other.http.headers.update(api.http.headers)
    return other


def state_in_dispatch(dispatch: Api, issue_id: str) -> str | None:
    answer = dispatch.http.get(f"{dispatch.base}/api/v1/issues/{issue_id}", timeout=15)
    return answer.json()["state"] if answer.status_code == 200 else None


def resolve_round(
    work: list[Work], workers: dict[str, Api], intake_residents: dict[str, Api], note: str
) -> None:
    """Each worker starts and resolves their items; then each resident may rate."""
    for item in work:
        workers[item.worker].call("POST", f"/issues/{item.issue_id}/start", {})
    for item in work:
        workers[item.worker].call("POST", f"/issues/{item.issue_id}/resolve", {"note": note})
    for item in work:
        resident = intake_residents[item.resident]
        wait(
            f"{item.issue_id} resolved in intake",
            lambda r=resident, i=item.issue_id: r.call("GET", f"/issues/{i}").get("can_rate"),
        )


def load(
    township: Path,
    intake_url: str,
    dispatch_url: str,
    admin_username: str,
    admin_password: str,
    password: str,
    workers: int,
) -> int:
    """Report, assign, resolve and rate the planned work; returns how many reports it made."""
    data = read_township(township)
    wait_until_ready([intake_url, dispatch_url], WAIT_SECONDS)
    token = sign_in(intake_url, admin_username, admin_password)
    admin_intake, admin = Api(intake_url, token), Api(dispatch_url, token)
    ids = {u: a["id"] for u, a in existing_accounts(admin_intake).items()}

    work = plan(data, workers)
    residents = {code: resident_login(intake_url, code) for code in {w.resident for w in work}}
    done = {code for code, api in residents.items() if api.call("GET", "/issues/mine")["items"]}
    work = [w for w in work if w.resident not in done]
    if not work:
        return 0
    missing = sorted({w.worker for w in work} - set(ids))
    if missing:
        raise LoadError(f"accounts not loaded yet: {', '.join(missing)} (run load_township.py)")

    for item in work:
        item.issue_id = residents[item.resident].call(
            "POST",
            "/issues",
            {
                "category": item.category,
                "description": DESCRIPTIONS[item.category],
                "village_id": item.village_id,
            },
        )["id"]
    for item in work:
        wait(f"{item.issue_id} in dispatch", lambda i=item.issue_id: state_in_dispatch(admin, i))

    # The late ones first, with a deadline a few seconds ahead; the rest get three days.
    late_due = datetime.now(UTC) + timedelta(seconds=LATE_SECONDS)
    for item in sorted(work, key=lambda w: not w.late):
        deadline = (
            {"due_at": max(late_due, datetime.now(UTC) + timedelta(seconds=1)).isoformat()}
            if item.late
            else {"due_in_hours": 72}
        )
        admin.call(
            "POST",
            f"/issues/{item.issue_id}/assign",
            {"assignee_id": ids[item.worker], "difficulty": item.difficulty, **deadline},
        )
    if any(w.late for w in work):
        time.sleep(max(0.0, (late_due - datetime.now(UTC)).total_seconds() + 1))

    staff = {
        u: on(staff_login(intake_url, u, password), dispatch_url) for u in {w.worker for w in work}
    }
    resolve_round(work, staff, residents, "已到现场处理完毕。")
    for item in work:
        first = "unsatisfied" if item.unsatisfied else item.rating
        residents[item.resident].call("POST", f"/issues/{item.issue_id}/rating", {"rating": first})

    again = [w for w in work if w.unsatisfied]
    for item in again:
        wait(
            f"{item.issue_id} reopened",
            lambda i=item.issue_id: state_in_dispatch(admin, i) == "reopened",
        )
    if again:
        resolve_round(again, staff, residents, "返工后已彻底解决。")
        for item in again:
            residents[item.resident].call(
                "POST", f"/issues/{item.issue_id}/rating", {"rating": "satisfied"}
            )
    return len(work)


def main(argv: list[str] | None = None) -> int:
    parser = demo_parser("演示办结事项 / resolved demo reports over HTTP")
    parser.add_argument(
        "--password",
        default=os.environ.get("DEMO_PASSWORD", "demo365"),
        help="演示网格员的密码 password of the demo grid workers",
    )
    parser.add_argument("--workers", type=int, default=12, help="grid workers who get work")
    args = parser.parse_args(argv)
    try:
        made = load(
            args.file,
            args.intake,
            args.dispatch,
            args.admin_username,
            args.admin_password,
            args.password,
            args.workers,
        )
    except LoadError as exc:
        print(f"载入失败 / load failed: {exc}", file=sys.stderr)
        return 1
    if made:
        print(f"演示办结事项 {made} 件已载入 / {made} resolved demo reports loaded")
    else:
        print("演示办结事项已存在 / the resolved demo reports are already there: nothing changed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
