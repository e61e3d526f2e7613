"""The demo township with work in every state, made by the services' own code, for generated
requests that reach the handlers (tests/security/test_no_server_errors.py).

All five services run in this process (their Flask apps, each on a fresh PostgreSQL database at
its Alembic head) with their real workers (``shared.worker.run_worker``: outbox relay and
consumer) on one fresh RabbitMQ vhost, so every event crosses the broker as in production.
Seeding goes through the front doors only:

- ``intake seed-demo`` and ``feed seed-demo`` (their ``commands.seed_demo``), then
  ``deploy/demo/load_township.py`` (departments, 26 villages, every account, 40 grids, area
  leaders) over the apps' HTTP routes;
- issues reported by a resident over HTTP and taken through every state by the admin, a grid
  worker and a supervisor (reported, assigned, in progress, resolved, closed, reopened after an
  unsatisfied rating and after a failed callback, escalated to the township and to the county
  ledger, rejected as a duplicate, withdrawn), with a photo, notes, 补充说明 and 催办;
- news in every state, party posts with a like and comments, one held for moderation;
- this month's 红黑榜 published by scoring (``boards.publish_board``, what the ``publish-board``
  command runs), which feed turns into a post; inbox rows and failed webhook deliveries in
  notify, made by its handlers from the events above.

Once all of that has arrived everywhere the workers stop, so that the generated requests meet a
township that does not move under them. ``SeededTownship.ids`` lists, per service and path
parameter, real objects a generated request may name instead of a random id.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import socket
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from flask import Flask
from PIL import Image

from shared.clock import utcnow
from shared.testing import wait_for
from shared.worker import declare_queues, run_worker

ROOT = Path(__file__).resolve().parents[2]
TOWNSHIP_FILE = ROOT / "deploy" / "demo" / "township.yaml"
SERVICES = ("intake", "dispatch", "scoring", "notify", "feed")
SETTLE = 60.0  # seconds for an event to cross the broker and be applied


def load_township_module() -> ModuleType:
    """``deploy/demo/load_township.py``, the operator's loader (a script, not a package)."""
    path = ROOT / "deploy" / "demo" / "load_township.py"
    spec = importlib.util.spec_from_file_location("service365_load_township", path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class Client:
    """``load_township.Api`` over a Flask test client: the same routes, JSON and status checks,
    without a network port."""

    def __init__(self, app: Flask, headers: dict[str, str] | None = None) -> None:
        self.http = app.test_client()
        self.headers = dict(headers or {})

    def call(
        self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201)
    ) -> Any:
        answer = self.http.open(f"/api/v1{path}", method=method, json=body, headers=self.headers)
        assert (
            answer.status_code in ok
        ), f"{method} {path} → {answer.status_code}: {answer.get_data(True)[:500]}"
        return answer.get_json() if answer.data else None

    def get_or_none(self, path: str) -> Any:
        """The JSON of a GET that answers 200, else None (not there yet)."""
        answer = self.http.get(f"/api/v1{path}", headers=self.headers)
        return answer.get_json() if answer.status_code == 200 else None


def closed_port() -> int:
    """A local port nobody listens on: a webhook there fails at once (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(service: str, database_url: str, amqp_url: str, jwt_keys, media: Path) -> Any:
    """The service's settings here: test keys, one vhost, a quick relay and retry ladder, and
    rate limits no generated request reaches (the limits have tests of their own)."""
    common: dict[str, Any] = {
        "app_env": "test",
        "database_url": database_url,
        "rabbitmq_url": amqp_url,
        "jwt_public_key_file": jwt_keys[1],
        "log_format": "text",
        "relay_poll_seconds": 0.05,
        "consumer_retry_delays_ms": [50, 100],
    }
    if service == "intake":
        from intake.settings import IntakeSettings

        return IntakeSettings(
            **common,
            jwt_private_key_file=jwt_keys[0],
            access_token_ttl_seconds=4 * 3600,
            wechat_mode="dev",
            media_dir=media,
            rate_limit_reports="100000 per hour",
            rate_limit_uploads="100000 per hour",
            rate_limit_login="100000 per minute",
            rate_limit_login_ip="100000 per minute",
            rate_limit_wechat_login_ip="100000 per minute",
        )
    if service == "dispatch":
        from dispatch.settings import DispatchSettings

        return DispatchSettings(**common)
    if service == "scoring":
        from scoring.settings import ScoringSettings

        return ScoringSettings(**common)
    if service == "notify":
        from notify.settings import NotifySettings

        return NotifySettings(
            **common,
            webhook_url=f"http://127.0.0.1:{closed_port()}/hook",
            webhook_secret="schema-fuzz-secret",
            delivery_max_attempts=1,
            channel_timeout_seconds=2,
        )
    from feed.settings import FeedSettings

    return FeedSettings(**common, view_flush_seconds=3600, view_flush_views=100000)


class Workers:
    """Every service's worker (``run_worker``: relay and consumer) in a thread until ``stop``."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.databases: list[Any] = []

    def add(self, service: str, settings: Any) -> None:
        handlers = importlib.import_module(f"{service}.handlers")
        if hasattr(handlers, "use_settings"):
            handlers.use_settings(settings)
        db = importlib.import_module(f"{service}.app").make_database(settings)
        self.databases.append(db)
        subscriptions = dict(handlers.SUBSCRIPTIONS)
        declare_queues(settings, db, subscriptions)  # every queue bound before anyone publishes
        self.threads.append(
            threading.Thread(
                target=run_worker,
                args=(settings, db, subscriptions),
                kwargs={"stop": self.stop_event},
                name=f"{service}-worker",
                daemon=True,
            )
        )

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=30)
        still = [t.name for t in self.threads if t.is_alive()]
        assert not still, f"workers did not stop: {still}"
        for db in self.databases:
            db.dispose()
        self.databases.clear()


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, "JPEG")
    return buffer.getvalue()


