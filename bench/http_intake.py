"""Item 1, report intake: ``POST /api/v1/issues``, ``GET /api/v1/issues/{id}`` and
``GET /api/v1/issues/mine`` through gunicorn as deployed, on PostgreSQL, loaded by wrk at 32
connections; beside the bare Flask reference (``bench/reference_app.py``) under the same gunicorn
settings on the same PostgreSQL server.

Self-contained: intake's web runs on a throwaway database and vhost (two sync workers, JSON logs,
generous rate limits); its village arrives through intake's own ``village.upserted`` handler; the
resident signs in through the dev-mode WeChat login. Intake's worker is not started: the reports'
events wait in the outbox, so the figure is the web's own. Ours and the reference take turns in
each repeat, so both see the same noise.
"""

from __future__ import annotations

import statistics
import uuid
from datetime import UTC, datetime

import requests

from bench.common import Context, Goal, Result
from bench.system import Backends, WrkResult, record_rss, reference_server, running, spec, wrk

SECTION = "http_intake"
BODY = {
    "category": "road_traffic",
    "description": "村口道路有个大坑，晚上看不清容易摔倒。",
    "address": "沙口集村东头",
    "lat": 38.3081,
    "lon": 115.5391,
}


def add_village(database_url: str) -> str:
    """A village in intake's database the way it learns one: its ``village.upserted`` handler."""
    from intake.handlers import handle_village_upserted
    from intake.models import Base
    from shared.db import Database
    from shared.testing import envelope

    village_id = uuid.uuid4()
    db = Database(database_url, metadata=Base.metadata, producer="intake")
    try:
        with db.transaction() as session:
            handle_village_upserted(
                session,
                envelope(
                    "village.upserted",
                    {"village_id": str(village_id), "name": "沙口集村-bench", "revision": 1},
                ),
            )
    finally:
        db.dispose()
    return str(village_id)


def sign_in(base: str, code: str) -> str:
    answer = requests.post(f"{base}/api/v1/auth/wechat", json={"code": code}, timeout=15)
    answer.raise_for_status()
    return answer.json()["access_token"]


def report(base: str, token: str, village_id: str) -> str:
    answer = requests.post(
        f"{base}/api/v1/issues",
        json={**BODY, "village_id": village_id},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex},
        timeout=15,
    )
    assert answer.status_code == 201, f"report: {answer.status_code} {answer.text[:300]}"
    return answer.json()["id"]


def run(ctx: Context) -> list[Result]:
    seconds = 2 if ctx.smoke else 12  # wrk runs: smoke checks it works, full measures
    connections = 4 if ctx.smoke else 32
    with Backends("bench_http") as backends:
        system = backends.harness(
            [spec("intake", ("web",), ACCESS_TOKEN_TTL_SECONDS=str(6 * 3600))]
        )
        reference_db = backends.empty_database("reference")
        with (
            reference_server(reference_db, backends.folder / "reference") as reference,
            running(system),
        ):
            ref = reference()
            ours = system.url("intake")
            village_id = add_village(system.database_url("intake"))
            writer = sign_in(ours, "bench-writer")
            reader = sign_in(ours, "bench-reader")
            # The reader has a page's worth of reports of their own (mine lists 20 a page).
            issue_ids = [report(ours, reader, village_id) for _ in range(ctx.size(25, 3))]
            ref_id = requests.post(
                f"{ref}/reports", json={**BODY, "village_id": village_id}, timeout=15
            ).json()["id"]

            post_env = {"TOKEN": writer, "VILLAGE_ID": village_id}
            cases = [
                # (name, our url, our env, reference url, script)
                ("POST /issues", ours + "/api/v1/issues", post_env, ref + "/reports", "post"),
                (
                    "GET /issues/{id}",
                    f"{ours}/api/v1/issues/{issue_ids[0]}",
                    {"TOKEN": reader},
                    f"{ref}/reports/{ref_id}",
                    "get",
                ),
                (
                    "GET /issues/mine",
                    f"{ours}/api/v1/issues/mine",
                    {"TOKEN": reader},
                    f"{ref}/reports/{ref_id}",
                    "get",
                ),
            ]
            results: list[Result] = []
            for name, our_url, env, ref_url, kind in cases:
                # Smoke: the POST for the 2 s asked, the GETs (same plumbing) for 1 s each.
                duration = seconds if kind == "post" or not ctx.smoke else 1
                results += _measure(
                    ctx, name, our_url, env, ref_url, kind, duration, connections, village_id
                )
            record_rss(system, SECTION)
            return results


def _measure(
    ctx: Context,
    name: str,
    our_url: str,
    env: dict[str, str],
    ref_url: str,
    kind: str,
    seconds: float,
    connections: int,
    village_id: str,
) -> list[Result]:
    script = "post_issue.lua" if kind == "post" else "get_auth.lua"

    def once(url: str, extra: dict[str, str], duration: float) -> WrkResult:
        run_env = {**extra, "RUN_ID": uuid.uuid4().hex[:8]}
        if kind == "post" and "/reports" in url:
            run_env.update({"REQUEST_PATH": "/reports", "VILLAGE_ID": village_id})
        return wrk(url, seconds=duration, connections=connections, script=script, env=run_env)

    if not ctx.smoke:  # warm both up: connection pools, lazy imports, PostgreSQL's caches
        once(our_url, env, 2)
        once(ref_url, {}, 2)
    ours: list[WrkResult] = []
    refs: list[WrkResult] = []
    for _ in range(ctx.repeats):
        ours.append(once(our_url, env, seconds))
        refs.append(once(ref_url, {}, seconds))

    def med(runs: list[WrkResult], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    extra = {
        "connections": connections,
        "seconds": seconds,
        "requests": [r.requests for r in ours],
        "reference_requests": [r.requests for r in refs],
        "errors": [r.errors for r in ours],
        "when": datetime.now(UTC).isoformat(),
    }
    ref_name = "bare Flask " + ("INSERT one row" if kind == "post" else "SELECT one row")
    rows = [
        Result(
            SECTION,
            f"{name} req/s (c{connections})",
            med(ours, "requests_per_second"),
            "req/s",
            reference=med(refs, "requests_per_second"),
            reference_name=ref_name,
            goal=Goal(ratio_at_least=0.70),
            runs=[r.requests_per_second for r in ours],
            extra={**extra, "reference_runs": [r.requests_per_second for r in refs]},
        ),
        Result(
            SECTION,
            f"{name} p50",
            med(ours, "p50_ms"),
            "ms",
            reference=med(refs, "p50_ms"),
            reference_name=ref_name,
            runs=[r.p50_ms for r in ours],
        ),
        Result(
            SECTION,
            f"{name} p99",
            med(ours, "p99_ms"),
            "ms",
            reference=med(refs, "p99_ms"),
            reference_name=ref_name,
            goal=Goal(at_most=60) if kind == "post" else None,
            runs=[r.p99_ms for r in ours],
        ),
    ]
    return rows
