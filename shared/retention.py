"""Retention: sent outbox rows and processed-event (inbox) rows do not pile up for ever.

Why two ages: a sent outbox row is only history once the broker confirmed it (default 7 days,
``OUTBOX_RETENTION_DAYS``); a processed-event row is what makes a redelivery harmless, so it must
outlive any copy of the event that may still arrive: a retry, or a dead letter replayed days
later (default 30 days, ``INBOX_RETENTION_DAYS``; replay dead letters younger than that). Pending
outbox rows are never purged, whatever their age.

A service's own table whose rows only matter for a while says so in its ``info``:
``{"retention": ("expires_at", timedelta(days=1))}`` purges the rows whose ``expires_at`` is more
than a day past (intake's refresh tokens and failed-login counts).

Rows go in batches (``DELETE ... WHERE key IN (SELECT ... LIMIT n)``), one short transaction
each, so a purge never holds long locks on a busy table. The worker runs ``run_forever`` in a
thread of its own. Example::

    policy = RetentionPolicy(outbox_days=7, inbox_days=30)
    purge(db, policy, service="intake")     # -> Purged(outbox=120, inbox=4000)
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from shared.db import Database
from shared.metrics import RETENTION_PURGED
from shared.relay import OutageLog

log = logging.getLogger("shared.retention")


@dataclass(frozen=True)
class RetentionPolicy:
    outbox_days: float = 7.0
    inbox_days: float = 30.0
    batch_size: int = 1000


@dataclass(frozen=True)
class Purged:
    outbox: int
    inbox: int


def purge(
    db: Database, policy: RetentionPolicy, *, service: str, now: datetime | None = None
) -> Purged:
    """Delete sent outbox rows and processed-event rows older than the policy's ages."""
    now = now or datetime.now(UTC)
    outbox = db.metadata.tables.get("outbox")
    inbox = db.metadata.tables.get("processed_events")
    removed_outbox = removed_inbox = 0
    if outbox is not None:
        cutoff = now - timedelta(days=policy.outbox_days)
        removed_outbox = _in_batches(
            db,
            outbox,
            [outbox.c.id],
            sa.and_(outbox.c.sent_at.is_not(None), outbox.c.sent_at < cutoff),
            policy.batch_size,
        )
        RETENTION_PURGED.labels(service, "outbox").inc(removed_outbox)
    if inbox is not None:
        cutoff = now - timedelta(days=policy.inbox_days)
        removed_inbox = _in_batches(
            db,
            inbox,
            [inbox.c.event_id, inbox.c.handler],
            inbox.c.processed_at < cutoff,
            policy.batch_size,
        )
        RETENTION_PURGED.labels(service, "processed_events").inc(removed_inbox)
    for table in db.metadata.tables.values():
        rule = table.info.get("retention")
        if rule is None:
            continue
        column, age = rule
        key = list(table.primary_key.columns)
        removed = _in_batches(db, table, key, table.c[column] < now - age, policy.batch_size)
        RETENTION_PURGED.labels(service, table.name).inc(removed)
        if removed:
            log.info("%s retention: removed %d %s row(s)", service, removed, table.name)
    if removed_outbox or removed_inbox:
        log.info(
            "%s retention: removed %d sent outbox row(s) older than %g days and %d "
            "processed-event row(s) older than %g days",
            service,
            removed_outbox,
            policy.outbox_days,
            removed_inbox,
            policy.inbox_days,
        )
    return Purged(removed_outbox, removed_inbox)


def _in_batches(
    db: Database, table: sa.Table, key: list[sa.Column], condition, batch_size: int
) -> int:
    removed = 0
    while True:
        chosen = sa.select(*key).where(condition).limit(batch_size)
        target = key[0] if len(key) == 1 else sa.tuple_(*key)
        with db.transaction() as session:
            count = session.execute(sa.delete(table).where(target.in_(chosen))).rowcount or 0
        removed += count
        if count < batch_size:
            return removed


def run_forever(
    db: Database,
    policy: RetentionPolicy,
    stop: threading.Event,
    *,
    service: str,
    interval_seconds: float = 3600.0,
) -> None:
    """Purge now and then every ``interval_seconds`` until ``stop``; survive database outages."""
    outage = OutageLog(log, f"{service} retention: database", initial=5.0, maximum=300.0)
    while not stop.is_set():
        try:
            purge(db, policy, service=service)
        except SQLAlchemyError as exc:
            stop.wait(outage.failed(exc))
            continue
        outage.recovered()
        stop.wait(interval_seconds)
