"""Scaling: dispatch's admin queue, a worker's tasks and the statistics (whole township, one
village) at a small and a large number of issues, over real HTTP (gunicorn, 2 workers, one
keep-alive client, one request at a time): p50/p99 and the ratio large/small.

Each size gets a throwaway PostgreSQL database at dispatch's Alembic head, filled through
dispatch's own code only: every report through ``handlers.handle_issue_reported`` (generated
``issue.reported`` envelopes, 1,000 per transaction), then assign / start / resolve through
``services`` and ratings through ``handlers.handle_issue_rated`` (so history, outbox rows and the
statistics' running aggregates are written as in production). No SQL by hand.

Sizes: ``ctx.options["scaling_sizes"]`` or ``SCALING_SIZES`` (e.g. ``10000,200000``); default
10 k and 1 M (smoke: 1 k and 5 k). Loading goes at a few hundred issues a second on a 2-core
machine, so 1 M takes hours: measure the largest size that fits and say so.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import ROOT, Context, Goal, Result, percentile

sys.path[:0] = [str(ROOT), str(ROOT / "services" / "dispatch")]

import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402

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
        with db.transaction() as session:
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
                handle_issue_reported(session, _envelope("issue.reported", data, reported_at))
    report_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, issues, 500):
        with db.transaction() as session:
            for issue_id, village, reported_at, newer in plan[start : start + 500]:
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
                    handle_issue_rated(
                        session,
                        _envelope("issue.rated", {"issue_id": str(issue_id), "rating": rating}, at),
                    )
    step_seconds = time.perf_counter() - started
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
    db.dispose()
    use_settings(None)
    return {
        "admin": admin,
        "worker": workers[villages[0]][0],
        "village": villages[0],
        "report_seconds": report_seconds,
        "step_seconds": step_seconds,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_web(url: str, keys: Path, folder: Path, workers: int = 2) -> tuple[subprocess.Popen, str]:
    """``python -m dispatch web`` (gunicorn) on a free port; returns once /healthz answers."""
    port = _free_port()
    for name in ("var", "metrics"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(
        {
            "PYTHONPATH": f"{ROOT}:{ROOT / 'services' / 'dispatch'}",
            "APP_ENV": "test",
            "PORT": str(port),
            "DATABASE_URL": url,
            "JWT_PUBLIC_KEY_FILE": str(keys / "public.pem"),
            "SERVICE365_VAR_DIR": str(folder / "var"),
            "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
            "WEB_CONCURRENCY": str(workers),
            "PUBLIC_FIGURES_CACHE_SECONDS": "0",
            "LOG_FORMAT": "text",
            "LOG_LEVEL": "WARNING",
            "RABBITMQ_URL": os.environ.get("RABBITMQ_URL", "amqp://guest:guest@localhost:5672/%2F"),
        }
    )
    log = (folder / "web.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatch", "web"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dispatch web exited:\n{(folder / 'web.log').read_text()[-3000:]}")
        try:
            requests.get(f"{base}/healthz", timeout=2)
            return proc, base
        except requests.RequestException:
            time.sleep(0.2)
    os.killpg(proc.pid, 15)
    raise RuntimeError("dispatch web did not answer within 60 s")


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


def routes(world: dict) -> list[tuple[str, str, dict, str]]:
    """(name, path, query, who) of each measured page."""
    return [
        ("admin queue", "/api/v1/queue", {"limit": 20}, "admin"),
        ("worker tasks", "/api/v1/tasks/mine", {"limit": 20}, "worker"),
        ("stats township", "/api/v1/stats", {}, "admin"),
        ("stats village", "/api/v1/stats", {"village_id": str(world["village"])}, "admin"),
    ]


def measure_size(ctx: Context, server: PostgresServer, issues: int, requests_each: int) -> dict:
    url = server.create_database("bench_scaling")
    folder = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    web = None
    try:
        upgrade("dispatch", url)
        world = fill(url, issues)
        print(
            f"   {issues:,} issues: reports {world['report_seconds']:.0f} s, "
            f"steps {world['step_seconds']:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        ensure_keypair(folder / "private.pem", folder / "public.pem")
        issuer = TokenIssuer(
            (folder / "private.pem").read_bytes(),
            issuer="service365-intake",
            audience="service365",
            ttl_seconds=3600,
        )
        tokens = {
            "admin": issuer.issue(world["admin"].id, ["admin"], "管理员")[0],
            "worker": issuer.issue(world["worker"].id, ["grid_worker"], "网格员")[0],
        }
        web, base = start_web(url, folder, folder)
        out = {}
        for name, path, params, who in routes(world):
            http = requests.Session()
            http.headers["Authorization"] = f"Bearer {tokens[who]}"
            out[name] = measure(http, base + path, params, requests_each)
        return out
    finally:
        if web is not None:
            os.killpg(web.pid, 15)
            web.wait(20)
        if not os.environ.get("SCALING_KEEP_DATABASES"):
            server.drop_all()


def sizes(ctx: Context) -> tuple[int, int]:
    chosen = ctx.options.get("scaling_sizes") or os.environ.get("SCALING_SIZES")
    if chosen:
        small, large = (int(x) for x in str(chosen).replace(" ", "").split(",")[:2])
        return small, large
    return (1_000, 5_000) if ctx.smoke else (10_000, 1_000_000)


def run(ctx: Context) -> list[Result]:
    server = PostgresServer(
        os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1"),
        int(os.environ.get("TEST_POSTGRES_PORT", "5432")),
        os.environ.get("TEST_POSTGRES_USER", "postgres"),
        os.environ.get("TEST_POSTGRES_PASSWORD", ""),
    )
    small, large = sizes(ctx)
    count = ctx.size(300, 30)
    at_small = measure_size(ctx, server, small, count)
    at_large = measure_size(ctx, server, large, count)
    results = []
    for name in at_small:
        p50_s, p99_s = at_small[name]
        p50_l, p99_l = at_large[name]
        extra = {"issues_small": small, "issues_large": large, "transport": "HTTP, gunicorn x2"}
        results.append(
            Result(SECTION, f"{name} p50 @{large:,}", p50_l, "ms", reference=p50_s,
                   reference_name=f"p50 @{small:,}", extra=extra)
        )  # fmt: skip
        results.append(
            Result(SECTION, f"{name} p99 @{large:,}", p99_l, "ms", reference=p99_s,
                   reference_name=f"p99 @{small:,}", goal=Goal(at_most=20, ratio_at_most=1.5),
                   extra=extra)
        )  # fmt: skip
    return results
