"""SQLAlchemy 2 engine and sessions, made per process after fork, plus the plumbing tables.

Each service owns one ``Database``; its models call ``plumbing_tables(Base.metadata)`` so that
the outbox and the processed-events (inbox) tables live in the service's own database and its
own Alembic history. Example::

    db = Database(settings.sqlalchemy_url, metadata=Base.metadata, producer="intake")
    with db.transaction() as session:
        session.add(report)
        emit(session, "issue.reported", {...})     # same transaction
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on PostgreSQL and SQLite alike (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; store times in UTC with a zone")
        return value.astimezone(UTC)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def plumbing_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """Add the ``outbox`` and ``processed_events`` tables to a service's metadata."""
    outbox = sa.Table(
        "outbox",
        metadata,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("event_type", sa.String(80), nullable=False),
        sa.Column("envelope", sa.JSON, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
        sa.Column("sent_at", UTCDateTime, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("last_error", sa.Text, nullable=True),
        # When the broker returned a row as unroutable, not before this time again (None: now).
        sa.Column("next_attempt_at", UTCDateTime, nullable=True),
        sa.Index(
            "ix_outbox_pending",
            "created_at",
            postgresql_where=sa.text("sent_at IS NULL"),
            sqlite_where=sa.text("sent_at IS NULL"),
        ),
        # The retention purge deletes sent rows by age.
        sa.Index(
            "ix_outbox_sent",
            "sent_at",
            postgresql_where=sa.text("sent_at IS NOT NULL"),
            sqlite_where=sa.text("sent_at IS NOT NULL"),
        ),
    )
    processed = sa.Table(
        "processed_events",
        metadata,
        sa.Column("event_id", sa.Uuid, primary_key=True),
        sa.Column("handler", sa.String(120), primary_key=True),
        sa.Column("event_type", sa.String(80), nullable=False),
        sa.Column("processed_at", UTCDateTime, nullable=False, default=utcnow),
        sa.Index("ix_processed_events_processed_at", "processed_at"),
    )
    return outbox, processed


def create_plumbing_tables(op) -> None:
    """Alembic steps of a service's first migration for ``outbox`` and ``processed_events`` as
    they were first shipped (later shapes come from ``upgrade_plumbing_0002``). A new service's
    first migration calls both, so its tables match ``plumbing_tables``::

        shared.db.create_plumbing_tables(op)
        shared.db.upgrade_plumbing_0002(op)
    """
    op.create_table(
        "outbox",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(length=80), nullable=False),
        sa.Column("envelope", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_pending",
            ["created_at"],
            unique=False,
            postgresql_where=sa.text("sent_at IS NULL"),
            sqlite_where=sa.text("sent_at IS NULL"),
        )
    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("handler", sa.String(length=120), nullable=False),
        sa.Column("event_type", sa.String(length=80), nullable=False),
        sa.Column("processed_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "handler"),
    )


def drop_plumbing_tables(op) -> None:
    op.drop_table("processed_events")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_outbox_pending",
            postgresql_where=sa.text("sent_at IS NULL"),
            sqlite_where=sa.text("sent_at IS NULL"),
        )
    op.drop_table("outbox")


def upgrade_plumbing_0002(op) -> None:
    """Alembic steps every service runs in its migration 0002: unroutable retry time on the
    outbox and the indexes the retention purge uses (``shared.relay.purge_retained``)."""
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("next_attempt_at", UTCDateTime(timezone=True), nullable=True))
        batch.create_index(
            "ix_outbox_sent",
            ["sent_at"],
            postgresql_where=sa.text("sent_at IS NOT NULL"),
            sqlite_where=sa.text("sent_at IS NOT NULL"),
        )
    with op.batch_alter_table("processed_events") as batch:
        batch.create_index("ix_processed_events_processed_at", ["processed_at"])


def downgrade_plumbing_0002(op) -> None:
    with op.batch_alter_table("processed_events") as batch:
        batch.drop_index("ix_processed_events_processed_at")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index(
            "ix_outbox_sent",
            postgresql_where=sa.text("sent_at IS NOT NULL"),
            sqlite_where=sa.text("sent_at IS NOT NULL"),
        )
        batch.drop_column("next_attempt_at")


