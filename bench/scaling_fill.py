"""The scaling section's fills of scoring, feed and intake, each through the service's own code
(handlers for what it learns from events, ``services`` for what its users do); no SQL by hand.

- scoring: the villages and the workers' accounts through ``village.upserted`` and
  ``account.upserted``, then every event dispatch wrote to its outbox during its fill that
  scoring subscribes to (``issue.assigned``, ``issue.started``, ``issue.resolved``,
  ``issue.closed``...), oldest first, then the ``issue.rated`` envelopes the fill gave dispatch:
  each through ``scoring.handlers.SUBSCRIPTIONS``, 1,000 per transaction (``apply_in_runs``).
- feed: one published news article per 50 issues (``write_article`` → ``submit_article`` →
  ``publish_article``) and one party post per 10 issues (``publish_post``), dated over the same
  two years, 1,000 per transaction.
- intake: every report through ``services.report_issue`` (villages via intake's
  ``village.upserted`` handler, the measured resident via intake's own find-or-create of a
  WeChat resident); the resident has ``MINE`` of the reports, spread over the two years.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from shared.events import Envelope, parse_envelope

BATCH = 1000
MINE = 20
NEWS_PER_ISSUES = 50
POSTS_PER_ISSUES = 10


def envelope(kind: str, data: dict, at: datetime, producer: str) -> Envelope:
    return Envelope(
        id=uuid.uuid4(),
        type=kind,
        version=1,
        occurred_at=at,
        producer=producer,
        correlation_id=str(uuid.uuid4()),
        data=data,
    )


def _village_events(villages: list[uuid.UUID], producer: str = "dispatch") -> list[Envelope]:
    now = datetime.now(UTC)
    return [
        envelope(
            "village.upserted",
            {"village_id": str(v), "name": f"村{i:02d}", "revision": 1},
            now,
            producer,
        )
        for i, v in enumerate(villages)
    ]


def _account(person: Any, roles: list[str], village: uuid.UUID | None) -> Envelope:
    return envelope(
        "account.upserted",
        {
            "user_id": str(person.id),
            "name": person.name,
            "roles": roles,
            "village_id": str(village) if village else None,
            "active": True,
            "revision": 1,
        },
        datetime.now(UTC),
        "intake",
    )


def apply_in_runs(session: Any, subscriptions: dict, events: list[Envelope]) -> None:
    """Each run of consecutive events of one type to its handler, in order, the way the
    consumer does: together where the handler is ``batched``, else one at a time."""
    for _, run in itertools.groupby(events, key=lambda event: event.type):
        run = list(run)
        handler = subscriptions[run[0].type]
        if getattr(handler, "apply_many", None) is not None:
            handler.apply_many(session, run)
        else:
            for event in run:
                handler(session, event)


# --- scoring -------------------------------------------------------------------------------------


def fill_scoring(url: str, dispatch_url: str, world: dict) -> dict:
    """Scoring learns the dispatch fill's world the way it does in production: from events."""
    from dispatch.models import Base as DispatchBase
    from scoring import handlers
    from scoring.app import make_database
    from scoring.settings import ScoringSettings

    settings = ScoringSettings(app_env="test", database_url=url, log_format="text")
    handlers.use_settings(settings)
    db = make_database(settings)
    subscriptions = handlers.SUBSCRIPTIONS
    with db.transaction() as session:
        for event in _village_events(world["villages"]):
            handlers.handle_village_upserted(session, event)
        for village, people in world["workers"].items():
            for person in people:
                handlers.handle_account_upserted(
                    session, _account(person, ["grid_worker"], village)
                )
    started = time.perf_counter()
    applied = 0
    outbox = DispatchBase.metadata.tables["outbox"]
    source = sa.create_engine(dispatch_url)
    try:
        with source.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=BATCH).execute(
                sa.select(outbox.c.envelope)
                .where(outbox.c.event_type.in_(sorted(subscriptions)))
                .order_by(outbox.c.created_at, outbox.c.id)
            )
            for part in rows.partitions(BATCH):
                with db.transaction() as session:
                    apply_in_runs(session, subscriptions, [parse_envelope(b) for (b,) in part])
                applied += len(part)
    finally:
        source.dispose()
    rated = world["rated"]
    for start in range(0, len(rated), BATCH):
        with db.transaction() as session:
            apply_in_runs(session, subscriptions, rated[start : start + BATCH])
    applied += len(rated)
    seconds = time.perf_counter() - started
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
    db.dispose()
    handlers.use_settings(None)
    return {"seconds": seconds, "events": applied}


# --- feed ----------------------------------------------------------------------------------------


