"""Load a running intake (``make up``) and print requests/s, latency percentiles and RSS.

    .venv/bin/python scripts/bench_intake.py --seconds 20 --clients 8

Each client logs in as its own resident (dev WeChat mode), so the per-user report limit is
not what is measured; set RATE_LIMIT_REPORTS high for the report phase (e.g. "100000 per hour").
Phases: GET /api/v1/issues/<id> (read model), GET /api/v1/issues/mine, POST /api/v1/issues.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import threading
import time
import uuid

import requests


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run_phase(name: str, clients: list[dict], seconds: float, call) -> None:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def work(client: dict) -> None:
        nonlocal errors
        session = requests.Session()
        mine, bad = [], 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            status = call(session, client)
            mine.append(time.perf_counter() - started)
            if status >= 400:
                bad += 1
        with lock:
            latencies.extend(mine)
            errors += bad

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    ms = [v * 1000 for v in latencies]
    print(
        f"{name:<28} {len(ms) / elapsed:8.1f} req/s  p50 {percentile(ms, .5):6.1f} ms  "
        f"p95 {percentile(ms, .95):6.1f} ms  p99 {percentile(ms, .99):6.1f} ms  "
        f"mean {statistics.fmean(ms):6.1f} ms  n={len(ms)} errors={errors}"
    )


def rss_of(pattern: str) -> str:
    out = subprocess.run(["ps", "-eo", "rss,args"], capture_output=True, text=True).stdout
    rows = [line.split(None, 1) for line in out.splitlines()[1:] if pattern in line]
    total = sum(int(r[0]) for r in rows if r[0].isdigit())
    return f"{len(rows)} processes, {total / 1024:.1f} MiB RSS in all"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--intake", default="http://127.0.0.1:8001")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--skip-writes", action="store_true")
    args = parser.parse_args()
    base = args.intake.rstrip("/")
    village = requests.get(f"{base}/api/v1/villages", timeout=10).json()[0]["id"]
    report = {
        "category": "road_traffic",
        "description": "压力测试：村口道路有坑洼，需要修补。",
        "village_id": village,
    }
    clients = []
    for _ in range(args.clients):
        code = f"bench-{uuid.uuid4().hex[:10]}"
        token = requests.post(f"{base}/api/v1/auth/wechat", json={"code": code}, timeout=10)
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        created = requests.post(f"{base}/api/v1/issues", json=report, headers=headers, timeout=10)
        created.raise_for_status()
        clients.append({"headers": headers, "issue": created.json()["id"]})

    print(f"intake at {base}, {args.clients} clients, {args.seconds:.0f} s a phase")
    run_phase(
        "GET /issues/<id>",
        clients,
        args.seconds,
        lambda s, c: s.get(f"{base}/api/v1/issues/{c['issue']}", headers=c["headers"]).status_code,
    )
    run_phase(
        "GET /issues/mine",
        clients,
        args.seconds,
        lambda s, c: s.get(f"{base}/api/v1/issues/mine", headers=c["headers"]).status_code,
    )
    if not args.skip_writes:
        run_phase(
            "POST /issues (+outbox row)",
            clients,
            args.seconds,
            lambda s, c: s.post(
                f"{base}/api/v1/issues", json=report, headers=c["headers"]
            ).status_code,
        )
    print("gunicorn (intake web):", rss_of("intake-web"))
    print("intake worker:", rss_of("intake worker"))


if __name__ == "__main__":
    main()
