"""Consumer apply rate (issue 11, item 4): events/s each service's real consumer applies, with
its inbox deduplication, draining its real queue.

* dispatch applying ``issue.reported`` (each becomes a work item with its first history step);
* scoring applying ``issue.resolved`` (points, four totals, a resolution, ``points.awarded`` in
  the outbox), the issues made known first through ``issue.reported`` and ``issue.assigned``;
* notify turning ``issue.reported`` into inbox rows, in a township of three admins and ten
  villages with a grid worker and a grid leader each (five inbox rows per event).

Each run gets a throwaway database (the service's tables) and vhost on the local PostgreSQL and
RabbitMQ, fills the service's queue with N envelopes, then times ``shared.worker.consumer_for``
(the worker's consumer, configured from the service's default settings) draining it. The
reference is ``shared.bench_consumer``: the same consumer with a one-row handler. A second row
per service times the handler alone (direct calls, one transaction per 100 events, no broker and
no inbox; a ``batched`` handler gets the 100 in one call, as the consumer hands them): the
ceiling the consumer's plumbing leaves room for.

    .venv/bin/python -m bench.run --only consumers          # 100 k events, median of 3
    .venv/bin/python -m bench.run --smoke --only consumers  # 300 events, once
    BENCH_CONSUMER_EVENTS=5000 .venv/bin/python -m bench.run --only consumers --repeats 1
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pika
import sqlalchemy as sa
from prometheus_client import REGISTRY

from bench.common import ROOT, Context, Goal, Result, median_of

for _svc in ("dispatch", "scoring", "notify"):
    if str(ROOT / "services" / _svc) not in sys.path:
        sys.path.append(str(ROOT / "services" / _svc))

from shared import bench_consumer  # noqa: E402
from shared.consumer import Handler  # noqa: E402
from shared.events import Envelope, make_envelope, parse_envelope  # noqa: E402
from shared.settings import ServiceSettings  # noqa: E402
from shared.testing import throwaway_backends, wait_for  # noqa: E402
from shared.worker import consumer_for  # noqa: E402

SECTION = "consumers"
GOAL = Goal(at_least=2000)
EXCHANGE = "service365.events"
VILLAGES = 10


@dataclass
class Service:
    """What one service's run needs: its tables, settings, subscriptions and its events."""

    name: str
    event_type: str
    metadata: sa.MetaData
    settings: ServiceSettings
    subscriptions: dict[str, Handler]
    use_settings: Callable[[Any], None]
    # (db) -> None: people and villages the handlers read, applied before anything is timed.
    seed: Callable[[Any], None]
    # (n) -> (events made known first, untimed; the timed events)
    events: Callable[[int], tuple[list[dict], list[dict]]]


def _envelope(event_type: str, data: dict, producer: str) -> dict:
    return make_envelope(event_type, data, producer=producer)


def _report(village: uuid.UUID, n: int) -> dict[str, Any]:
    """intake's ``issue.reported``, as it publishes it."""
    return {
        "issue_id": str(uuid.uuid4()),
        "ticket_no": f"SKJ-20260301-{n:06d}",
        "reporter_id": str(uuid.uuid4()),
        "category": "water_power",
        "description": "村东头自来水管破裂，已经漏水两天了。",
        "village_id": str(village),
        "address": "沙口集村东街 12 号",
        "lat": 36.2,
        "lon": 115.1,
        "photo_ids": [],
        "reported_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        "contact_name": None,
        "contact_phone": None,
        "submitted_by": None,
    }


def _villages() -> list[uuid.UUID]:
    return [
        uuid.uuid5(uuid.NAMESPACE_URL, f"service365-bench-village-{k}") for k in range(VILLAGES)
    ]


def _reports(n: int) -> tuple[list[dict], list[dict]]:
    villages = _villages()
    return [], [
        _envelope("issue.reported", _report(villages[k % VILLAGES], k), "intake") for k in range(n)
    ]


