"""``shared.db.Upsert`` on PostgreSQL and on SQLite (the embedded default): the same text
inserts, adds to running totals, replaces, fills only what the new row has, skips, and
returns what it inserted; typed parameters (UUID, UTC time, JSON) round-trip."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.db import Database, Upsert, UTCDateTime
from shared.testing import PostgresServer

metadata = sa.MetaData()
totals = sa.Table(
    "upsert_totals",
    metadata,
    sa.Column("period", sa.String(16), primary_key=True),
    sa.Column("user_id", sa.Uuid, primary_key=True),
    sa.Column("points", sa.Integer, nullable=False),
    sa.Column("entries", sa.Integer, nullable=False),
    sa.Column("label", sa.String(32), nullable=True),
    sa.Column("note", sa.String(32), nullable=True),
    sa.Column("seen_at", UTCDateTime, nullable=True),
    sa.Column("extra", sa.JSON, nullable=True),
)

ADD = Upsert(
    totals,
    conflict=("period", "user_id"),
    columns=("period", "user_id", "points", "entries", "label", "note", "seen_at", "extra"),
    add=("points", "entries"),
    replace=("label",),
    coalesce=("note",),
    returning=("points", "entries"),
)
ONCE = Upsert(
    totals,
    conflict=("period", "user_id"),
    columns=("period", "user_id", "points", "entries"),
    returning=("period",),
)


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request, postgres_server: PostgresServer, tmp_path: Path) -> Iterator[Database]:
    if request.param == "postgresql":
        url = postgres_server.create_database("upsert")
    else:
        url = f"sqlite:///{tmp_path / 'upsert.db'}"
    database = Database(url, metadata=metadata, producer="test")
    metadata.create_all(database.engine)
    yield database
    database.dispose()


def _row(user: uuid.UUID, points: int, **more) -> dict:
    base = {"period": "2026-11", "user_id": user, "points": points, "entries": 1}
    return {"label": None, "note": None, "seen_at": None, "extra": None, **base, **more}


def test_adds_replaces_and_fills_on_conflict(db: Database) -> None:
    user = uuid.uuid4()
    at = datetime(2026, 11, 29, 4, 0, tzinfo=UTC)
    with db.transaction() as session:
        first = ADD.execute(
            session, [_row(user, 3, label="一", note="先", seen_at=at, extra={"k": [1]})]
        )
        assert first is not None and first.one() == (3, 1)
    with db.transaction() as session:
        again = ADD.execute(session, [_row(user, 4, label="二", note=None)])
        assert again is not None and again.one() == (7, 2)  # the new totals come back
    with db.transaction() as session:
        row = session.execute(sa.select(totals)).one()
    assert (row.points, row.entries) == (7, 2)
    assert row.label == "二"  # replaced
    assert row.note == "先"  # NULL in the new row keeps the old value
    assert row.seen_at == at and row.extra == {"k": [1]}
    assert row.user_id == user


def test_many_rows_in_one_statement_return_each_inserted_row(db: Database) -> None:
    users = [uuid.uuid4() for _ in range(3)]
    with db.transaction() as session:
        ONCE.execute(session, [_row(users[0], 1)])
    with db.transaction() as session:
        result = ONCE.execute(session, [_row(u, 5) for u in users])
        assert result is not None
        assert len(result.all()) == 2  # the first user's row was there: skipped, not returned
    with db.transaction() as session:
        points = dict(session.execute(sa.select(totals.c.user_id, totals.c.points)).all())
    assert points == {users[0]: 1, users[1]: 5, users[2]: 5}


def test_executemany_without_returning_and_nothing_for_no_rows(db: Database) -> None:
    plain = Upsert(
        totals,
        conflict=("period", "user_id"),
        columns=("period", "user_id", "points", "entries"),
        add=("points",),
    )
    user = uuid.uuid4()
    with db.transaction() as session:
        assert plain.execute(session, []) is None
        plain.execute(session, [_row(user, 2), _row(user, 3)])  # one after the other
    with db.transaction() as session:
        assert session.execute(sa.select(totals.c.points)).scalar_one() == 5


def test_a_misspelt_column_fails_when_the_statement_is_declared() -> None:
    with pytest.raises(KeyError):
        Upsert(totals, conflict=("period",), columns=("period", "pionts"))


def test_many_rows_with_every_kind_of_value_add_up_and_come_back(db: Database) -> None:
    """On PostgreSQL several rows go as one array per column (``unnest``): UUIDs, UTC times,
    NULLs, Chinese text and JSON survive it, and a conflict adds as one row at a time would."""
    users = [uuid.uuid4() for _ in range(4)]
    at = datetime(2026, 11, 29, 4, 0, tzinfo=UTC)
    with db.transaction() as session:
        ADD.execute(session, [_row(users[0], 10, label="旧")])
    rows = [
        _row(u, k + 1, label=f"第{k}", seen_at=at if k % 2 else None, extra={"k": [k, "值"]})
        for k, u in enumerate(users)
    ]
    with db.transaction() as session:
        result = ADD.execute(session, rows)
        assert result is not None
        assert sorted(result.all()) == [(2, 1), (3, 1), (4, 1), (11, 2)]
    with db.transaction() as session:
        stored = {row.user_id: row for row in session.execute(sa.select(totals))}
    assert [stored[u].points for u in users] == [11, 2, 3, 4]
    assert [stored[u].label for u in users] == ["第0", "第1", "第2", "第3"]
    assert [stored[u].seen_at for u in users] == [None, at, None, at]
    # The conflicting row keeps what ADD neither adds, replaces nor fills (its JSON: none).
    assert [stored[u].extra for u in users] == [None, *({"k": [k, "值"]} for k in range(1, 4))]