@dataclass
class SeededTownship:
    """The running apps, who is who, and the real objects a request may name."""

    apps: dict[str, Flask]
    callers: dict[str, dict[str, str]] = field(default_factory=dict)  # role → headers
    people: dict[str, dict[str, Any]] = field(default_factory=dict)  # key → account
    ids: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    issues: dict[str, str] = field(default_factory=dict)  # what happened to it → issue id
    accounts: dict[str, str] = field(default_factory=dict)  # username → id (the township file)
    states: dict[str, tuple[str, str]] = field(default_factory=dict)  # key → (state, level)

    def headers(self, who: str) -> dict[str, str]:
        """A signed-in caller's headers: a token from intake's own issuer for that account."""
        person = self.people[who]
        village = person.get("village_id")
        token, _ = (
            self.apps["intake"]
            .extensions["token_issuer"]
            .issue(
                uuid.UUID(person["id"]),
                person["roles"],
                person["name"],
                uuid.UUID(village) if village else None,
            )
        )
        return {"Authorization": f"Bearer {token}"}

    def client(self, service: str, who: str | None = None) -> Client:
        return Client(self.apps[service], self.headers(who) if who else None)


# --- seeding ---------------------------------------------------------------------------------


def seed(town: SeededTownship, settings: dict[str, Any]) -> None:
    """Everything of the module docstring, in the order an operator and the township do it."""
    data = yaml.safe_load(TOWNSHIP_FILE.read_text(encoding="utf-8"))
    _demo_commands(town, settings)
    _township(town, data)
    _issues(town, data)
    _feed(town)
    _board(town, settings["scoring"])
    _collect_ids(town, data)


def _demo_commands(town: SeededTownship, settings: dict[str, Any]) -> None:
    from feed import commands as feed_commands
    from intake import commands as intake_commands

    villages = intake_commands.load_township(TOWNSHIP_FILE)
    with town.apps["intake"].extensions["db"].transaction() as session:
        intake_commands.seed_demo(session, villages, settings["intake"].demo_password)
    with town.apps["feed"].extensions["db"].transaction() as session:
        feed_commands.seed_demo(
            session, settings["feed"], feed_commands.load_villages(TOWNSHIP_FILE), utcnow()
        )
    anonymous = Client(town.apps["intake"])
    signed_in = anonymous.call(
        "POST",
        "/auth/login",
        {"username": "admin", "password": settings["intake"].demo_password},
    )
    town.callers["admin"] = {"Authorization": f"Bearer {signed_in['access_token']}"}
    town.people["admin"] = signed_in["user"]
    for key in ("publicist01", "worker02"):
        answer = anonymous.call(
            "POST", "/auth/login", {"username": key, "password": settings["intake"].demo_password}
        )
        town.people[key] = answer["user"]
    for code in ("schema-neighbour", "schema-resident"):
        answer = anonymous.call("POST", "/auth/wechat", {"code": code})
        town.people[code] = answer["user"]
    # the resident caller: the token intake's own WeChat sign-in gave (the last one made)
    town.callers["resident"] = {"Authorization": f"Bearer {answer['access_token']}"}
    town.callers["anonymous"] = {}