# A pooled connection unused for longer than this is pinged before it is handed out again.
IDLE_PING_SECONDS = 10.0


def _remember_checkin(_dbapi_connection, record) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection, record, _proxy) -> None:
    """Ping a connection that sat idle in the pool (the server may have restarted or a firewall
    may have cut it meanwhile); a connection in use moments ago is handed out as it is.

    Why not ``pool_pre_ping``: it pings on every checkout, a round trip per transaction that a
    busy web pays thousands of times a second for the rare connection that went stale. Raising
    ``DisconnectionError`` here makes the pool drop this connection and open a new one.
    """
    checked_in_at = record.info.get("checked_in_at")
    if checked_in_at is None or time.monotonic() - checked_in_at < IDLE_PING_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        dbapi_connection.rollback()
    except Exception as exc:  # any failure: the connection is not usable
        raise sa.exc.DisconnectionError(f"idle connection failed its ping: {exc}") from exc


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """One engine per process (rebuilt after fork) and sessions that know their outbox."""

    def __init__(self, url: str, *, metadata: sa.MetaData, producer: str, pool_size: int = 5):
        self.url = url
        self.metadata = metadata
        self.producer = producer
        self.pool_size = pool_size
        self._pid: int | None = None
        self._engine: Engine | None = None
        self._sessionmaker: sessionmaker[Session] | None = None
        self._lock = threading.Lock()

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def engine(self) -> Engine:
        """The engine of this process; built on first use so that nothing crosses a fork."""
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    self._build()
        assert self._engine is not None
        return self._engine

    def _build(self) -> None:
        if self.is_sqlite:
            engine = sa.create_engine(self.url, connect_args={"timeout": 10})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = sa.create_engine(
                self.url,
                pool_size=self.pool_size,
                max_overflow=10,
                # A database host that stops answering (not refusing) must not hang a request or
                # the consumer's outage check for minutes.
                connect_args={"connect_timeout": 5},
            )
            event.listen(engine, "checkin", _remember_checkin)
            event.listen(engine, "checkout", _ping_if_idle)
        self._engine = engine
        self._sessionmaker = sessionmaker(
            bind=engine,
            expire_on_commit=False,
            info={
                "producer": self.producer,
                "outbox": self.metadata.tables.get("outbox"),
                "processed_events": self.metadata.tables.get("processed_events"),
            },
        )
        self._pid = os.getpid()

    def session(self) -> Session:
        """A new session; the caller commits or rolls back and closes it."""
        self.engine  # noqa: B018 - make sure the sessionmaker belongs to this process
        assert self._sessionmaker is not None
        return self._sessionmaker()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed at the end, rolled back on any error."""
        session = self.session()
        try:
            with session.begin():
                yield session
        finally:
            session.close()

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A connection for one read statement, in autocommit: no BEGIN and no COMMIT round trips.

        Only for a single SELECT (several would each see their own snapshot); never for writes.
        """
        with self.engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")

    def ping(self) -> None:
        """Raise if the database does not answer (for /readyz)."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        self._engine = None


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's current transaction has committed (never on rollback).

    Why: a business counter (``issues_reported_total``) must count what was stored, not what
    was attempted; a failed commit would otherwise count a report that does not exist.
    """

    pending = session.info.get("after_commit")
    if pending is None:
        pending = session.info["after_commit"] = []
        event.listen(session, "after_commit", _run_after_commit)
        event.listen(session, "after_soft_rollback", _forget_after_commit)
    pending.append(callback)


def _run_after_commit(session: Session) -> None:
    callbacks, session.info["after_commit"] = session.info.get("after_commit", []), []
    for callback in callbacks:
        callback()


