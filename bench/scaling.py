"""Scaling: the pages whose cost could grow with the number of issues, at a small and a large
number of issues, over real HTTP (each service's own gunicorn, 2 workers, one keep-alive client,
one request at a time): p50/p99 and the ratio large/small; goal p99 ≤ 20 ms at the large size and
≤ 1.5× the small figure.

Pages: dispatch's admin queue, a worker's tasks and the statistics (whole township, one
village); scoring's leaderboard (workers all-time, villages this year); feed's news (anonymous)
and party feed (as a resident); intake's "mine" list of a resident with 20 reports of their own
among the N.

Each size gets one throwaway PostgreSQL database per service at its Alembic head, filled through
the services' own code only (no SQL by hand), 1,000 per transaction:

- dispatch: every report through ``handlers.handle_issue_reported`` (generated
  ``issue.reported`` envelopes, 1,000 a run, as its consumer applies a batch), then assign /
  start / resolve through ``services`` and ratings through ``handlers.handle_issue_rated`` (so
  history, outbox rows and the statistics' running aggregates are written as in production).
- scoring (``bench/scaling_fill.py``): villages and workers' accounts through its
  ``village.upserted`` / ``account.upserted`` handlers, then every event of dispatch's outbox that
  scoring subscribes to (``issue.assigned``, ``issue.started``, ``issue.resolved``,
  ``issue.closed``...), oldest first, and the same ``issue.rated`` envelopes dispatch got, each
  through ``scoring.handlers.SUBSCRIPTIONS`` (handlers called directly, each run of one type
  together where the handler is batched, as the consumer does; no broker, no inbox
  de-duplication rows). The envelopes' ``occurred_at`` is when the fill ran (dispatch stamps its
  events with the wall clock), so assignments count in the current month; resolutions carry
  their back-dated ``resolved_at``.
- feed: one published news article per 50 issues (write → submit → publish, dated over the two
  years) and one party post per 10 issues (``services.publish_post``), by 52 party members.
- intake: every report through ``services.report_issue`` (``now=`` over two years; villages
  through intake's ``village.upserted`` handler; the resident through intake's own WeChat
  find-or-create).

Each size's databases are dropped afterwards. ``SCALING_KEEP_DATABASES=1`` keeps them (for
``EXPLAIN ANALYZE``) and notes them with who the pages are measured as in
``var/bench/scaling-<size>.json``; a later run with ``SCALING_REUSE=1`` measures the pages on
them again without filling (a 1 M fill takes hours, the pages a minute). The fill's rate of
each service (issues/s) is printed and reported as rows ``load <service>`` and in each page
row's ``extra`` (a reused size reports the rates of its fill).

Sizes: ``ctx.options["scaling_sizes"]`` or ``SCALING_SIZES`` (e.g. ``10000,1000000``); default
10 k and 100 k (smoke: 1 k and 5 k). ``ctx.options["scaling_services"]`` or ``SCALING_SERVICES``
fills and measures only some of the four (scoring needs dispatch). The issue asks for 1 M, but
the services' own code takes the fill in slowly on this 2-core machine. Measured on 2026-12-04
(a quiet machine): at 10 k, dispatch 87 issues/s (reports in runs of 1,000, then the life-cycle
steps, about 2.8 per issue through ``services`` one at a time), scoring 89 issues/s (3.9 events
per issue; only ``issue.resolved`` is a batched handler); at 1 M, intake 359 issues/s (46 min)
and feed 3,718 issues/s (4.5 min). One 1 M size would take about 3.2 h for dispatch and 3.1 h
for scoring at the 10 k rates, ~7 h in all in sequence (more: dispatch slows with size); 100 k
about an hour. Ask for it with
``SCALING_SIZES=10000,1000000 SCALING_KEEP_DATABASES=1`` on a larger machine, then measure again
with ``SCALING_REUSE=1``; ``SCALING_SERVICES=intake,feed`` measures those two at 1 M in under an
hour.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import ROOT, Context, Goal, Result, percentile, start_web

SERVICES = ("dispatch", "scoring", "feed", "intake")
sys.path[:0] = [str(ROOT)] + [str(ROOT / "services" / s) for s in SERVICES]

import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench.scaling_fill import fill_feed, fill_intake, fill_scoring  # noqa: E402
from bench.system import GENEROUS_LIMITS  # noqa: E402
from dispatch import services  # noqa: E402
from dispatch.app import make_database  # noqa: E402
from dispatch.handlers import handle_issue_rated, handle_issue_reported, use_settings  # noqa: E402
from dispatch.models import Grid, GridMember, Village  # noqa: E402
from dispatch.settings import DispatchSettings  # noqa: E402
from shared.auth import Principal, TokenIssuer, ensure_keypair  # noqa: E402
from shared.contract import CATEGORIES  # noqa: E402
from shared.events import Envelope  # noqa: E402
from shared.migrations import upgrade  # noqa: E402
from shared.testing import PostgresServer  # noqa: E402

SECTION = "scaling"
# Where SCALING_KEEP_DATABASES=1 notes each size's databases for SCALING_REUSE=1.
MANIFESTS = ROOT / "var" / "bench"
VILLAGES = 26
WORKERS_PER_VILLAGE = 6


def _envelope(kind: str, data: dict, at: datetime) -> Envelope:
    return Envelope(
        id=uuid.uuid4(),
        type=kind,
        version=1,
        occurred_at=at,
        producer="intake",
        correlation_id=str(uuid.uuid4()),
        data=data,
    )


def fill(url: str, issues: int, seed: int = 365) -> dict:
    """26 villages, their grids and workers, ``issues`` reports over the last two years and
    their life cycles (mostly done; the newest still open), through dispatch's own code."""
    rng = random.Random(seed)
    settings = DispatchSettings(app_env="test", database_url=url, log_format="text")
    use_settings(settings)
    db = make_database(settings)
    admin = Principal(id=uuid.uuid4(), roles=frozenset({"admin"}), name="管理员")
    villages = [uuid.uuid4() for _ in range(VILLAGES)]
    workers: dict[uuid.UUID, list[Principal]] = {}
    with db.transaction() as session:
        services.upsert_staff(
            session, {"user_id": admin.id, "name": admin.name, "roles": ["admin"], "active": True}
        )
        for i, village in enumerate(villages):
            session.add(Village(id=village, code=f"V{i:02d}", name=f"村{i:02d}"))
            session.flush()
            grid = Grid(id=uuid.uuid4(), village_id=village, name="第一网格")
            session.add(grid)
            workers[village] = []
            for j in range(WORKERS_PER_VILLAGE):
                person = Principal(
                    id=uuid.uuid4(), roles=frozenset({"grid_worker"}), name=f"网格员{i}-{j}"
                )
                services.upsert_staff(
                    session,
                    {
                        "user_id": person.id,
                        "name": person.name,
                        "roles": ["grid_worker"],
                        "active": True,
                    },
                )
                workers[village].append(person)
            session.flush()
            for person in workers[village]:
                session.add(GridMember(grid_id=grid.id, user_id=person.id))
    now = datetime.now(UTC)
    span = timedelta(days=730)
    started = time.perf_counter()
    plan = []
    for n in range(issues):
        # Oldest first; the newest ~1,500 (a fortnight of a busy county) are still open.
        reported_at = now - span + span * (n / max(1, issues))
        plan.append((uuid.uuid4(), rng.choice(villages), reported_at, issues - n))
    for start in range(0, issues, 1000):
        reports = []
        for issue_id, village, reported_at, _ in plan[start : start + 1000]:
            data = {
                "issue_id": str(issue_id),
                "reporter_id": str(uuid.uuid4()),
                "category": rng.choice(list(CATEGORIES)),
                "description": "基准测试诉求",
                "village_id": str(village),
                "address": "村东街",
                "lat": 36.2,
                "lon": 115.1,
                "photo_ids": [],
                "reported_at": reported_at.isoformat(),
            }
            reports.append(_envelope("issue.reported", data, reported_at))
        with db.transaction() as session:
            # A run of reports together, as dispatch's consumer applies a batch.
            handle_issue_reported.apply_many(session, reports)
    report_seconds = time.perf_counter() - started
    started = time.perf_counter()
    rated: list[Envelope] = []
    for start in range(0, issues, 1000):
        with db.transaction() as session:
            for issue_id, village, reported_at, newer in plan[start : start + 1000]:
                roll = rng.random()
                worker = rng.choice(workers[village])
                if newer <= 300 and roll < 0.5:
                    continue  # not yet assigned
                if roll < 0.02:
                    services.reject(session, admin, issue_id, reason="重复诉求", now=reported_at)
                    continue
                services.assign(
                    session,
                    settings,
                    admin,
                    issue_id,
                    assignee_id=worker.id,
                    difficulty=1 + int(roll * 5) % 5,
                    due_in_hours=48,
                    now=reported_at + timedelta(hours=1),
                )
                if newer <= 1500 and roll < 0.6:
                    continue  # open work: assigned, some overdue
                services.start(session, worker, issue_id, now=reported_at + timedelta(hours=2))
                if newer <= 1500:
                    continue
                hours = rng.lognormvariate(3.0, 1.0)
                services.resolve(
                    session,
                    worker,
                    issue_id,
                    note="已处理。",
                    now=reported_at + timedelta(hours=2 + hours),
                )
                if roll < 0.7:
                    at = reported_at + timedelta(hours=3 + hours)
                    rating = "satisfied" if roll < 0.6 else "basically_satisfied"
                    event = _envelope(
                        "issue.rated", {"issue_id": str(issue_id), "rating": rating}, at
                    )
                    handle_issue_rated(session, event)
                    rated.append(event)  # scoring hears the same rating
    step_seconds = time.perf_counter() - started
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
    db.dispose()
    use_settings(None)
    return {
        "admin": admin,
        "worker": workers[villages[0]][0],
        "village": villages[0],
        "villages": villages,
        "workers": workers,
        "rated": rated,
        "report_seconds": report_seconds,
        "step_seconds": step_seconds,
    }


