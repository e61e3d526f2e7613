"""Pooled connections on a real PostgreSQL: a connection that sat idle is pinged before use
(and replaced when the server dropped it); one used moments ago is handed out without a ping;
``Database.read`` runs its SELECT without BEGIN/COMMIT."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from shared import db as db_module
from shared.db import Database


def _backend_pid(db: Database) -> int:
    with db.read() as conn:
        return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()


def _terminate(db: Database, pid: int) -> None:
    """Cut one pooled connection from the server side, as a restart or a firewall would."""
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        conn.commit()


def _single_connection_db(db: Database) -> Database:
    small = Database(db.url, metadata=db.metadata, producer="test", pool_size=1)
    small.engine  # noqa: B018 - build it
    return small


def test_an_idle_connection_the_server_dropped_is_replaced(db: Database, monkeypatch) -> None:
    monkeypatch.setattr(db_module, "IDLE_PING_SECONDS", 0.0)  # every return counts as idle
    small = _single_connection_db(db)
    try:
        first = _backend_pid(small)
        _terminate(db, first)
        second = _backend_pid(small)  # the ping failed: a new connection, no error
        assert second != first
    finally:
        small.dispose()


def test_a_connection_used_moments_ago_is_not_pinged(db: Database, monkeypatch) -> None:
    """The other side of the rule: within IDLE_PING_SECONDS the pool trusts the connection, so
    a server-side cut shows as an error on its next use (and the pool then drops it)."""
    monkeypatch.setattr(db_module, "IDLE_PING_SECONDS", 3600.0)
    small = _single_connection_db(db)
    try:
        first = _backend_pid(small)
        _terminate(db, first)
        with pytest.raises(OperationalError):
            _backend_pid(small)
        assert _backend_pid(small) != first  # the broken connection was thrown away
    finally:
        small.dispose()


def test_read_runs_without_a_transaction(db: Database) -> None:
    statements: list[str] = []

    def remember(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", remember)
    try:
        with db.read() as conn:
            # In autocommit no BEGIN precedes the SELECT and nothing stays open after it.
            status = conn.execute(sa.text("SELECT 1")).scalar_one()
            in_transaction = conn.connection.dbapi_connection.info.transaction_status
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", remember)
    assert status == 1
    assert in_transaction == 0  # psycopg's TransactionStatus.IDLE: nothing left open
    assert statements == ["SELECT 1"]
