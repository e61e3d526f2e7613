"""Benchmark: scoring's leaderboard at 1,000,000 ledger entries, over real HTTP.

    .venv/bin/python scripts/bench_leaderboard.py --entries 1000000 --requests 300

Fills a throwaway PostgreSQL database (``t_bench_scoring_<hex>`` on the local server, migrated
with scoring's Alembic history, dropped afterwards) the way scoring writes it:

- the first ``--through-award`` entries (default 2,000) go through ``scoring.services.award``
  itself, one fake event each (ledger row, the four totals, the ``points.awarded`` outbox row);
- the rest are bulk-copied into ``points_ledger`` with the columns ``award`` fills (points from
  ``scoring.domain``'s award functions under the rule versions in the database, ``period_month``
  from ``domain.month_of``), and their totals are added with ``scoring.services.add_to_totals``
  once per person and month (the same upserts, summed first: addition does not care);
- then ``scoring.boards.rebuild(fix=False)`` recomputes every total from the ledger and must find
  no difference, so the totals are exactly what scoring's own code keeps.

No assignments, resolutions or outbox rows are made for the bulk entries: the leaderboard reads
``people`` and ``score_totals`` only. Then ``python -m scoring web`` (gunicorn, ``--web-workers``)
serves the database on a free port and ``GET /api/v1/leaderboard`` is timed with one keep-alive
HTTP client, one request at a time, for this month and for ``all`` (and quarter and year).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "services" / "scoring")]

import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench.common import start_web  # noqa: E402
from scoring import boards, domain, services  # noqa: E402
from scoring.models import Base, Person, Village  # noqa: E402
from shared.auth import TokenIssuer, ensure_keypair  # noqa: E402
from shared.clock import SHANGHAI  # noqa: E402
from shared.db import Database  # noqa: E402
from shared.events import Envelope  # noqa: E402
from shared.migrations import upgrade  # noqa: E402
from shared.testing import PostgresServer  # noqa: E402

# What one ledger entry is about, and how often (a township's mix: most entries are resolutions
# and ratings; clawbacks and callbacks are rarer).
MIX = [
    ("resolved_on_time", 0.44),
    ("resolved_late", 0.05),
    ("rating_satisfied", 0.26),
    ("rating_basically_satisfied", 0.08),
    ("rating_unsatisfied", 0.04),
    ("reopen_clawback", 0.04),
    ("callback_passed", 0.07),
    ("callback_failed", 0.02),
]
# The ledger's columns in the order scoring's own insert names them.
LEDGER_COLUMNS = services.POINTS_ENTRY.columns


def months_back(now: datetime, count: int) -> list[tuple[datetime, datetime]]:
    """(start, end) in UTC of the last ``count`` Asia/Shanghai months, the current one last
    (ending now)."""
    local = now.astimezone(SHANGHAI)
    year, month = local.year, local.month
    spans = []
    for _ in range(count):
        start = datetime(year, month, 1, tzinfo=SHANGHAI)
        end_year, end_month = (year, month + 1) if month < 12 else (year + 1, 1)
        end = min(datetime(end_year, end_month, 1, tzinfo=SHANGHAI), now)
        spans.append((start.astimezone(UTC), end.astimezone(UTC)))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return spans[::-1]


def make_people(db: Database, rng: random.Random) -> list[uuid.UUID]:
    """The real township's size: 26 villages, 40 grids with a leader, 167 grid workers."""
    villages = [uuid.uuid4() for _ in range(26)]
    grids = [(uuid.uuid4(), villages[i % 26], uuid.uuid4()) for i in range(40)]
    with db.transaction() as session:
        for i, village in enumerate(villages):
            session.add(Village(id=village, name=f"村{i + 1:02d}", revision=1))
        people = []
        for i, (grid, village, leader) in enumerate(grids):
            session.add(
                Person(
                    id=leader,
                    name=f"网格长{i + 1:02d}",
                    roles=["grid_leader"],
                    village_id=village,
                    active=True,
                    on_board=True,
                    revision=1,
                    grid_id=grid,
                )
            )
            people.append(leader)
        for i in range(167):
            grid, village, leader = grids[i % 40]
            worker = uuid.uuid4()
            session.add(
                Person(
                    id=worker,
                    name=f"网格员{i + 1:03d}",
                    roles=["grid_worker"],
                    village_id=village,
                    active=True,
                    on_board=True,
                    revision=1,
                    grid_id=grid,
                    grid_leader_id=leader,
                )
            )
            people.append(worker)
    rng.shuffle(people)
    return people


