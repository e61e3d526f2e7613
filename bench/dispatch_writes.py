"""Item 2, dispatch writes: assign, start and resolve through HTTP at 16 connections, on
PostgreSQL and on the SQLite embedded default: steps/s and p99 per request.

Self-contained: intake (web + worker) and dispatch (web + worker) run as real processes on
throwaway databases (dispatch's on a SQLite file for the second backend) and a throwaway vhost;
the township (admin, village, grid with its worker) is built the way an operator builds it
(``tests/e2e/harness.py`` ``build_township``); residents report through intake and dispatch
learns the reports from intake's ``issue.reported`` events. Then 16 client threads (one
keep-alive connection each) take the reports one by one: the admin assigns it to the grid worker,
the worker starts it and resolves it. Informational: no fixed goal (the issue's starting point
was "about 10 steps a second on SQLite" for one admin+worker loop under ``make up``).
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.common import Context, Result, percentile
from bench.system import Backends, record_rss, running, spec
from shared.testing import wait_for
from tests.e2e.harness import build_township

SECTION = "dispatch_writes"
CONNECTIONS = 16
REPORT = {
    "category": "water_power",
    "description": "村里自来水管漏水，请尽快派人维修。",
    "address": "沙口集村西头",
}


def run(ctx: Context) -> list[Result]:
    per_run = ctx.size(200, 30)
    results: list[Result] = []
    for backend in ("PostgreSQL", "SQLite"):
        results += _backend(ctx, backend, per_run)
    return results


def _backend(ctx: Context, backend: str, per_run: int) -> list[Result]:
    sqlite = ("dispatch",) if backend == "SQLite" else ()
    with Backends("bench_dw") as backends:
        system = backends.harness(
            [spec("intake", ("web", "worker")), spec("dispatch", ("web", "worker"))],
            sqlite=sqlite,
        )
        with running(system):
            town = build_township(system, tag="bench")
            intake, dispatch = system.url("intake"), system.url("dispatch")
            ids = _report(intake, town.village_id, per_run * ctx.repeats)

            def arrived() -> bool:
                if system.message_count("dispatch.events.dlq"):
                    raise RuntimeError("dispatch dead-lettered a report: see its worker's log")
                count = system.scalar(
                    "dispatch", "SELECT count(*) FROM issues WHERE state = 'reported'"
                )
                return count >= len(ids)

            wait_for(arrived, timeout=120 + len(ids) / 10, interval=0.5)
            admin, worker = town.admin.token, town.worker.token
            worker_id = town.worker.user["id"]
            runs = [
                _steps(dispatch, admin, worker, worker_id, ids[n * per_run : (n + 1) * per_run])
                for n in range(ctx.repeats)
            ]
            record_rss(system, f"{SECTION} {backend}")
    rates = [r["steps_per_second"] for r in runs]
    p99s = [r["p99_ms"] for r in runs]
    extra = {
        "issues_per_run": per_run,
        "connections": CONNECTIONS,
        "failed_steps": [r["failed"] for r in runs],
        "p99_ms_by_step": [r["p99_by_step"] for r in runs],
        "note": "before: about 10 steps/s on SQLite, one admin+worker loop under make up",
    }
    return [
        Result(
            SECTION,
            f"assign+start+resolve on {backend} (c{CONNECTIONS})",
            statistics.median(rates),
            "steps/s",
            runs=rates,
            extra=extra,
        ),
        Result(
            SECTION,
            f"step p99 on {backend}",
            statistics.median(p99s),
            "ms",
            runs=p99s,
            extra={"p50_ms": [r["p50_ms"] for r in runs]},
        ),
    ]


def _report(intake: str, village_id: str, count: int) -> list[str]:
    """``count`` reports from a few residents, eight at a time; their issue ids."""
    tokens = []
    for n in range(8):
        answer = requests.post(
            f"{intake}/api/v1/auth/wechat", json={"code": f"bench-dw-{n}"}, timeout=15
        )
        answer.raise_for_status()
        tokens.append(answer.json()["access_token"])
    local = threading.local()

    def one(n: int) -> str:
        if not hasattr(local, "http"):
            local.http = requests.Session()
        answer = local.http.post(
            f"{intake}/api/v1/issues",
            json={**REPORT, "village_id": village_id},
            headers={
                "Authorization": f"Bearer {tokens[n % len(tokens)]}",
                "Idempotency-Key": uuid.uuid4().hex,
            },
            timeout=30,
        )
        assert answer.status_code == 201, f"report: {answer.status_code} {answer.text[:300]}"
        return answer.json()["id"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def _steps(dispatch: str, admin: str, worker: str, worker_id: str, ids: list[str]) -> dict:
    """16 threads drain ``ids``: assign (admin), start and resolve (worker) each one."""
    todo: queue.Queue[str] = queue.Queue()
    for issue_id in ids:
        todo.put(issue_id)
    latencies: dict[str, list[float]] = {"assign": [], "start": [], "resolve": []}
    failed: list[str] = []
    lock = threading.Lock()
    steps = [
        ("assign", admin, {"assignee_id": worker_id, "difficulty": 2, "due_in_hours": 48}),
        ("start", worker, {}),
        ("resolve", worker, {"note": "已更换漏水的水管，恢复供水。"}),
    ]

    def loop() -> None:
        http = requests.Session()
        while True:
            try:
                issue_id = todo.get_nowait()
            except queue.Empty:
                return
            for step, token, body in steps:
                started = time.perf_counter()
                try:
                    answer = http.post(
                        f"{dispatch}/api/v1/issues/{issue_id}/{step}",
                        json=body,
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=30,
                    )
                    status = answer.status_code
                except requests.RequestException as exc:
                    status, answer = 0, exc
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    if status == 200:
                        latencies[step].append(elapsed)
                    else:
                        text = getattr(answer, "text", str(answer))[:200]
                        failed.append(f"{step} {status} {text}")
                if status != 200:
                    break  # the next steps of this item cannot follow

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(CONNECTIONS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    done = sum(len(v) for v in latencies.values())
    everything = [x for v in latencies.values() for x in v]
    if failed and len(failed) > 0.05 * len(ids):
        raise RuntimeError(f"{len(failed)} steps failed, e.g. {failed[:3]}")
    return {
        "steps_per_second": done / elapsed,
        "p50_ms": percentile(everything, 50),
        "p99_ms": percentile(everything, 99),
        "p99_by_step": {k: percentile(v, 99) for k, v in latencies.items()},
        "failed": len(failed),
        "failures": failed[:5],
    }
