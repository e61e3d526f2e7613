"""Benchmark: the party feed and the news list at 100,000 posts, over real HTTP.

    .venv/bin/python services/feed/bench_feed.py --posts 100000 --requests 300

Fills a throwaway PostgreSQL database (``t_bench_feed_<hex>`` on the local server, migrated
with feed's Alembic history, dropped afterwards) the way feed writes it:

- the first ``--through-service`` posts (default 1,000) go through ``feed.services.publish_post``
  itself (the row and its ``post.published`` outbox row), as a party member's request does;
- the rest are bulk-copied into ``posts`` with the columns ``publish_post`` fills, spread over
  two years, 26 villages and the three tags, about 2 % hidden or deleted (they must not slow
  the published ones down), with like and comment counts;
- ``--articles`` news articles (default 5,000; a few pinned) are copied into ``articles`` with
  their body rendered by ``feed.domain.render_body``.

Then ``python -m feed web`` (gunicorn, ``--web-workers``) serves the database on a free port
and each page is timed with one keep-alive HTTP client, one request at a time: the first page,
a page deep in the cursor chain (a cursor taken 90 % down the list), and with the village and
tag filters; the public news list (pinned first) and one article.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "services" / "feed")]

import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench.common import start_web  # noqa: E402
from feed import domain, services  # noqa: E402
from feed.models import Article, Base, Person, Post, Village  # noqa: E402
from shared.auth import Principal, TokenIssuer, ensure_keypair  # noqa: E402
from shared.db import Database  # noqa: E402
from shared.migrations import upgrade  # noqa: E402
from shared.pagination import encode_cursor  # noqa: E402
from shared.testing import PostgresServer  # noqa: E402

TAGS = list(domain.TAGS)
POST_COLUMNS = (
    "id", "author_id", "author_name", "text", "photo_ids", "tag", "village_id", "state",
    "like_count", "comment_count", "published_at", "updated_at",
)  # fmt: skip
ARTICLE_COLUMNS = (
    "id", "title", "summary", "body_markdown", "body_html", "body_media_ids", "category", "state",
    "pinned", "author_id", "author_name", "published_at", "published_by", "views",
    "comment_count", "version", "created_at", "updated_at",
)  # fmt: skip
TEXTS = [
    "支部组织党员到敬老院打扫卫生、包饺子，陪老人们拉家常。",
    "党员志愿者一早清扫主路积雪，保障群众出行安全。",
    "网格长组织学习矛盾纠纷调解方法，结合案例讨论。",
    "主题党日活动：重温入党誓词，交流为民服务心得。",
]


def fill(db: Database, posts: int, through_service: int, articles: int, seed: int) -> dict:
    rng = random.Random(seed)
    villages = [uuid.uuid4() for _ in range(26)]
    members = [(uuid.uuid4(), rng.choice(villages)) for _ in range(400)]
    with db.transaction() as session:
        for i, village in enumerate(villages):
            session.add(Village(id=village, name=f"村{i + 1:02d}", revision=1))
        for i, (member, village) in enumerate(members):
            session.add(
                Person(
                    id=member,
                    name=f"党员{i + 1:03d}",
                    roles=["party_member"],
                    village_id=village,
                    account_known=True,
                    revision=1,
                )
            )
    now = datetime.now(UTC)
    started = time.perf_counter()
    done = 0
    while done < min(through_service, posts):
        with db.transaction() as session:
            for _ in range(min(200, through_service - done)):
                member, village = rng.choice(members)
                services.publish_post(
                    session,
                    Principal(id=member, roles=frozenset({"party_member"}), village_id=village),
                    {"text": rng.choice(TEXTS), "tag": rng.choice(TAGS), "village_id": village},
                    now=now - timedelta(seconds=rng.random() * 730 * 86400),
                )
                done += 1
    service_seconds = time.perf_counter() - started

    started = time.perf_counter()
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY posts ({', '.join(POST_COLUMNS)}) FROM STDIN") as copy:
            for _ in range(posts - done):
                member, village = rng.choice(members)
                at = now - timedelta(seconds=rng.random() * 730 * 86400)
                state = rng.choices(["published", "hidden", "deleted"], [98, 1, 1])[0]
                photos = [str(uuid.uuid4()) for _ in range(rng.randint(0, 9))]
                copy.write_row(
                    (
                        uuid.uuid4(), member, "", rng.choice(TEXTS), json.dumps(photos),
                        rng.choice(TAGS), village, state, rng.randint(0, 80), rng.randint(0, 12),
                        at, at,
                    )
                )  # fmt: skip
        author = uuid.uuid4()
        with cursor.copy(f"COPY articles ({', '.join(ARTICLE_COLUMNS)}) FROM STDIN") as copy:
            body = domain.render_body("## 工作动态\n\n" + "网格化管理" * 80)
            for i in range(articles):
                at = now - timedelta(seconds=rng.random() * 1460 * 86400)
                copy.write_row(
                    (
                        uuid.uuid4(), f"新闻 {i}", "摘要", "## 工作动态", body.html, "[]",
                        rng.choice(list(domain.CATEGORIES)),
                        rng.choices(["published", "archived", "draft"], [90, 8, 2])[0],
                        i < 3, author, "乡宣传办", at, author, rng.randint(0, 5000), 0, 3, at, at,
                    )
                )  # fmt: skip
        raw.commit()
    finally:
        raw.close()
    copy_seconds = time.perf_counter() - started
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    with db.transaction() as session:
        count = session.scalar(sa.select(sa.func.count()).select_from(Post))
        published = session.scalar(
            sa.select(sa.func.count()).select_from(Post).where(Post.state == "published")
        )
        news = session.scalar(sa.select(sa.func.count()).select_from(Article))
    return {
        "villages": villages,
        "posts": count,
        "published": published,
        "articles": news,
        "service_seconds": service_seconds,
        "copy_seconds": copy_seconds,
    }


def deep_cursor(db: Database, share: float, **filters) -> str:
    """A cursor ``share`` of the way down the (filtered) feed, as a reader paging there has."""
    with db.transaction() as session:
        stmt = sa.select(Post.published_at, Post.id).where(Post.state == "published")
        for name, value in filters.items():
            stmt = stmt.where(getattr(Post, name) == value)
        total = session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery()))
        row = session.execute(
            stmt.order_by(Post.published_at.desc(), Post.id.desc()).offset(int(total * share))
        ).first()
    return encode_cursor([row.published_at, row.id])


def explain(db: Database, village: uuid.UUID, cursor_at: datetime) -> str:
    sql = sa.text(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM posts WHERE state = 'published' "
        "AND village_id = :v AND tag = 'study' AND (published_at, id) < (:t, :i) "
        "ORDER BY published_at DESC, id DESC LIMIT 21"
    )
    with db.engine.connect() as conn:
        rows = conn.execute(sql, {"v": village, "t": cursor_at, "i": uuid.UUID(int=0)})
        return "\n".join("    " + r[0] for r in rows)


def timed(http: requests.Session, label: str, url: str, params: dict, count: int) -> str:
    for _ in range(5):  # warm up: connections, plan caches, gunicorn workers
        http.get(url, params=params, timeout=30).raise_for_status()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        answer = http.get(url, params=params, timeout=30)
        samples.append((time.perf_counter() - start) * 1000)
        assert answer.status_code == 200, (answer.status_code, answer.text[:500])
    samples.sort()
    q = statistics.quantiles(samples, n=100, method="inclusive")
    body = answer.json()
    rows = len(body["items"]) if "items" in body else 1
    return (
        f"{label:<52} p50 {q[49]:7.1f} ms   p99 {q[98]:7.1f} ms   max {samples[-1]:7.1f} ms"
        f"   ({rows} rows)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=100_000)
    parser.add_argument("--through-service", type=int, default=1_000)
    parser.add_argument("--articles", type=int, default=5_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--limit", type=int, default=20, help="rows per page")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=365)
    parser.add_argument("--explain", action="store_true", help="print the deep filtered plan")
    args = parser.parse_args()
    server = PostgresServer(
        os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1"),
        int(os.environ.get("TEST_POSTGRES_PORT", "5432")),
        os.environ.get("TEST_POSTGRES_USER", "postgres"),
        os.environ.get("TEST_POSTGRES_PASSWORD", ""),
    )
    url = server.create_database("bench_feed")
    folder = Path(tempfile.mkdtemp(prefix="bench_feed_"))
    db = None
    web = None
    try:
        upgrade("feed", url)
        db = Database(url, metadata=Base.metadata, producer="feed")
        world = fill(db, args.posts, args.through_service, args.articles, args.seed)
        print(
            f"posts {world['posts']:,} ({world['published']:,} published), "
            f"articles {world['articles']:,}; {args.through_service:,} through publish_post in "
            f"{world['service_seconds']:.1f} s, the rest copied in {world['copy_seconds']:.1f} s"
        )
        village = world["villages"][0]
        deep = deep_cursor(db, 0.9)
        deep_village = deep_cursor(db, 0.9, village_id=village)
        deep_tag = deep_cursor(db, 0.9, tag="good_deed")
        deep_both = deep_cursor(db, 0.9, village_id=village, tag="study")
        if args.explain:
            with db.transaction() as session:
                at = session.scalar(sa.select(sa.func.min(Post.published_at)))
            print("plan, village + tag, deep:\n" + explain(db, village, at + timedelta(days=60)))
        with db.transaction() as session:
            article_id = session.scalar(
                sa.select(Article.id).where(Article.state == "published").limit(1)
            )
        ensure_keypair(folder / "private.pem", folder / "public.pem")
        issuer = TokenIssuer(
            (folder / "private.pem").read_bytes(),
            issuer="service365-intake",
            audience="service365",
            ttl_seconds=3600,
        )
        token, _ = issuer.issue(uuid.uuid4(), ["resident"], "群众")
        web, base = start_web("feed", url, folder, folder, args.web_workers)
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        posts, news = f"{base}/api/v1/posts", f"{base}/api/v1/news"
        n, limit = args.requests, args.limit
        print(
            f"GET over HTTP, {n} requests each, {args.web_workers} gunicorn workers, limit {limit}"
        )
        for line in (
            timed(http, "posts: first page", posts, {"limit": limit}, n),
            timed(http, "posts: 90 % deep (cursor)", posts, {"limit": limit, "cursor": deep}, n),
            timed(http, "posts: village, first page", posts, {"village_id": village}, n),
            timed(
                http,
                "posts: village, 90 % deep",
                posts,
                {"village_id": village, "cursor": deep_village},
                n,
            ),
            timed(
                http,
                "posts: tag good_deed, 90 % deep",
                posts,
                {"tag": "good_deed", "cursor": deep_tag},
                n,
            ),
            timed(
                http,
                "posts: village + tag study, 90 % deep",
                posts,
                {"village_id": village, "tag": "study", "cursor": deep_both},
                n,
            ),
            timed(http, "news: first page (pinned first)", news, {"limit": limit}, n),
            timed(http, "news: category notice", news, {"category": "notice"}, n),
            timed(http, "news: one article", f"{news}/{article_id}", {}, n),
        ):
            print(line, flush=True)
    finally:
        if web is not None:
            web.terminate()
            web.wait(timeout=30)
        if db is not None:
            db.dispose()
        server.drop_all()


if __name__ == "__main__":
    main()