def planned_entries(
    count: int, people: list[uuid.UUID], versions: list, now: datetime, months: int, seed: int
):
    """``count`` entries ``(user_id, Award, occurred_at, issue_id, resolution_no)``, spread over
    ``months`` months; people weighted unevenly, as real workers are."""
    rng = random.Random(seed)
    weights = [rng.paretovariate(1.5) for _ in people]
    spans = months_back(now, months)
    codes = [c for c, _ in MIX]
    shares = [s for _, s in MIX]
    users = rng.choices(people, weights, k=count)
    rules = rng.choices(codes, shares, k=count)
    for user, code in zip(users, rules, strict=True):
        start, end = spans[rng.randrange(len(spans))]
        occurred = start + timedelta(seconds=rng.random() * (end - start).total_seconds())
        day = domain.local_day(occurred)
        difficulty = rng.randint(1, 5)
        if code in ("resolved_on_time", "resolved_late"):
            result = domain.resolution_award(
                versions, on_time=code == "resolved_on_time", difficulty=difficulty, day=day
            )
        elif code.startswith("rating_"):
            result = domain.rating_award(versions, rating=code[len("rating_") :], day=day)
        elif code == "reopen_clawback":
            result = domain.clawback_award(versions, earned=difficulty, day=day)
        else:
            result = domain.callback_award(versions, passed=code == "callback_passed", day=day)
        yield user, result, occurred, uuid.uuid4(), rng.randint(1, 2)