def _township(town: SeededTownship, data: dict) -> None:
    """``load_township.py`` step by step, as its ``load`` does it, over the apps' routes."""
    loader = load_township_module()
    admin = town.callers["admin"]
    intake, dispatch = Client(town.apps["intake"], admin), Client(town.apps["dispatch"], admin)
    summary = loader.Summary()
    loader.load_departments(dispatch, data, summary)
    loader.load_villages(dispatch, data, summary)
    wanted = {v["id"] for v in data["villages"]}
    wait_for(lambda: wanted <= {v["id"] for v in intake.call("GET", "/villages")}, SETTLE)
    ids = loader.load_accounts(intake, data, None, summary)

    def staff_known() -> bool:
        known: set[str] = set()
        cursor = None
        while True:
            page = dispatch.call(
                "GET", "/staff?limit=200" + (f"&cursor={cursor}" if cursor else "")
            )
            known.update(s["id"] for s in page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return set(ids.values()) <= known

    wait_for(staff_known, SETTLE, interval=0.3)
    loader.load_grids(dispatch, data, ids, summary)
    loader.load_area_leaders(dispatch, data, ids, summary)
    loader.load_township_departments(dispatch, data, ids, summary)
    assert summary.created.get("accounts", 0) > 200, summary.created
    grid = data["grids"][0]  # 第一网格 of 沙口集村: its first worker is the grid worker caller
    for key, username in (
        ("grid_worker", grid["workers"][0]["username"]),
        ("grid_leader", grid["leader"]["username"]),
        ("other_worker", grid["workers"][1]["username"]),
        ("area_leader", data["area_leaders"][0]["username"]),
        ("supervisor", data["supervisors"][0]["username"]),
    ):
        account = intake.call("GET", f"/accounts/{ids[username]}")
        town.people[key] = account
    town.callers["grid_worker"] = town.headers("grid_worker")
    town.accounts = ids


def _issues(town: SeededTownship, data: dict) -> None:
    """Reports by the resident (and one by a neighbour) taken through every state."""
    village = data["villages"][0]["id"]  # 沙口集村
    county = data["departments"][0]["id"]
    resident = town.client("intake", "schema-resident")
    admin = Client(town.apps["dispatch"], town.callers["admin"])
    worker = town.client("dispatch", "grid_worker")
    supervisor = town.client("dispatch", "supervisor")
    worker_id = town.people["grid_worker"]["id"]
    photo = resident.http.post(
        "/api/v1/media",
        data={"file": (io.BytesIO(jpeg((200, 60, 40))), "pipe.jpg", "image/jpeg")},
        content_type="multipart/form-data",
        headers=resident.headers,
    )
    assert photo.status_code == 201, photo.get_data(True)
    town.ids[("intake", "media_id")] = [photo.get_json()["id"]]

    texts = {
        "reported": ("water_power", "村东头自来水管破裂，水流了一地。"),
        "assigned": ("road_traffic", "村口道路有个大坑，晚上看不清。"),
        "in_progress": ("other", "村头垃圾堆放多日没有清运。"),
        "resolved": ("water_power", "路灯不亮，晚上出行不便。"),
        "closed": ("admin_affairs", "想咨询养老保险认证怎么办理。"),
        "reopened_unsatisfied": ("water_power", "停电两天了，一直没人来修。"),
        "reopened_callback": ("road_traffic", "桥面护栏松动，有安全隐患。"),
        "escalated_township": ("neighbor_dispute", "邻居占用公共通道堆放杂物。"),
        "escalated_county": ("road_traffic", "县道塌陷，需要县交通局处理。"),
        "rejected_duplicate": ("water_power", "村东头水管破了，到处是水。"),
        "withdrawn": ("other", "门前树枝挡路（已自行处理）。"),
    }
    for key, (category, text) in texts.items():
        body = {"category": category, "description": text, "village_id": village}
        if key == "reported":
            body["photo_ids"] = town.ids[("intake", "media_id")]
        town.issues[key] = resident.call("POST", "/issues", body)["id"]
    neighbour = town.client("intake", "schema-neighbour")
    town.issues["neighbour"] = neighbour.call(
        "POST",
        "/issues",
        {
            "category": "medical_elderly",
            "description": "独居老人需要上门看看。",
            "village_id": village,
        },
    )["id"]
    for issue_id in town.issues.values():
        wait_for(lambda i=issue_id: admin.get_or_none(f"/issues/{i}"), SETTLE)

    def step(client: Client, key: str, action: str, body: dict) -> None:
        client.call("POST", f"/issues/{town.issues[key]}/{action}", body)

    assign = {"assignee_id": worker_id, "difficulty": 3, "due_in_hours": 72}
    working = [k for k in texts if k not in ("reported", "rejected_duplicate", "withdrawn")]
    for key in working:
        step(admin, key, "assign", assign)
    for key in working:
        if key not in ("assigned",):
            step(worker, key, "start", {})
    step(worker, "in_progress", "notes", {"text": "已联系环卫站，明天上午清运。"})
    for key in ("resolved", "closed", "reopened_unsatisfied", "reopened_callback"):
        step(worker, key, "resolve", {"note": "已到现场处理完毕。"})
    step(worker, "escalated_township", "escalate", {"to_level": "township", "reason": "需乡里协调"})
    step(
        admin,
        "escalated_county",
        "escalate",
        {"to_level": "county", "reason": "县道归县交通局管", "department": county},
    )
    step(
        admin,
        "rejected_duplicate",
        "reject",
        {"reason": "与已受理的事项重复", "duplicate_of": town.issues["reported"]},
    )

    def resolved_in_intake(key: str) -> bool:
        issue = resident.get_or_none(f"/issues/{town.issues[key]}")
        return bool(issue and issue["can_rate"])

    for key in ("closed", "reopened_unsatisfied", "reopened_callback"):
        wait_for(lambda k=key: resolved_in_intake(k), SETTLE)
    resident.call("POST", f"/issues/{town.issues['closed']}/rating", {"rating": "satisfied"})
    resident.call(
        "POST", f"/issues/{town.issues['reopened_callback']}/rating", {"rating": "satisfied"}
    )
    resident.call(
        "POST",
        f"/issues/{town.issues['reopened_unsatisfied']}/rating",
        {"rating": "unsatisfied", "comment": "还是没修好"},
    )
    resident.call("POST", f"/issues/{town.issues['withdrawn']}/withdraw", {"reason": "已自行处理"})
    resident.call("POST", f"/issues/{town.issues['reported']}/details", {"text": "水越流越多了。"})
    resident.call("POST", f"/issues/{town.issues['reported']}/urge", {})

    def state(key: str) -> str | None:
        issue = admin.get_or_none(f"/issues/{town.issues[key]}")
        return issue and issue["state"]

    for key, wanted in (("closed", "closed"), ("reopened_callback", "closed")):
        wait_for(lambda k=key, w=wanted: state(k) == w, SETTLE)
    callback = {"method": "phone", "lawful": True, "implemented": True, "accepted": True}
    step(supervisor, "closed", "callbacks", callback)
    step(supervisor, "reopened_callback", "callbacks", {**callback, "implemented": False})
    for key, wanted in (
        ("reopened_unsatisfied", "reopened"),
        ("reopened_callback", "reopened"),
        ("withdrawn", "withdrawn"),
        ("rejected_duplicate", "rejected"),
    ):
        wait_for(lambda k=key, w=wanted: state(k) == w, SETTLE)
    ledger = admin.call("GET", "/ledger")["items"]
    assert ledger, "the county referral made no ledger entry"
    admin.call(
        "POST", f"/ledger/{ledger[0]['id']}/progress", {"text": "已转县交通局，约定下周勘察。"}
    )
    town.ids[("dispatch", "entry_id")] = [entry["id"] for entry in ledger]


def _feed(town: SeededTownship) -> None:
    """News in every state, a party post with a like and comments, one held for moderation."""
    publicist = town.client("feed", "publicist01")
    admin = Client(town.apps["feed"], town.callers["admin"])
    party = town.client("feed", "worker02")
    resident = Client(town.apps["feed"], town.callers["resident"])
    # feed knows the signed-in people from intake's account.upserted
    for who in ("publicist01", "worker02", "schema-resident"):
        wait_for(lambda w=who: _feed_knows(town, w), SETTLE)
    articles: dict[str, str] = {}
    for key, title in (
        ("draft", "关于春季防火的提醒（草稿）"),
        ("submitted", "沙口集乡召开网格员培训会"),
        ("returned", "乡村振兴工作推进情况"),
        ("published", "沙口集乡开展冬季送温暖活动"),
        ("archived", "去年的秋收工作总结"),
    ):
        body = {"title": title, "category": "notice", "body": f"{title}。详见正文。"}
        articles[key] = publicist.call("POST", "/news", body, ok=(201,))["id"]
    for key in ("submitted", "returned", "published", "archived"):
        publicist.call("POST", f"/news/{articles[key]}/submit", {})
    admin.call("POST", f"/news/{articles['returned']}/return", {"reason": "请补充数据来源。"})
    for key in ("published", "archived"):
        admin.call("POST", f"/news/{articles[key]}/publish", {})
    publicist.call("POST", f"/news/{articles['archived']}/archive", {})
    comment = resident.call(
        "POST", f"/news/{articles['published']}/comments", {"text": "活动很暖心，感谢乡里！"}
    )
    held = resident.call(
        "POST", f"/news/{articles['published']}/comments", {"text": "谁能帮我办证？加我微信"}
    )
    post = party.call(
        "POST", "/posts", {"text": "党员志愿者清扫村道积雪，方便群众出行。", "tag": "activity"}
    )
    resident.call("PUT", f"/posts/{post['id']}/like")
    post_comment = resident.call("POST", f"/posts/{post['id']}/comments", {"text": "为党员点赞！"})
    # the published one first: comments and the public page exist for it alone
    town.ids[("feed", "article_id")] = [articles["published"]] + [
        article for key, article in articles.items() if key != "published"
    ]
    town.ids[("feed", "post_id")] = [post["id"]]
    town.ids[("feed", "comment_id")] = [comment["id"], held["id"], post_comment["id"]]


def _feed_knows(town: SeededTownship, who: str) -> bool:
    from feed.models import Person

    with town.apps["feed"].extensions["db"].transaction() as session:
        return session.get(Person, uuid.UUID(town.people[who]["id"])) is not None


def _board(town: SeededTownship, settings: Any) -> None:
    """This month's 红黑榜, once the worker's points for the closed issue are in."""
    from scoring import boards, domain

    worker = Client(town.apps["scoring"], town.callers["grid_worker"])
    wait_for(lambda: worker.call("GET", "/points/mine")["items"], SETTLE)
    with town.apps["scoring"].extensions["db"].transaction() as session:
        boards.publish_board(session, settings, domain.current_month(utcnow()), by="command")


def _collect_ids(town: SeededTownship, data: dict) -> None:
    """Wait until the last effects arrived (the board's post, the inbox rows, the deliveries),
    then list the real objects by path parameter, in a fixed order."""
    from feed import domain as feed_domain

    feed = Client(town.apps["feed"], town.callers["resident"])

    def board_post() -> list[str]:
        posts = feed.call("GET", "/posts")["items"]
        return [p["id"] for p in posts if p["tag"] == feed_domain.BOARD_TAG]

    town.ids[("feed", "post_id")] += wait_for(board_post, SETTLE)
    notify = {role: Client(town.apps["notify"], town.callers[role]) for role in town.callers}
    inbox: list[str] = []
    for role in ("admin", "grid_worker", "resident"):
        items = wait_for(lambda r=role: notify[r].call("GET", "/notifications")["items"], SETTLE)
        inbox += [n["id"] for n in items[:3]]
    town.ids[("notify", "notification_id")] = inbox
    town.ids[("notify", "delivery_id")] = [
        d["id"] for d in notify["admin"].call("GET", "/deliveries")["items"][:4]
    ]
    dispatch = Client(town.apps["dispatch"], town.callers["admin"])
    for key, issue_id in town.issues.items():
        issue = dispatch.call("GET", f"/issues/{issue_id}")
        town.states[key] = (issue["state"], issue["level"])
    issues = list(town.issues.values())
    town.ids[("intake", "issue_id")] = issues
    town.ids[("dispatch", "issue_id")] = issues
    ids = town.accounts
    grids = data["grids"]
    # Accounts and grids a request may change: never the callers' own (or their grid), so that
    # a generated change cannot lock a caller out of the rest of the run.
    town.ids[("intake", "user_id")] = [
        town.people["other_worker"]["id"],
        town.people["grid_leader"]["id"],
        town.people["schema-neighbour"]["id"],
    ]
    town.ids[("dispatch", "user_id")] = [
        ids[grids[1]["workers"][0]["username"]],
        ids[data["area_leaders"][1]["username"]],
    ]
    town.ids[("dispatch", "grid_id")] = [grids[1]["id"], grids[2]["id"]]
    town.ids[("dispatch", "village_id")] = [v["id"] for v in data["villages"][1:3]]
    town.ids[("dispatch", "department_id")] = [
        data["departments"][0]["id"],
        data["township_departments"][0]["id"],
    ]
    scoring = Client(town.apps["scoring"], town.callers["admin"])
    town.ids[("scoring", "code")] = [rule["code"] for rule in scoring.call("GET", "/rules")]
    town.ids[("scoring", "worker_id")] = [
        town.people["grid_worker"]["id"],
        town.people["other_worker"]["id"],
    ]