def fill_feed(url: str, issues: int, villages: list[uuid.UUID], seed: int = 365) -> dict:
    """News and party posts in proportion to the issues (1 per 50 and 1 per 10)."""
    from feed import handlers, services
    from feed.app import make_database
    from feed.settings import FeedSettings
    from shared.auth import Principal

    rng = random.Random(seed)
    settings = FeedSettings(app_env="test", database_url=url, log_format="text")
    db = make_database(settings)
    admin = Principal(id=uuid.uuid4(), roles=frozenset({"admin"}), name="管理员")
    publicist = Principal(id=uuid.uuid4(), roles=frozenset({"publicist"}), name="宣传员")
    members = [
        Principal(
            id=uuid.uuid4(),
            roles=frozenset({"party_member"}),
            name=f"党员{i}",
            village_id=villages[i % len(villages)],
        )
        for i in range(2 * len(villages))
    ]
    with db.transaction() as session:
        for event in _village_events(villages):
            handlers.handle_village_upserted(session, event)
        handlers.handle_account_upserted(session, _account(admin, ["admin"], None))
        handlers.handle_account_upserted(session, _account(publicist, ["publicist"], None))
        for member in members:
            handlers.handle_account_upserted(
                session, _account(member, ["party_member"], member.village_id)
            )
    now = datetime.now(UTC)
    span = timedelta(days=730)
    articles = max(1, issues // NEWS_PER_ISSUES)
    posts = max(1, issues // POSTS_PER_ISSUES)
    started = time.perf_counter()
    for start in range(0, articles, BATCH // 4):  # three steps and a history row each
        with db.transaction() as session:
            for n in range(start, min(articles, start + BATCH // 4)):
                article = services.write_article(
                    session,
                    publicist,
                    {
                        "title": f"基准测试新闻 {n}",
                        "summary": "乡里的工作动态。",
                        "body": "## 工作动态\n\n今天乡里召开了网格化治理工作会议。",
                        "category": rng.choice(["key_work", "progress", "notice"]),
                        "pinned": n == articles - 1,
                    },
                )
                services.submit_article(session, publicist, article.id, note=None)
                services.publish_article(
                    session,
                    admin,
                    article.id,
                    publish_at=None,
                    note=None,
                    now=now - span + span * (n / articles),
                )
    tags = ["activity", "good_deed", "study"]
    for start in range(0, posts, BATCH):
        with db.transaction() as session:
            for n in range(start, min(posts, start + BATCH)):
                services.publish_post(
                    session,
                    rng.choice(members),
                    {"text": f"党员志愿服务活动第 {n} 次。", "tag": rng.choice(tags)},
                    now=now - span + span * (n / posts),
                )
    seconds = time.perf_counter() - started
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
    db.dispose()
    return {"seconds": seconds, "articles": articles, "posts": posts, "village": villages[0]}


# --- intake --------------------------------------------------------------------------------------


def fill_intake(url: str, issues: int, villages: list[uuid.UUID], seed: int = 365) -> dict:
    """``issues`` reports over two years through ``services.report_issue``; ``MINE`` of them by
    the resident whose "mine" list is measured."""
    from intake import accounts, handlers, services
    from intake.app import make_database
    from intake.models import User
    from intake.settings import IntakeSettings
    from shared.contract import CATEGORIES

    rng = random.Random(seed)
    settings = IntakeSettings(app_env="test", database_url=url, log_format="text")
    db = make_database(settings)
    with db.transaction() as session:
        for event in _village_events(villages):
            handlers.handle_village_upserted(session, event)
    openid = f"bench-scaling-{uuid.uuid4().hex}"
    accounts._find_or_create_resident(db, openid, None)
    with db.transaction() as session:
        resident_id = session.scalars(sa.select(User.id).where(User.openid == openid)).one()
    now = datetime.now(UTC)
    span = timedelta(days=730)
    every = max(1, issues // MINE)
    categories = sorted(CATEGORIES)
    started = time.perf_counter()
    for start in range(0, issues, BATCH):
        with db.transaction() as session:
            for n in range(start, min(issues, start + BATCH)):
                reporter = resident_id if n % every == every // 2 else uuid.uuid4()
                services.report_issue(
                    session,
                    settings,
                    reporter,
                    services.NewReport(
                        category=rng.choice(categories),
                        description="基准测试诉求：村口道路有个大坑。",
                        village_id=rng.choice(villages),
                        address="村东街",
                        lat=36.2,
                        lon=115.1,
                    ),
                    now=now - span + span * (n / max(1, issues)),
                )
    seconds = time.perf_counter() - started
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
    db.dispose()
    return {
        "seconds": seconds,
        "resident": resident_id,
        "mine": len(range(every // 2, issues, every)),
    }
