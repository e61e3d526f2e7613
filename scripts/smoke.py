"""Walk the resident's path against a running system (``make up`` first): ``make smoke``.

Logs in as two residents (dev WeChat mode), uploads a photo, reports twice with one
Idempotency-Key, reads the report back, checks another resident gets 404, sends bad input, and
reads the ``issue.reported`` envelope from a queue bound to the exchange; then dispatch and
scoring answer ``/readyz`` and scoring's leaderboard of this month is read with the resident's
token (and refused without one); notify answers ``/readyz``, the resident's inbox and unread
count are read (refused without a token), and the stream sends its first ``unread`` event;
feed's news are read without a token and its party posts only with one.
Exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import pika
import requests
from PIL import Image

results: list[tuple[bool, str]] = []


def check(ok: bool, what: str) -> None:
    results.append((ok, what))
    print(("PASS " if ok else "FAIL ") + what, flush=True)


def login(base: str, code: str) -> dict[str, str]:
    answer = requests.post(f"{base}/api/v1/auth/wechat", json={"code": code}, timeout=10)
    answer.raise_for_status()
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1200, 900), (40, 120, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--intake", default="http://127.0.0.1:8001")
    parser.add_argument("--dispatch", default="http://127.0.0.1:8002")
    parser.add_argument("--scoring", default="http://127.0.0.1:8003")
    parser.add_argument("--notify", default="http://127.0.0.1:8005")
    parser.add_argument("--feed", default="http://127.0.0.1:8004")
    parser.add_argument("--stream", default="http://127.0.0.1:8015")
    parser.add_argument("--amqp", default="amqp://guest:guest@localhost:5672/%2F")
    parser.add_argument("--exchange", default="service365.events")
    args = parser.parse_args()
    base = args.intake.rstrip("/")

    connection = pika.BlockingConnection(pika.URLParameters(args.amqp))
    channel = connection.channel()
    channel.exchange_declare(args.exchange, exchange_type="topic", durable=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, args.exchange, routing_key="issue.reported")

    alice = login(base, f"smoke-resident-{uuid.uuid4().hex[:8]}")
    bob = login(base, f"smoke-resident-{uuid.uuid4().hex[:8]}")
    village = requests.get(f"{base}/api/v1/villages", timeout=10).json()[0]
    check(bool(village.get("id")), f"villages listed (first: {village.get('name')})")

    photo = requests.post(
        f"{base}/api/v1/media",
        files={"file": ("p.jpg", jpeg(), "image/jpeg")},
        headers=alice,
        timeout=30,
    )
    check(photo.status_code == 201, f"photo uploaded -> {photo.status_code}")
    report = {
        "category": "water_power",
        "description": "村东头自来水管漏水，请尽快处理。",
        "village_id": village["id"],
        "photo_ids": [photo.json()["id"]] if photo.ok else [],
    }
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = requests.post(
        f"{base}/api/v1/issues", json=report, headers={**alice, **key}, timeout=10
    )
    again = requests.post(
        f"{base}/api/v1/issues", json=report, headers={**alice, **key}, timeout=10
    )
    check(first.status_code == 201, f"report created -> {first.status_code} {first.json()}")
    check(again.status_code == 201 and again.json() == first.json(), "same key, same answer")
    issue_id = first.json().get("id")
    mine = requests.get(f"{base}/api/v1/issues/{issue_id}", headers=alice, timeout=10)
    check(mine.status_code == 200, f"reporter sees it -> {mine.json().get('status_label')}")
    other = requests.get(f"{base}/api/v1/issues/{issue_id}", headers=bob, timeout=10)
    check(other.status_code == 404, f"another resident -> {other.status_code}")

    bad = {
        "unknown category": requests.post(
            f"{base}/api/v1/issues", json={**report, "category": "ufo"}, headers=alice, timeout=10
        ),
        "3-character description": requests.post(
            f"{base}/api/v1/issues",
            json={**report, "description": "漏水了"},
            headers=alice,
            timeout=10,
        ),
        "text file as photo": requests.post(
            f"{base}/api/v1/media",
            files={"file": ("p.jpg", "不是照片".encode() * 50)},
            headers=alice,
            timeout=10,
        ),
        "30 MB file": requests.post(
            f"{base}/api/v1/media",
            files={"file": ("big.jpg", b"\xff\xd8" + b"0" * 30_000_000)},
            headers=alice,
            timeout=60,
        ),
        "invalid JSON": requests.post(
            f"{base}/api/v1/issues",
            data="{oops",
            headers={**alice, "Content-Type": "application/json"},
            timeout=10,
        ),
    }
    for what, answer in bad.items():
        body = (
            answer.json()
            if answer.headers.get("Content-Type", "").startswith("application/json")
            else {}
        )
        message = body.get("error", {}).get("message", "")
        check(
            400 <= answer.status_code < 500 and bool(message),
            f"{what} -> {answer.status_code} {message}",
        )
    ours = requests.get(f"{base}/api/v1/issues/mine", headers=alice, timeout=10).json()["items"]
    check(len(ours) == 1, f"bad input stored nothing: the resident has {len(ours)} report(s)")

    deadline = time.monotonic() + 20
    envelope = None
    while envelope is None and time.monotonic() < deadline:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            connection.sleep(0.2)
            continue
        candidate = json.loads(body)
        if candidate["data"].get("issue_id") == issue_id:
            envelope = candidate
    check(envelope is not None, "issue.reported envelope read from a queue bound to the exchange")
    if envelope:
        print(json.dumps(envelope, ensure_ascii=False, indent=2))
    connection.close()

    for name, url in (
        ("dispatch", args.dispatch),
        ("scoring", args.scoring),
        ("notify", args.notify),
        ("feed", args.feed),
    ):
        try:
            ready = requests.get(f"{url.rstrip('/')}/readyz", timeout=10).status_code
        except requests.RequestException as exc:
            ready = type(exc).__name__
        check(ready == 200, f"{name} /readyz -> {ready}")
    scoring = args.scoring.rstrip("/")
    month = datetime.now(ZoneInfo("Asia/Shanghai")).strftime("month:%Y-%m")
    board = requests.get(
        f"{scoring}/api/v1/leaderboard", params={"period": month}, headers=alice, timeout=10
    )
    rows = board.json().get("items", []) if board.ok else []
    check(board.status_code == 200, f"leaderboard {month} for a resident -> {board.status_code}")
    print(f"     {len(rows)} on this month's board (demo data: make run / make up load some)")
    check("phone" not in board.text, "the leaderboard shows no phone")
    nobody = requests.get(f"{scoring}/api/v1/leaderboard", params={"period": month}, timeout=10)
    check(nobody.status_code == 401, f"leaderboard without a token -> {nobody.status_code}")
    notify = args.notify.rstrip("/")
    inbox = requests.get(f"{notify}/api/v1/notifications", headers=alice, timeout=10)
    check(inbox.status_code == 200, f"notify inbox for a resident -> {inbox.status_code}")
    count = requests.get(f"{notify}/api/v1/notifications/unread-count", headers=alice, timeout=10)
    check(
        count.status_code == 200 and "unread" in count.json(),
        f"notify unread count -> {count.status_code} {count.text.strip()}",
    )
    nobody = requests.get(f"{notify}/api/v1/notifications", timeout=10)
    check(nobody.status_code == 401, f"notify inbox without a token -> {nobody.status_code}")
    first = ""
    try:
        with requests.get(
            f"{args.stream.rstrip('/')}/api/v1/notifications/stream",
            headers=alice,
            stream=True,
            timeout=10,
        ) as live:
            for line in live.iter_lines(decode_unicode=True):
                if line and line.startswith("event:"):
                    first = line
                    break
    except requests.RequestException as exc:
        first = type(exc).__name__
    check(first == "event: unread", f"notify stream's first event -> {first!r}")
    feed = args.feed.rstrip("/")
    news = requests.get(f"{feed}/api/v1/news", timeout=10)
    items = news.json().get("items", []) if news.ok else []
    check(news.status_code == 200, f"feed news without a token -> {news.status_code}")
    print(f"     {len(items)} news on the first page (demo data: make run / make up load some)")
    posts = requests.get(f"{feed}/api/v1/posts", headers=alice, timeout=10)
    check(posts.status_code == 200, f"feed party posts for a resident -> {posts.status_code}")
    anonymous = requests.get(f"{feed}/api/v1/posts", timeout=10)
    check(
        anonymous.status_code == 401, f"feed party posts without a token -> {anonymous.status_code}"
    )
    failed = [what for ok, what in results if not ok]
    print(f"\n{len(results) - len(failed)}/{len(results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
