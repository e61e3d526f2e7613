"""Retention of the outbox and the processed-event table, against the real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from shared.db import Database
from shared.retention import Purged, RetentionPolicy, purge
from shared.settings import ServiceSettings, load_settings
from shared.tests.conftest import outbox, processed_events, write_events

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _age_outbox(db: Database, ids: list[str], *, days: float, sent: bool) -> None:
    at = NOW - timedelta(days=days)
    with db.transaction() as session:
        session.execute(
            sa.update(outbox)
            .where(outbox.c.id.in_([uuid.UUID(i) for i in ids]))
            .values(created_at=at, sent_at=at if sent else None)
        )


def _processed(db: Database, count: int, *, days: float) -> None:
    with db.transaction() as session:
        session.execute(
            sa.insert(processed_events),
            [
                {
                    "event_id": uuid.uuid4(),
                    "handler": "handle_issue_reported",
                    "event_type": "issue.reported",
                    "processed_at": NOW - timedelta(days=days),
                }
                for _ in range(count)
            ],
        )


def _count(db: Database, table: sa.Table) -> int:
    with db.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_sent_outbox_rows_past_their_age_are_purged_in_batches_and_pending_ones_never(
    db: Database, service: str
) -> None:
    old_sent = write_events(db, 25)
    _age_outbox(db, old_sent, days=8, sent=True)
    recent_sent = write_events(db, 4)
    _age_outbox(db, recent_sent, days=6, sent=True)
    old_pending = write_events(db, 3)
    _age_outbox(db, old_pending, days=40, sent=False)  # an event still waiting: kept

    result = purge(db, RetentionPolicy(outbox_days=7, batch_size=10), service=service, now=NOW)

    assert result.outbox == 25
    with db.engine.connect() as conn:
        left = {str(i) for i in conn.execute(sa.select(outbox.c.id)).scalars()}
    assert left == set(recent_sent) | set(old_pending)
    purged = {"service": service, "table": "outbox"}
    assert REGISTRY.get_sample_value("retention_purged_total", purged) == 25


def test_processed_event_rows_are_kept_for_the_longer_inbox_age(db: Database, service: str) -> None:
    _processed(db, 7, days=31)
    _processed(db, 5, days=20)  # older than the outbox age, younger than the inbox age

    result = purge(
        db, RetentionPolicy(outbox_days=7, inbox_days=30, batch_size=3), service=service, now=NOW
    )

    assert result == Purged(outbox=0, inbox=7)
    assert _count(db, processed_events) == 5
    assert purge(db, RetentionPolicy(), service=service, now=NOW) == Purged(0, 0)


def test_retention_ages_are_settings_and_the_inbox_may_not_be_kept_shorter_than_the_outbox(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    defaults = ServiceSettings()
    assert (defaults.outbox_retention_days, defaults.inbox_retention_days) == (7, 30)
    monkeypatch.setenv("OUTBOX_RETENTION_DAYS", "3")
    monkeypatch.setenv("INBOX_RETENTION_DAYS", "45")
    assert load_settings(ServiceSettings).inbox_retention_days == 45

    monkeypatch.setenv("INBOX_RETENTION_DAYS", "2")
    with pytest.raises(SystemExit) as stopped:
        load_settings(ServiceSettings)
    assert stopped.value.code == 2
    assert "INBOX_RETENTION_DAYS" in capsys.readouterr().err