def _resolutions(n: int) -> tuple[list[dict], list[dict]]:
    """Per issue: reported and assigned (made known first), then resolved on time (timed)."""
    villages = _villages()
    workers = [uuid.uuid4() for _ in range(VILLAGES * 3)]
    now = datetime.now(UTC)
    first, timed = [], []
    for k in range(n):
        report = _report(villages[k % VILLAGES], k)
        worker = workers[k % len(workers)]
        due = now + timedelta(days=2)
        step = {"issue_id": report["issue_id"], "assignee_id": str(worker)}
        first.append(_envelope("issue.reported", report, "intake"))
        first.append(
            _envelope(
                "issue.assigned",
                {
                    **step,
                    "issue_version": 1,
                    "snapshot": {"state": "assigned", "level": "grid", "resolution_no": 0},
                    "assignee_name": f"网格员{k % len(workers)}",
                    "grid_id": str(uuid.uuid5(villages[k % VILLAGES], "grid")),
                    "village_id": report["village_id"],
                    "difficulty": 3,
                    "due_at": due.isoformat(),
                },
                "dispatch",
            )
        )
        timed.append(
            _envelope(
                "issue.resolved",
                {
                    **step,
                    "issue_version": 3,
                    "snapshot": {"state": "resolved", "level": "grid", "resolution_no": 1},
                    "resolver_id": str(worker),
                    "resolver_role": "grid_worker",
                    "level": "grid",
                    "difficulty": 3,
                    "due_at": due.isoformat(),
                    "resolved_at": now.isoformat(),
                    "on_time": True,
                    "resolution_no": 1,
                },
                "dispatch",
            )
        )
    return first, timed


def _account(user_id: uuid.UUID, role: str, village: uuid.UUID | None) -> dict:
    data = {
        "user_id": str(user_id),
        "name": f"{role}-{str(user_id)[:4]}",
        "roles": [role],
        "phone": "13800000000",
        "village_id": str(village) if village else None,
        "active": True,
        "revision": 1,
    }
    return _envelope("account.upserted", data, "intake")


def _township() -> list[dict]:
    """Three admins; per village its name, a grid worker and a grid leader."""
    events = [_account(uuid.uuid4(), "admin", None) for _ in range(3)]
    for k, village in enumerate(_villages()):
        events.append(
            _envelope(
                "village.upserted",
                {"village_id": str(village), "name": f"第{k + 1}村", "revision": 1},
                "dispatch",
            )
        )
        events += [_account(uuid.uuid4(), role, village) for role in ("grid_worker", "grid_leader")]
    return events


def _apply_directly(db, subscriptions: dict[str, Handler], events: list[dict]) -> None:
    with db.transaction() as session:
        for raw in events:
            envelope = parse_envelope(raw)
            subscriptions[envelope.type](session, envelope)


def _service(name: str) -> Service:
    """The service's run, importing only that service: its models would otherwise share the
    process with another service's tables of the same name (both have ``issues``)."""
    if name == "dispatch":
        from dispatch import handlers as dispatch_handlers
        from dispatch.models import Base as DispatchBase
        from dispatch.settings import DispatchSettings

        return Service(
            "dispatch",
            "issue.reported",
            DispatchBase.metadata,
            DispatchSettings(app_env="test", log_format="text"),
            dispatch_handlers.SUBSCRIPTIONS,
            dispatch_handlers.use_settings,
            lambda db: None,
            _reports,
        )
    if name == "scoring":
        from scoring import handlers as scoring_handlers
        from scoring.models import Base as ScoringBase
        from scoring.settings import ScoringSettings

        return Service(
            "scoring",
            "issue.resolved",
            ScoringBase.metadata,
            ScoringSettings(app_env="test", log_format="text"),
            scoring_handlers.SUBSCRIPTIONS,
            scoring_handlers.use_settings,
            lambda db: None,
            _resolutions,
        )
    from notify import handlers as notify_handlers
    from notify.models import Base as NotifyBase
    from notify.settings import NotifySettings

    return Service(
        "notify",
        "issue.reported",
        NotifyBase.metadata,
        NotifySettings(app_env="test", log_format="text"),
        notify_handlers.SUBSCRIPTIONS,
        notify_handlers.use_settings,
        lambda db: _apply_directly(db, notify_handlers.SUBSCRIPTIONS, _township()),
        _reports,
    )


SERVICES = ("dispatch", "scoring", "notify")
EVENT_TYPES = {
    "dispatch": "issue.reported",
    "scoring": "issue.resolved",
    "notify": "issue.reported",
}


# --- measuring ---------------------------------------------------------------------------------


def _publish(amqp_url: str, events: list[dict]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()  # every message is in the queue before the clock starts
    properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    for event in events:
        channel.basic_publish(EXCHANGE, event["type"], json.dumps(event).encode(), properties)
    connection.close()


def _processed(service: str, event_type: str) -> float:
    labels = {"service": service, "type": event_type, "outcome": "processed"}
    return REGISTRY.get_sample_value("events_consumed_total", labels) or 0.0


@contextmanager
def _consuming(consumer) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)