def measure(http: requests.Session, url: str, params: dict, count: int) -> tuple[float, float]:
    """(p50, p99) in ms of ``count`` sequential GETs after a warm-up."""
    for _ in range(5):
        http.get(url, params=params, timeout=60).raise_for_status()
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        answer = http.get(url, params=params, timeout=60)
        samples.append((time.perf_counter() - began) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(f"{url} {params}: {answer.status_code} {answer.text[:300]}")
    return percentile(samples, 50), percentile(samples, 99)


def routes(who: dict) -> list[tuple[str, str, str, dict, str | None]]:
    """(service, name, path, query, role) of each measured page; role None: anonymous."""
    year = datetime.now(UTC).year
    village = {"village_id": who.get("village")}
    return [
        ("dispatch", "admin queue", "/api/v1/queue", {"limit": 20}, "admin"),
        ("dispatch", "worker tasks", "/api/v1/tasks/mine", {"limit": 20}, "worker"),
        ("dispatch", "stats township", "/api/v1/stats", {}, "admin"),
        ("dispatch", "stats village", "/api/v1/stats", village, "admin"),
        ("scoring", "leaderboard workers all-time", "/api/v1/leaderboard",
         {"period": "all"}, "worker"),
        ("scoring", "leaderboard villages year", "/api/v1/leaderboard",
         {"period": f"year:{year}", "scope": "village"}, "worker"),
        ("feed", "news feed (anonymous)", "/api/v1/news", {}, None),
        ("feed", "party feed (resident)", "/api/v1/posts", {}, "resident"),
        ("intake", "resident mine list", "/api/v1/issues/mine", {}, "resident"),
    ]  # fmt: skip


def measure_size(
    ctx: Context,
    server: PostgresServer,
    issues: int,
    requests_each: int,
    services: tuple[str, ...] = SERVICES,
) -> dict:
    """Fill ``services``' throwaway databases with ``issues`` issues (or, with
    ``SCALING_REUSE=1``, take the ones an earlier run kept for this size), then measure each
    service's pages through its own gunicorn; {"pages": {name: (p50, p99)}, "rates": {...}}."""
    folder = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    web = None
    keep = bool(os.environ.get("SCALING_KEEP_DATABASES"))
    try:
        filled = reusable(issues, services) if os.environ.get("SCALING_REUSE") else None
        if filled is None:
            filled = fill_all(server, issues, services)
            if keep:
                MANIFESTS.mkdir(parents=True, exist_ok=True)
                manifest(issues).write_text(json.dumps(filled, indent=1), encoding="utf-8")
        else:
            print(f"   {issues:,} issues: reusing {manifest(issues)}", file=sys.stderr, flush=True)
        urls, who = filled["urls"], filled["who"]
        ensure_keypair(folder / "private.pem", folder / "public.pem")
        issuer = TokenIssuer(
            (folder / "private.pem").read_bytes(),
            issuer="service365-intake",
            audience="service365",
            ttl_seconds=3600,
        )
        # Without intake's fill, feed's resident is one it has not heard of (let in on the token).
        resident = who.get("resident") or str(uuid.uuid4())
        tokens = {"resident": issuer.issue(uuid.UUID(resident), ["resident"], "")[0]}
        if "dispatch" in services:
            tokens["admin"] = issuer.issue(uuid.UUID(who["admin"]), ["admin"], "管理员")[0]
            tokens["worker"] = issuer.issue(
                uuid.UUID(who["worker"]), ["grid_worker"], who["worker_name"]
            )[0]
        pages = {}
        for service in services:
            web, base = start_web(
                service, urls[service], folder, folder / service, env=GENEROUS_LIMITS
            )
            try:
                for svc, name, path, params, role in routes(who):
                    if svc != service:
                        continue
                    http = requests.Session()
                    if role:
                        http.headers["Authorization"] = f"Bearer {tokens[role]}"
                    pages[name] = (service, *measure(http, base + path, params, requests_each))
            finally:
                os.killpg(web.pid, 15)
                web.wait(20)
                web = None
        return {"pages": pages, "rates": filled["rates"]}
    finally:
        if web is not None:
            os.killpg(web.pid, 15)
            web.wait(20)
        if not keep:
            server.drop_all()


def fill_all(server: PostgresServer, issues: int, services: tuple[str, ...] = SERVICES) -> dict:
    """``services``' databases (scoring needs dispatch's) filled with ``issues`` issues: their
    URLs, who the pages are measured as, and each fill's rate."""
    urls = {}
    for service in services:
        urls[service] = server.create_database(f"bench_scaling_{service}")
        upgrade(service, urls[service])
    rates: dict[str, float] = {}
    who: dict[str, str] = {}
    if "dispatch" in services:
        world = fill(urls["dispatch"], issues)
        rates["dispatch"] = issues / (world["report_seconds"] + world["step_seconds"])
        _progress(
            f"{issues:,} issues: dispatch reports {world['report_seconds']:.0f} s, "
            f"steps {world['step_seconds']:.0f} s ({rates['dispatch']:,.0f} issues/s)"
        )
        who.update(
            admin=str(world["admin"].id),
            worker=str(world["worker"].id),
            worker_name=world["worker"].name,
            village=str(world["village"]),
        )
        villages = world["villages"]
    else:  # intake and feed only need the villages' ids
        villages = [uuid.uuid4() for _ in range(VILLAGES)]
    if "scoring" in services:
        scoring = fill_scoring(urls["scoring"], urls["dispatch"], world)
        rates["scoring"] = issues / scoring["seconds"]
        rates["scoring events/s"] = scoring["events"] / scoring["seconds"]
        _progress(
            f"{issues:,} issues: scoring {scoring['events']:,} events in "
            f"{scoring['seconds']:.0f} s ({rates['scoring']:,.0f} issues/s, "
            f"{rates['scoring events/s']:,.0f} events/s)"
        )
    if "feed" in services:
        feed = fill_feed(urls["feed"], issues, villages)
        rates["feed"] = issues / feed["seconds"]
        rates["feed items/s"] = (feed["articles"] + feed["posts"]) / feed["seconds"]
        _progress(
            f"{issues:,} issues: feed {feed['articles']:,} news + {feed['posts']:,} posts in "
            f"{feed['seconds']:.0f} s ({rates['feed']:,.0f} issues/s, "
            f"{rates['feed items/s']:,.0f} items/s)"
        )
    if "intake" in services:
        intake = fill_intake(urls["intake"], issues, villages)
        rates["intake"] = issues / intake["seconds"]
        _progress(
            f"{issues:,} issues: intake reports {intake['seconds']:.0f} s "
            f"({rates['intake']:,.0f} issues/s; the resident has {intake['mine']})"
        )
        who["resident"] = str(intake["resident"])
    return {"issues": issues, "urls": urls, "who": who, "rates": rates}


def _progress(line: str) -> None:
    print(f"   {line}", file=sys.stderr, flush=True)


def manifest(issues: int) -> Path:
    return MANIFESTS / f"scaling-{issues}.json"


def reusable(issues: int, services: tuple[str, ...] = SERVICES) -> dict | None:
    """What a run with ``SCALING_KEEP_DATABASES=1`` kept for this size, if it filled
    ``services`` and their databases are all still there: a 1 M fill takes hours, the pages a
    minute."""
    path = manifest(issues)
    if not path.exists():
        return None
    filled = json.loads(path.read_text(encoding="utf-8"))
    if not set(services) <= set(filled["urls"]):
        return None
    for service in services:
        url = filled["urls"][service]
        engine = sa.create_engine(url)
        try:
            with engine.connect():
                pass
        except sa.exc.OperationalError:
            return None
        finally:
            engine.dispose()
    return filled


def sizes(ctx: Context) -> tuple[int, int]:
    chosen = ctx.options.get("scaling_sizes") or os.environ.get("SCALING_SIZES")
    if chosen:
        if isinstance(chosen, list | tuple):
            small, large = (int(x) for x in chosen[:2])
        else:
            small, large = (int(x) for x in str(chosen).replace(" ", "").split(",")[:2])
        return small, large
    return (1_000, 5_000) if ctx.smoke else (10_000, 100_000)


def chosen_services(ctx: Context) -> tuple[str, ...]:
    """``SCALING_SERVICES`` (e.g. ``intake,feed``: the two whose fill takes minutes, not hours,
    at 1 M), in fill order; default all four. Scoring is filled from dispatch's outbox."""
    chosen = ctx.options.get("scaling_services") or os.environ.get("SCALING_SERVICES")
    if not chosen:
        return SERVICES
    names = chosen if isinstance(chosen, list | tuple) else str(chosen).replace(" ", "").split(",")
    unknown = set(names) - set(SERVICES)
    if unknown or not names:
        raise ValueError(f"SCALING_SERVICES: unknown {sorted(unknown)}; choose from {SERVICES}")
    if "scoring" in names and "dispatch" not in names:
        raise ValueError("SCALING_SERVICES: scoring is filled from dispatch's events; add dispatch")
    return tuple(s for s in SERVICES if s in names)


def run(ctx: Context) -> list[Result]:
    server = PostgresServer(
        os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1"),
        int(os.environ.get("TEST_POSTGRES_PORT", "5432")),
        os.environ.get("TEST_POSTGRES_USER", "postgres"),
        os.environ.get("TEST_POSTGRES_PASSWORD", ""),
    )
    small, large = sizes(ctx)
    count = ctx.size(300, 30)
    services = chosen_services(ctx)
    at_small = measure_size(ctx, server, small, count, services)
    at_large = measure_size(ctx, server, large, count, services)
    rates = {
        f"load {k} @{size:,}": round(v, 1)
        for size, figures in ((small, at_small), (large, at_large))
        for k, v in figures["rates"].items()
    }
    results = []
    for name, (service, p50_s, p99_s) in at_small["pages"].items():
        _, p50_l, p99_l = at_large["pages"][name]
        extra = {
            "service": service,
            "issues_small": small,
            "issues_large": large,
            "transport": "HTTP, gunicorn x2, one keep-alive client",
            "load_issues_per_s": {
                "small": round(at_small["rates"][service], 1),
                "large": round(at_large["rates"][service], 1),
            },
        }
        results.append(
            Result(SECTION, f"{name} p50 @{large:,}", p50_l, "ms", reference=p50_s,
                   reference_name=f"p50 @{small:,}", extra=extra)
        )  # fmt: skip
        results.append(
            Result(SECTION, f"{name} p99 @{large:,}", p99_l, "ms", reference=p99_s,
                   reference_name=f"p99 @{small:,}", goal=Goal(at_most=20, ratio_at_most=1.5),
                   extra=extra)
        )  # fmt: skip
    for service in services:
        # How fast each service's own code takes the fill in (no goal: the cost of a 1 M run).
        results.append(
            Result(SECTION, f"load {service} @{large:,}", at_large["rates"][service], "issues/s",
                   reference=at_small["rates"][service], reference_name=f"@{small:,}",
                   extra={"rates": rates})
        )  # fmt: skip
    return results