def fill(db: Database, entries: int, through_award: int, months: int, seed: int) -> dict:
    rng = random.Random(seed)
    people = make_people(db, rng)
    now = datetime.now(UTC)
    with db.transaction() as session:
        versions = services.rule_versions(session)
    plan = planned_entries(entries, people, versions, now, months, seed)

    started = time.perf_counter()
    # 1. The first entries through scoring's own award(), as the consumer writes them.
    done = 0
    while done < min(through_award, entries):
        with db.transaction() as session:
            for _ in range(min(200, through_award - done)):
                user, result, occurred, issue_id, resolution_no = next(plan)
                event = Envelope(
                    id=uuid.uuid4(),
                    type="issue.resolved",
                    version=1,
                    occurred_at=occurred,
                    producer="dispatch",
                    correlation_id=str(uuid.uuid4()),
                    data={"issue_id": str(issue_id)},
                )
                services.award(
                    session,
                    event,
                    user_id=user,
                    result=result,
                    issue=None,
                    occurred_at=occurred,
                    resolution_no=resolution_no,
                )
                done += 1
    award_seconds = time.perf_counter() - started

    # 2. The rest copied in bulk, with their totals summed per person and month.
    started = time.perf_counter()
    increments: dict[tuple[uuid.UUID, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        copy_sql = f"COPY points_ledger ({', '.join(LEDGER_COLUMNS)}) FROM STDIN"
        with cursor.copy(copy_sql) as copy:
            for user, result, occurred, issue_id, resolution_no in plan:
                month = domain.month_of(occurred)
                copy.write_row(
                    (
                        uuid.uuid4(),
                        user,
                        result.points,
                        result.code,
                        result.rule.version,
                        issue_id,
                        None,
                        resolution_no,
                        uuid.uuid4(),
                        occurred,
                        month,
                        now,
                    )
                )
                total = increments[(user, month)]
                for column, value in domain.total_increments(result.code, result.points).items():
                    total[column] += value
        raw.commit()
    finally:
        raw.close()
    copy_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with db.transaction() as session:
        for (user, month), total in increments.items():
            services.add_to_totals(session, user, month, dict(total))
    totals_seconds = time.perf_counter() - started

    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    started = time.perf_counter()
    with db.transaction() as session:
        differences = boards.rebuild(session, fix=False)
        ledger_rows = session.scalar(sa.text("SELECT count(*) FROM points_ledger"))
        total_rows = session.scalar(sa.text("SELECT count(*) FROM score_totals"))
    rebuild_seconds = time.perf_counter() - started
    return {
        "people": people,
        "ledger_rows": ledger_rows,
        "total_rows": total_rows,
        "differences": differences,
        "award_seconds": award_seconds,
        "copy_seconds": copy_seconds,
        "totals_seconds": totals_seconds,
        "rebuild_seconds": rebuild_seconds,
        "now": now,
    }


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
    rows = len(answer.json()["items"])
    return (
        f"{label:<46} p50 {q[49]:7.1f} ms   p99 {q[98]:7.1f} ms   max {samples[-1]:7.1f} ms"
        f"   ({rows} rows)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--through-award", type=int, default=2_000)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--limit", type=int, default=20, help="rows per leaderboard page")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=365)
    args = parser.parse_args()

    server = PostgresServer(
        os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1"),
        int(os.environ.get("TEST_POSTGRES_PORT", "5432")),
        os.environ.get("TEST_POSTGRES_USER", "postgres"),
        os.environ.get("TEST_POSTGRES_PASSWORD", ""),
    )
    url = server.create_database("bench_scoring")
    folder = Path(tempfile.mkdtemp(prefix="bench_scoring_"))
    db = None
    web = None
    try:
        upgrade("scoring", url)
        db = Database(url, metadata=Base.metadata, producer="scoring")
        world = fill(db, args.entries, args.through_award, args.months, args.seed)
        print(
            f"ledger {world['ledger_rows']:,} entries "
            f"({min(args.through_award, args.entries):,} through services.award in "
            f"{world['award_seconds']:.1f} s, the rest by COPY in {world['copy_seconds']:.1f} s, "
            f"their totals in {world['totals_seconds']:.1f} s); "
            f"score_totals {world['total_rows']:,} rows; {len(world['people'])} people"
        )
        differences = world["differences"]
        print(
            f"rebuild(fix=False) over the whole ledger: {len(differences)} differences "
            f"({world['rebuild_seconds']:.1f} s)"
        )
        if differences:
            raise SystemExit(f"totals differ from the ledger: {differences[:5]}")

        keys = folder / "keys"
        ensure_keypair(keys / "private.pem", keys / "public.pem")
        issuer = TokenIssuer(
            (keys / "private.pem").read_bytes(),
            issuer="service365-intake",
            audience="service365",
            ttl_seconds=3600,
        )
        token, _ = issuer.issue(world["people"][0], ["grid_worker"], "网格员")
        web, base = start_web("scoring", url, keys, folder, args.web_workers)
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        board = f"{base}/api/v1/leaderboard"
        local = world["now"].astimezone(SHANGHAI)
        month = f"month:{local:%Y-%m}"
        quarter = f"quarter:{local.year}-Q{(local.month - 1) // 3 + 1}"
        n, limit = args.requests, args.limit
        print(
            f"GET /api/v1/leaderboard over HTTP (gunicorn, {args.web_workers} workers, "
            f"one keep-alive client), {n} requests each:"
        )
        lines = [
            timed(http, f"period={month}", board, {"period": month, "limit": limit}, n),
            timed(http, "period=all", board, {"period": "all", "limit": limit}, n),
            timed(http, f"period={quarter}", board, {"period": quarter, "limit": limit}, n),
            timed(http, f"period=year:{local.year}", board, {"period": f"year:{local.year}"}, n),
            timed(
                http,
                f"period={month}&scope=village",
                board,
                {"period": month, "scope": "village", "limit": limit},
                n,
            ),
            timed(
                http,
                f"period={month}&limit=200",
                board,
                {"period": month, "limit": 200},
                n,
            ),
        ]
        print("\n".join(lines))
    finally:
        if web is not None:
            os.killpg(web.pid, 15)
            web.wait(20)
        if db is not None:
            db.dispose()
        server.drop_all()


if __name__ == "__main__":
    main()