def _drain(consumer, service: str, counts: dict[str, int]) -> float:
    """Run the consumer until it processed ``counts`` more events per type; seconds taken."""
    start = {t: _processed(service, t) for t in counts}

    def done() -> bool:
        return all(_processed(service, t) - start[t] >= n for t, n in counts.items())

    started = time.perf_counter()
    with _consuming(consumer):
        wait_for(done, timeout=7200, interval=0.01)
    return time.perf_counter() - started


def consumer_rate(svc: Service, n: int) -> float:
    """Events/s the service's consumer applies, draining a queue of ``n`` events."""
    with throwaway_backends(svc.metadata, producer=svc.name) as (amqp_url, db):
        settings = svc.settings.model_copy(
            update={"rabbitmq_url": amqp_url, "service_name": svc.name}
        )
        svc.use_settings(settings)
        svc.seed(db)
        consumer = consumer_for(settings, db, svc.subscriptions)
        consumer.declare()
        first, timed = svc.events(n)
        if first:
            _publish(amqp_url, first)
            kinds: dict[str, int] = {}
            for event in first:
                kinds[event["type"]] = kinds.get(event["type"], 0) + 1
            _drain(consumer, svc.name, kinds)
        _publish(amqp_url, timed)
        return n / _drain(consumer, svc.name, {svc.event_type: n})


def handler_rate(svc: Service, n: int, batch: int = 100) -> float:
    """Events/s of the handler alone: direct calls, one transaction per ``batch`` events."""
    with throwaway_backends(svc.metadata, producer=svc.name) as (_amqp_url, db):
        svc.use_settings(svc.settings)
        svc.seed(db)
        first, timed = svc.events(n)
        for k in range(0, len(first), batch):
            _apply_directly(db, svc.subscriptions, first[k : k + batch])
        envelopes: list[Envelope] = [parse_envelope(raw) for raw in timed]
        handler = svc.subscriptions[svc.event_type]
        apply_many = getattr(handler, "apply_many", None)  # a ``batched`` handler: as consumed
        started = time.perf_counter()
        for k in range(0, n, batch):
            with db.transaction() as session:
                if apply_many is not None:
                    apply_many(session, envelopes[k : k + batch])
                else:
                    for envelope in envelopes[k : k + batch]:
                        handler(session, envelope)
        return n / (time.perf_counter() - started)


def _measure(what: str, name: str, n: int) -> float:
    """One measurement in a process of its own, as a worker runs one service (see ``_service``)."""
    if what == "reference":
        defaults = ServiceSettings()
        return bench_consumer.measure(
            n, prefetch=defaults.consumer_prefetch, batch_size=defaults.consumer_batch_size
        )
    svc = _service(name)
    return consumer_rate(svc, n) if what == "consumer" else handler_rate(svc, n)


def _in_own_process(what: str, name: str, n: int) -> float:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, (what, name, n))


def run(ctx: Context) -> list[Result]:
    # Smoke: small enough to finish within a minute on a busy two-core machine.
    # BENCH_CONSUMER_EVENTS: another queue size (100 k takes about an hour on 2 cores).
    n = int(os.environ.get("BENCH_CONSUMER_EVENTS") or ctx.size(100_000, 300))
    alone = max(100, n // 10)
    defaults = ServiceSettings()
    reference, reference_runs = median_of(
        ctx.repeats, lambda: _in_own_process("reference", "bench", n)
    )
    results = []
    for name in SERVICES:
        event_type = EVENT_TYPES[name]
        rate, runs = median_of(ctx.repeats, lambda name=name: _in_own_process("consumer", name, n))
        results.append(
            Result(
                SECTION,
                f"{name} applies {n / 1000:g} k {event_type}",
                rate,
                "events/s",
                reference=reference,
                reference_name="consumer with a one-row handler",
                goal=GOAL,
                runs=runs,
                extra={
                    "reference_runs": reference_runs,
                    "batch_size": defaults.consumer_batch_size,
                    "prefetch": defaults.consumer_prefetch,
                },
            )
        )
        rate, runs = median_of(
            ctx.repeats, lambda name=name: _in_own_process("handler", name, alone)
        )
        results.append(
            Result(
                SECTION,
                f"{name} {event_type} handler alone",
                rate,
                "events/s",
                runs=runs,
                extra={"events": alone, "per_transaction": 100},
            )
        )
    return results
