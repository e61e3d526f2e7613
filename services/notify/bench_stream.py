"""A small load test of a running ``python -m notify stream``: N clients (one user each) connect,
then one inbox row per client is committed in one transaction; prints the connect time, the
delivery latency (commit → event read by the client) p50/p99 and the stream worker's RSS.

    STREAM_THREADS=250 DATABASE_URL=postgresql://... python -m notify stream &
    python services/notify/bench_stream.py --clients 200 \\
        --database-url postgresql://... --private-key var/keys/jwt-private.pem

The stream must run with STREAM_THREADS above the number of clients (one thread per stream).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "services" / "notify")]

from notify.models import Base, Notification  # noqa: E402
from shared.auth import TokenIssuer  # noqa: E402
from shared.db import Database  # noqa: E402


class Client(threading.Thread):
    """One stream: when its first event came, and when its own notification came."""

    def __init__(self, url: str, token: str, opened: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.barrier = url, token, opened
        self.started = self.connected = self.delivered = 0.0
        self.error: str | None = None
        self.response: requests.Response | None = None

    def run(self) -> None:
        self.started = time.perf_counter()
        try:
            self.response = requests.get(
                self.url,
                headers={"Authorization": f"Bearer {self.token}"},
                stream=True,
                timeout=(30, 120),
            )
            if self.response.status_code != 200:
                self.error = f"HTTP {self.response.status_code}: {self.response.text[:120]}"
                return
            event = None
            for line in self.response.iter_lines(chunk_size=1024, decode_unicode=True):
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event == "unread" and not self.connected:
                    self.connected = time.perf_counter()
                    self.barrier.wait(timeout=120)
                elif line.startswith("data: ") and event == "notification":
                    json.loads(line.removeprefix("data: "))
                    self.delivered = time.perf_counter()
                    return
        except Exception as exc:  # noqa: BLE001 - reported in the summary
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if not self.connected:
                self.barrier.abort()  # the main thread stops waiting for everyone
            if self.response is not None:
                self.response.close()


def stream_worker_rss() -> tuple[int | None, int]:
    """(RSS in KiB of the stream's gunicorn worker, number of workers), from /proc."""
    marker = b"notify.stream:create_stream_app()"
    procs: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                procs[int(entry.name)] = int(stat[1])  # pid -> parent pid
        except OSError:
            continue
    workers = [pid for pid, parent in procs.items() if parent in procs]
    if not workers:
        return None, 0
    rss = 0
    for pid in workers:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
    return rss, len(workers)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8015")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--database-url", required=True, help="the stream's DATABASE_URL")
    parser.add_argument(
        "--private-key", type=Path, default=ROOT / "var" / "keys" / "jwt-private.pem"
    )
    args = parser.parse_args()
    database_url = args.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    issuer = TokenIssuer(
        args.private_key.read_bytes(),
        issuer="service365-intake",
        audience="service365",
        ttl_seconds=3600,
    )
    users = [uuid.uuid4() for _ in range(args.clients)]
    barrier = threading.Barrier(args.clients + 1)
    rss_before, _ = stream_worker_rss()
    clients = [
        Client(
            args.url.rstrip("/") + "/api/v1/notifications/stream",
            issuer.issue(user, ["resident"])[0],
            barrier,
        )
        for user in users
    ]
    began = time.perf_counter()
    for client in clients:
        client.start()
    try:
        barrier.wait(timeout=120)
    except threading.BrokenBarrierError:
        errors = [c.error for c in clients if c.error]
        print(f"not every client connected; first errors: {errors[:3]}", file=sys.stderr)
        return 1
    all_connected = time.perf_counter() - began
    rss_connected, workers = stream_worker_rss()

    db = Database(database_url, metadata=Base.metadata, producer="notify")
    with db.transaction() as session:
        session.add_all(
            Notification(
                user_id=user,
                event_id=uuid.uuid4(),
                event_type="bench",
                kind="assigned",
                title="压测消息",
                body="bench",
                link_type="issue",
                link_id=str(uuid.uuid4()),
                variables={},
                created_at=datetime.now(UTC),
            )
            for user in users
        )
    committed = time.perf_counter()
    for client in clients:
        client.join(timeout=60)
    db.dispose()

    connect = [c.connected - c.started for c in clients if c.connected]
    latency = [c.delivered - committed for c in clients if c.delivered]
    errors = [c.error for c in clients if c.error]
    print(f"clients: {args.clients}, stream workers: {workers}")
    print(
        f"connect (to the first event): p50 {statistics.median(connect) * 1000:.0f} ms, "
        f"p99 {percentile(connect, 0.99) * 1000:.0f} ms, all {all_connected:.2f} s"
    )
    if latency:
        print(
            f"delivery (commit → event): p50 {statistics.median(latency) * 1000:.0f} ms, "
            f"p99 {percentile(latency, 0.99) * 1000:.0f} ms, max {max(latency) * 1000:.0f} ms "
            f"({len(latency)}/{args.clients} delivered)"
        )
    if rss_connected is not None:
        before = f"{rss_before / 1024:.1f} MiB before, " if rss_before else ""
        print(f"worker RSS: {before}{rss_connected / 1024:.1f} MiB with every client connected")
    if errors:
        print(f"errors: {len(errors)}; first: {errors[:3]}")
    return 0 if len(latency) == args.clients else 1


if __name__ == "__main__":
    raise SystemExit(main())