def _forget_after_commit(session: Session, _previous_transaction: object) -> None:
    session.info["after_commit"] = []


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def among(
    session: Session | sa.Connection, column: sa.ColumnElement[Any], values: Iterable[Any]
) -> sa.ColumnElement[bool]:
    """``column`` among ``values``: on PostgreSQL ``= ANY`` of one array parameter, an ``IN``
    list on SQLite.

    Why: an ``IN`` list binds a parameter per value, so its text changes with the count and
    psycopg converts a long one anew each time (about 6 µs a parameter); one array parameter
    keeps one short text, converted once. (The consumer also plans its batches' statements for
    their actual parameters: ``shared.consumer``.)"""
    values = list(values)
    if session.get_bind().dialect.name == "postgresql":
        return column == sa.func.any(sa.literal(values, sa.ARRAY(column.type)))
    return column.in_(values)


def among_bound(dialect: str, column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
    """``among`` for a statement built once: the values come later, as the parameter ``name``
    (a list), on the ``dialect`` the statement is for (``postgresql`` or ``sqlite``)."""
    if dialect == "postgresql":
        return column == sa.func.any(sa.bindparam(name, type_=sa.ARRAY(column.type)))
    return column.in_(sa.bindparam(name, expanding=True))


def names_by_id(
    session: Session | sa.Connection, model: type, ids: Iterable[Any]
) -> dict[Any, str]:
    """``model``'s ``name`` by its ``id`` for ``ids`` (``None`` left out): the names a page of
    items shows beside them (staff, people, villages), in one statement per model built once,
    since composing it costs more CPU than the small read itself."""
    wanted = sorted({i for i in ids if i is not None}, key=str)
    if not wanted:
        return {}
    return dict(session.execute(_names_statement(model), {"ids": wanted}).all())


@functools.lru_cache(maxsize=32)
def _names_statement(model: type) -> sa.Select:
    return sa.select(model.id, model.name).where(model.id.in_(sa.bindparam("ids", expanding=True)))


class Upsert:
    """``INSERT ... ON CONFLICT`` for a hot path, as one SQL text for PostgreSQL and SQLite alike.

    Why not ``postgresql.insert(...).on_conflict_do_update``: SQLAlchemy keeps the dialects'
    inserts out of its compiled-statement cache (``inherit_cache = False``), so each execution
    compiles the statement again, about a millisecond: more than the rest of most event
    handlers. This text is built once and binds typed parameters (UUIDs, UTC times, JSON).

    ``add``: ``column = table.column + excluded.column`` (running totals); ``replace``:
    ``column = excluded.column``; ``coalesce``: ``column = coalesce(excluded.column,
    table.column)`` (a value only when the new row has one); none of them: ``DO NOTHING``.
    ``returning``: the columns the inserted rows give back (rows a conflict skipped give
    nothing; rows a conflict updated give their new values).

    Example::

        TOTALS = Upsert(totals, conflict=("period", "user_id"), columns=(...), add=("points",))
        TOTALS.execute(session, [{"period": "2026-11", "user_id": uid, "points": 3, ...}])
    """

    def __init__(
        self,
        table: sa.Table,
        *,
        conflict: Iterable[str],
        columns: Iterable[str],
        add: Iterable[str] = (),
        replace: Iterable[str] = (),
        coalesce: Iterable[str] = (),
        returning: Iterable[str] = (),
    ) -> None:
        self.table = table
        self.conflict = tuple(conflict)
        self.columns = tuple(columns)
        self.add = tuple(add)
        self.replace = tuple(replace)
        self.coalesce = tuple(coalesce)
        self.returning = tuple(returning)
        names = (*self.conflict, *self.columns, *self.add, *self.replace, *self.coalesce)
        for name in (*names, *self.returning):
            table.c[name]  # a misspelt column fails here, at import, not in use
        self._statements: dict[int, sa.TextClause] = {}
        self._from_json: sa.TextClause | None = None

    def statement(self, rows: int = 1) -> sa.TextClause:
        """The statement for ``rows`` rows in one VALUES list (parameters ``<column>_<i>``);
        one row: plain ``:<column>`` parameters, for ``executemany``."""
        cached = self._statements.get(rows)
        if cached is not None:
            return cached

        def name(column: str, i: int) -> str:
            return column if rows == 1 else f"{column}_{i}"

        values = ", ".join(
            "(" + ", ".join(f":{name(c, i)}" for c in self.columns) + ")" for i in range(rows)
        )
        sql = self._sql(f"VALUES {values}")
        stmt = sa.text(sql).bindparams(
            *(
                sa.bindparam(name(c, i), type_=self.table.c[c].type)
                for i in range(rows)
                for c in self.columns
            )
        )
        if self.returning:
            stmt = stmt.columns(*(self.table.c[c] for c in self.returning))
        if rows <= 64:  # the common shapes; a rare long list is built each time it comes
            self._statements[rows] = stmt
        return stmt

    def _sql(self, source: str) -> str:
        """``INSERT INTO <table> (<columns>) <source> ON CONFLICT ... [RETURNING ...]``."""
        quoted_table = _quote(self.table.name)
        sets = [
            f"{_quote(c)} = {quoted_table}.{_quote(c)} + excluded.{_quote(c)}" for c in self.add
        ]
        sets += [f"{_quote(c)} = excluded.{_quote(c)}" for c in self.replace]
        sets += [
            f"{_quote(c)} = coalesce(excluded.{_quote(c)}, {quoted_table}.{_quote(c)})"
            for c in self.coalesce
        ]
        sql = (
            f"INSERT INTO {quoted_table} ({', '.join(map(_quote, self.columns))}) "
            f"{source} ON CONFLICT ({', '.join(map(_quote, self.conflict))}) "
            + (f"DO UPDATE SET {', '.join(sets)}" if sets else "DO NOTHING")
        )
        if self.returning:
            sql += f" RETURNING {', '.join(map(_quote, self.returning))}"
        return sql

    def json_statement(self) -> sa.TextClause:
        """PostgreSQL: the rows as one JSON parameter (``INSERT ... SELECT FROM
        json_to_recordset``), each value read with its column's type.

        Why: a VALUES list binds a parameter per value, and psycopg converts a statement of more
        than 50 parameters anew each time (about 6 µs a parameter: 7 ms for 100 rows of 12
        columns); arrays per column cost as much again in psycopg's escaping of text. One JSON
        text (``json.dumps``, in C) keeps the statement short, cached and converted once."""
        if self._from_json is None:
            dialect = postgresql.dialect()
            record = ", ".join(
                f"{_quote(c)} {self.table.c[c].type.compile(dialect=dialect)}" for c in self.columns
            )
            names = ", ".join(map(_quote, self.columns))
            sql = self._sql(
                f"SELECT {names} FROM json_to_recordset(CAST(:rows AS JSON)) AS r({record})"
            )
            self._from_json = (
                sa.text(sql)
                .bindparams(sa.bindparam("rows", type_=sa.Text))
                .columns(*(self.table.c[c] for c in self.returning))
            )
        return self._from_json

    def execute(
        self, session: Session | sa.Connection, rows: Sequence[Mapping[str, Any]]
    ) -> sa.Result | None:
        """Insert ``rows`` (each with every column of ``columns``); with ``returning``, the
        result of one statement for them all, else one ``executemany``. None when ``rows`` is
        empty."""
        if not rows:
            return None
        if not self.returning:
            return session.execute(self.statement(1), [dict(row) for row in rows])
        return session.execute(*self.prepared(session, rows))

    def prepared(
        self, session: Session | sa.Connection, rows: Sequence[Mapping[str, Any]]
    ) -> tuple[sa.TextClause, dict[str, Any]]:
        """The one statement for ``rows`` and its parameters (for a caller that wraps it, e.g.
        ``select(Model).from_statement(...)``): on PostgreSQL several rows as one JSON
        parameter (``json_statement``), else a VALUES list."""
        if len(rows) > 1 and session.get_bind().dialect.name == "postgresql":
            text = json.dumps(
                [{column: row[column] for column in self.columns} for row in rows],
                default=_json_value,
                ensure_ascii=False,
            )
            return self.json_statement(), {"rows": text}
        params = {
            f"{column}_{i}" if len(rows) > 1 else column: row[column]
            for i, row in enumerate(rows)
            for column in self.columns
        }
        return self.statement(len(rows)), params


def _json_value(value: Any) -> str:
    """UUIDs and times in ``Upsert.json_statement``'s rows (PostgreSQL reads them typed)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _quote(name: str) -> str:
    return f'"{name}"'
