"""Benchmark: fill a PostgreSQL database with N work items (default 100,000) and time the queue,
the task list, the statistics and a scheduler pass, in process (Flask test client, no network).

    PYTHONPATH=.:services/intake:services/dispatch .venv/bin/python \\
        services/dispatch/bench_dispatch.py --issues 100000 --requests 200

Without ``--database-url`` it creates (and afterwards drops) ``bench_dispatch_<hex>`` on the
local PostgreSQL (``postgresql+psycopg://postgres@127.0.0.1:5432``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from dispatch import scheduler
from dispatch.app import create_app
from dispatch.domain import CATEGORIES
from dispatch.models import Grid, GridMember, Issue, Staff, Village
from dispatch.settings import DispatchSettings
from shared.auth import TokenIssuer, ensure_keypair
from shared.migrations import upgrade

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
STATE_MIX = [
    ("closed", 0.70),
    ("resolved", 0.08),
    ("rejected", 0.02),
    ("reported", 0.05),
    ("assigned", 0.07),
    ("in_progress", 0.06),
    ("reopened", 0.02),
]


def fill(db_url: str, issues: int, seed: int = 365) -> dict:
    """Villages, grids, 200 workers and ``issues`` items over two years, in bulk."""
    rng = random.Random(seed)
    engine = sa.create_engine(db_url)
    villages = [uuid.uuid4() for _ in range(26)]
    workers = [uuid.uuid4() for _ in range(200)]
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(Village),
            [{"id": v, "code": f"V{i:02d}", "name": f"村{i:02d}"} for i, v in enumerate(villages)],
        )
        conn.execute(
            sa.insert(Staff),
            [
                {"id": w, "name": f"网格员{i}", "roles": ["grid_worker"]}
                for i, w in enumerate(workers)
            ],
        )
        grids = [
            {"id": uuid.uuid4(), "village_id": villages[i % 26], "name": f"网格{i}"}
            for i in range(40)
        ]
        conn.execute(sa.insert(Grid), grids)
        conn.execute(
            sa.insert(GridMember),
            [{"grid_id": grids[i % 40]["id"], "user_id": w} for i, w in enumerate(workers)],
        )
    states = [s for s, _ in STATE_MIX]
    weights = [w for _, w in STATE_MIX]
    categories = list(CATEGORIES)
    started = time.perf_counter()
    batch: list[dict] = []
    with engine.begin() as conn:
        for _ in range(issues):
            state = rng.choices(states, weights)[0]
            reported = now - timedelta(minutes=rng.randint(10, 2 * 365 * 24 * 60))
            working = state not in ("reported", "rejected")
            due = reported + timedelta(hours=rng.choice([24, 48, 72])) if working else None
            if state in ("assigned", "in_progress", "reopened"):
                due = now + timedelta(hours=rng.randint(-100, 100))
            resolved = reported + timedelta(hours=rng.randint(1, 120))
            batch.append(
                {
                    "id": uuid.uuid4(),
                    "reporter_id": uuid.uuid4(),
                    "category": rng.choice(categories),
                    "description": "基准测试事项",
                    "village_id": rng.choice(villages),
                    "reported_at": reported,
                    "state": state,
                    "level": rng.choices(
                        ["grid", "township", "area_leader", "county"], [0.9, 0.06, 0.03, 0.01]
                    )[0],
                    "assignee_id": rng.choice(workers) if working else None,
                    "difficulty": rng.randint(1, 5) if working else None,
                    "due_at": due,
                    "resolved_at": resolved if state in ("resolved", "closed") else None,
                    "closed_at": resolved + timedelta(days=1) if state == "closed" else None,
                    "callback_status": "not_sampled" if state == "closed" else None,
                    "overdue_at": now if due is not None and due < now and working else None,
                    "overdue_escalated_at": now if due is not None and due < now else None,
                    "reminded_at": now if working else None,
                }
            )
            if len(batch) == 5000:
                conn.execute(sa.insert(Issue), batch)
                batch.clear()
        if batch:
            conn.execute(sa.insert(Issue), batch)
        conn.execute(sa.text("ANALYZE"))
    fill_seconds = time.perf_counter() - started
    engine.dispose()
    return {"villages": villages, "workers": workers, "fill_seconds": fill_seconds}


def timed(label: str, requests: int, call: Callable[[], object]) -> str:
    call()  # warm up (connection, plan cache)
    samples = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return (
        f"{label:<44} p50 {q[49]:7.1f} ms   p95 {q[94]:7.1f} ms   p99 {q[98]:7.1f} ms"
        f"   max {samples[-1]:7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--issues", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    created = None
    url = args.database_url
    if url is None:
        created = f"bench_dispatch_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{created}"'))
        admin.dispose()
        url = f"{SERVER}/{created}"
    try:
        upgrade("dispatch", url)
        world = fill(url, args.issues)
        print(f"filled {args.issues:,} issues in {world['fill_seconds']:.1f} s")
        keys = Path(tempfile.mkdtemp())
        ensure_keypair(keys / "private.pem", keys / "public.pem")
        settings = DispatchSettings(
            app_env="test",
            database_url=url,
            jwt_public_key_file=keys / "public.pem",
            log_format="text",
            log_level="WARNING",
        )
        app = create_app(settings)
        client = app.test_client()
        issuer = TokenIssuer(
            (keys / "private.pem").read_bytes(),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_seconds=3600,
        )
        admin_token, _ = issuer.issue(uuid.uuid4(), ["admin"], "管理员")
        worker = world["workers"][7]
        worker_token, _ = issuer.issue(worker, ["grid_worker"], "网格员")
        admin_h = {"Authorization": f"Bearer {admin_token}"}
        worker_h = {"Authorization": f"Bearer {worker_token}"}
        village = world["villages"][3]

        def get(path: str, headers: dict) -> Callable[[], object]:
            def call() -> object:
                response = client.get(path, headers=headers)
                assert response.status_code == 200, (path, response.status_code, response.json)
                return response

            return call

        page2 = client.get("/api/v1/queue?limit=50", headers=admin_h).json["next_cursor"]
        deep = page2
        for _ in range(20):
            deep = client.get(f"/api/v1/queue?limit=50&cursor={deep}", headers=admin_h).json[
                "next_cursor"
            ]
        n = args.requests
        lines = [
            timed("GET /queue (first page of 50)", n, get("/api/v1/queue?limit=50", admin_h)),
            timed(
                "GET /queue (page 22, by cursor)",
                n,
                get(f"/api/v1/queue?limit=50&cursor={deep}", admin_h),
            ),
            timed(
                "GET /queue?village_id=…",
                n,
                get(f"/api/v1/queue?limit=50&village_id={village}", admin_h),
            ),
            timed(
                "GET /queue?category=water_power",
                n,
                get("/api/v1/queue?limit=50&category=water_power", admin_h),
            ),
            timed(
                "GET /queue?overdue=true", n, get("/api/v1/queue?limit=50&overdue=true", admin_h)
            ),
            timed("GET /tasks/mine", n, get("/api/v1/tasks/mine", worker_h)),
            timed("GET /stats (all 100k)", max(20, n // 10), get("/api/v1/stats", admin_h)),
            timed(
                "GET /stats?village_id=…",
                max(20, n // 10),
                get(f"/api/v1/stats?village_id={village}", admin_h),
            ),
            timed(
                "GET /stats?from=…&to=… (one month)",
                max(20, n // 10),
                get("/api/v1/stats?from=2026-01-01&to=2026-01-31", admin_h),
            ),
            timed(
                "scheduler run_once (nothing due)",
                max(20, n // 10),
                lambda: scheduler.run_once(app.extensions["db"], settings),
            ),
        ]
        print("\n".join(lines))
        app.extensions["db"].dispose()
    finally:
        if created:
            admin = sa.create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{created}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
