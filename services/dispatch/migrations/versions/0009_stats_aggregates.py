"""stats aggregates: running counts per (village, category, state, level), resolve-time
buckets, and the indexes the statistics read (overdue count, exact resolve-time percentiles)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-20 10:00:00

The backfill counts the existing issues; the bucket rule is copied here (migrations do not
import the service's code, which may change later): one bucket per second below 64 s, then 32
per octave of whole seconds, -1 for a negative time; rolled up with the nil UUID (any village)
and "*" (any category).
"""

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WORKING = "state IN ('assigned', 'in_progress', 'reopened')"
DONE = "state IN ('closed', 'resolved') AND resolved_at IS NOT NULL"
ANY_VILLAGE = uuid.UUID(int=0)
ANY_CATEGORY = "*"


def _bucket(seconds: int) -> int:
    if seconds < 0:
        return -1
    if seconds < 64:
        return seconds
    bits = seconds.bit_length()
    return 64 + (bits - 7) * 32 + ((seconds >> (bits - 6)) & 31)


def upgrade() -> None:
    op.create_table(
        "issue_stats_counts",
        sa.Column("village_id", sa.Uuid(), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("rated", sa.BigInteger(), nullable=False),
        sa.Column("satisfied", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("village_id", "category", "state", "level"),
    )
    times = op.create_table(
        "issue_stats_resolve_times",
        sa.Column("village_id", sa.Uuid(), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("village_id", "category", "bucket"),
    )
    op.create_index(
        "ix_issues_overdue_count",
        "issues",
        ["due_at"],
        postgresql_include=["village_id", "category"],
        postgresql_where=sa.text(WORKING),
        sqlite_where=sa.text(WORKING),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # INCLUDE the expression's columns so that PostgreSQL reads the values index-only.
        op.execute(
            "CREATE INDEX ix_issues_resolve_seconds ON issues "
            "((EXTRACT(EPOCH FROM resolved_at - reported_at))) "
            f"INCLUDE (village_id, category, reported_at, resolved_at) WHERE {DONE}"
        )

    op.execute(
        "INSERT INTO issue_stats_counts (village_id, category, state, level, n, rated, satisfied) "
        "SELECT village_id, category, state, level, count(*), count(rating), "
        "sum(CASE WHEN rating IN ('basically_satisfied', 'satisfied') THEN 1 ELSE 0 END) "
        "FROM issues GROUP BY village_id, category, state, level"
    )
    issues = sa.table(
        "issues",
        sa.column("village_id", sa.Uuid()),
        sa.column("category", sa.String()),
        sa.column("state", sa.String()),
        sa.column("reported_at", sa.DateTime(timezone=True)),
        sa.column("resolved_at", sa.DateTime(timezone=True)),
    )
    buckets: dict[tuple, int] = defaultdict(int)
    rows = bind.execute(
        sa.select(
            issues.c.village_id, issues.c.category, issues.c.reported_at, issues.c.resolved_at
        )
        .where(issues.c.state.in_(["closed", "resolved"]), issues.c.resolved_at.is_not(None))
        .execution_options(yield_per=10_000)
    )
    for village, category, reported_at, resolved_at in rows:
        if isinstance(village, str):
            village = uuid.UUID(village)
        if isinstance(reported_at, str):  # SQLite without the column type's conversion
            reported_at, resolved_at = (_parse(reported_at), _parse(resolved_at))
        bucket = _bucket(_seconds(reported_at, resolved_at))
        for v in (village, ANY_VILLAGE):
            for c in (category, ANY_CATEGORY):
                buckets[(v, c, bucket)] += 1
    items = [
        {"village_id": v, "category": c, "bucket": b, "n": n}
        for (v, c, b), n in sorted(buckets.items(), key=lambda kv: (str(kv[0][0]), *kv[0][1:]))
    ]
    for start in range(0, len(items), 5000):
        op.bulk_insert(times, items[start : start + 5000])


def _parse(text: str):
    from datetime import UTC, datetime

    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _seconds(reported_at, resolved_at) -> int:
    if reported_at.tzinfo is None or resolved_at.tzinfo is None:
        reported_at, resolved_at = (
            reported_at.replace(tzinfo=None),
            resolved_at.replace(tzinfo=None),
        )
    return (resolved_at - reported_at) // timedelta(seconds=1)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.drop_index("ix_issues_resolve_seconds", table_name="issues")
    op.drop_index("ix_issues_overdue_count", table_name="issues")
    op.drop_table("issue_stats_resolve_times")
    op.drop_table("issue_stats_counts")
