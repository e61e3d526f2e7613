"""Item 5, end to end: reports at a steady rate (100/s for 60 s; smoke 10/s for 3 s) into the
whole running system; the time from each report's 201 to its item in the admin's queue (dispatch
applied intake's ``issue.reported``) and to the notification in the admin's inbox (notify wrote
it): p50, p95, p99. Goal p95 ≤ 250 ms.

Self-contained: every service (web, worker, dispatch's scheduler) runs as real processes on
throwaway databases and a throwaway vhost (``tests/e2e/harness.py``; intake with two web workers,
as deployed); the township is built as an operator builds it (``build_township``). The load is
open-loop: report *n* is sent at ``start + n / rate`` whatever the answers before it took (16
client threads). Arrival times come from the rows themselves: dispatch's inbox row for the
event (``processed_events.processed_at``, written in the same transaction as the queue item)
and notify's ``notifications.created_at`` for the admin, against the wall-clock time the 201
came back; the event's id links them (intake's outbox row for the report). Both are stamped
just before their transaction commits, so they read a few ms early at most.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from datetime import datetime

import requests

from bench.common import Context, Goal, Result, percentile
from bench.system import SERVICES, Backends, record_rss, running, spec
from shared.testing import wait_for
from tests.e2e.harness import Harness, build_township

SECTION = "end_to_end"
THREADS = 16
RESIDENTS = 20
REPORT = {
    "category": "other",
    "description": "村头垃圾堆放多日没有清运，请处理。",
    "address": "沙口集村南头",
}


def system_specs():
    """Every service as the harness runs it, intake with its deployed two web workers."""
    specs = []
    for base in SERVICES:
        extra = {} if base.name == "intake" else {"WEB_CONCURRENCY": "1"}
        specs.append(spec(base.name, base.processes, **extra))
    return specs


def run(ctx: Context) -> list[Result]:
    rate = 10 if ctx.smoke else 100
    seconds = 3 if ctx.smoke else 60
    with Backends("bench_e2e") as backends:
        system = backends.harness(system_specs())
        with running(system):
            town = build_township(system, tag="bench")
            residents = _residents(system.url("intake"))
            runs = []
            for _ in range(ctx.repeats):
                runs.append(_once(system, town, residents, rate, seconds))
            record_rss(system, SECTION)
    results = []
    for target in ("queue", "inbox"):
        for p in (50, 95, 99):
            values = [r[target][p] for r in runs]
            results.append(
                Result(
                    SECTION,
                    f"201 → admin's {target} p{p} ({rate}/s for {seconds}s)",
                    statistics.median(values),
                    "ms",
                    goal=Goal(at_most=250) if p == 95 else None,
                    runs=values,
                    extra={"sent": [r["sent"] for r in runs], "late": [r["late"] for r in runs]}
                    if p == 50
                    else {},
                )
            )
    achieved = [r["achieved"] for r in runs]
    results.append(
        Result(
            SECTION,
            f"reports/s achieved (asked {rate}/s)",
            statistics.median(achieved),
            "reports/s",
            runs=achieved,
            extra={"late_reports": [r["late"] for r in runs]},
        )
    )
    post_p99 = [r["post_p99"] for r in runs]
    results.append(
        Result(
            SECTION,
            f"POST /issues p99 under {rate}/s",
            statistics.median(post_p99),
            "ms",
            runs=post_p99,
        )
    )
    return results


def _residents(intake: str) -> list[str]:
    tokens = []
    for n in range(RESIDENTS):
        answer = requests.post(
            f"{intake}/api/v1/auth/wechat", json={"code": f"bench-e2e-{n}"}, timeout=15
        )
        answer.raise_for_status()
        tokens.append(answer.json()["access_token"])
    return tokens


def _once(system: Harness, town, residents: list[str], rate: int, seconds: int) -> dict:
    total = rate * seconds
    intake = system.url("intake")
    answered: dict[str, float] = {}  # issue id -> wall-clock time of its 201
    post_ms: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    late = [0]
    start = time.time() + 0.5

    def sender(k: int) -> None:
        http = requests.Session()
        for n in range(k, total, THREADS):
            due = start + n / rate
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.05:
                late[0] += 1
            sent = time.perf_counter()
            answer = http.post(
                f"{intake}/api/v1/issues",
                json={**REPORT, "village_id": town.village_id},
                headers={
                    "Authorization": f"Bearer {residents[n % len(residents)]}",
                    "Idempotency-Key": uuid.uuid4().hex,
                },
                timeout=30,
            )
            now = time.time()
            with lock:
                post_ms.append((time.perf_counter() - sent) * 1000)
                if answer.status_code == 201:
                    answered[answer.json()["id"]] = now
                else:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    achieved = total / max(1e-9, time.time() - start)
    if failures:
        raise RuntimeError(f"{len(failures)} reports failed, e.g. {failures[:3]}")

    admin_id = town.admin.user["id"]
    ids = list(answered)

    def events() -> dict[str, str]:
        """issue id -> id of its ``issue.reported`` event (intake's outbox)."""
        rows = system.rows(
            "intake",
            "SELECT id, envelope FROM outbox WHERE event_type = 'issue.reported'",
        )
        out = {}
        for row in rows:
            envelope = row.envelope
            if isinstance(envelope, str):
                import json

                envelope = json.loads(envelope)
            out[str(envelope["data"]["issue_id"])] = str(row.id)
        return out

    by_issue = events()
    event_ids = [by_issue[i] for i in ids]

    def arrived(service: str, sql: str) -> dict[str, datetime]:
        return {str(r[0]): r[1] for r in system.rows(service, sql, admin=admin_id)}

    queue_sql = (
        "SELECT event_id, processed_at FROM processed_events WHERE event_type = 'issue.reported'"
    )
    inbox_sql = (
        "SELECT event_id, created_at FROM notifications "
        "WHERE event_type = 'issue.reported' AND user_id = CAST(:admin AS uuid)"
    )
    wanted = set(event_ids)

    def all_there() -> bool:
        for service, sql in (("dispatch", queue_sql), ("notify", inbox_sql)):
            if not wanted <= set(arrived(service, sql)):
                return False
        return True

    wait_for(all_there, timeout=60 + total / 20, interval=0.5)
    queue, inbox = arrived("dispatch", queue_sql), arrived("notify", inbox_sql)

    def lags(seen: dict[str, datetime]) -> dict[int, float]:
        values = [
            (seen[event].timestamp() - answered[issue]) * 1000
            for issue, event in zip(ids, event_ids, strict=True)
        ]
        return {p: percentile(values, p) for p in (50, 95, 99)}

    return {
        "queue": lags(queue),
        "inbox": lags(inbox),
        "sent": len(ids),
        "late": late[0],
        "achieved": achieved,
        "post_p99": percentile(post_ms, 99),
    }
