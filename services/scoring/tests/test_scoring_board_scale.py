"""The leaderboard reads the totals, not the ledger: at 1 k and at 100 k ledger entries the
same statements run with the same plans over the same rows."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from scoring_helpers import settings_with

from scoring import boards
from scoring.app import create_app
from scoring.handlers import use_settings

WORKERS = 50


def seed(db, entries: int) -> None:
    """``WORKERS`` grid workers and ``entries`` ledger rows spread over 2026's months (each
    worker in every month), then the totals rebuilt from them."""
    with db.transaction() as session:
        session.execute(
            sa.text(
                "INSERT INTO people (id, name, roles, active, on_board, updated_at) "
                "SELECT gen_random_uuid(), '员' || n, '[\"grid_worker\"]', true, true, now() "
                "FROM generate_series(1, :n) AS n"
            ),
            {"n": WORKERS},
        )
        session.execute(
            sa.text(
                """
                WITH w AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM people)
                INSERT INTO points_ledger (id, user_id, points, rule_code, rule_version,
                    source_event_id, occurred_at, period_month, created_at)
                SELECT gen_random_uuid(), w.id, 1 + (i % 5), 'resolved_on_time', 0,
                    gen_random_uuid(),
                    make_timestamptz(2026, 1 + ((i / :w) % 12), 10, 4, 0, 0, 'UTC'),
                    '2026-' || lpad((1 + ((i / :w) % 12))::text, 2, '0'), now()
                FROM generate_series(0, :n - 1) AS i JOIN w ON w.k = i % :w
                """
            ),
            {"n": entries, "w": WORKERS},
        )
    with db.transaction() as session:
        boards.rebuild(session)
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")


def _walk(node: dict[str, Any], seen: list[tuple[str, str, float]]) -> None:
    if "Relation Name" in node:
        rows = node.get("Actual Rows", 0) * node.get("Actual Loops", 1)
        seen.append((node["Relation Name"], node["Node Type"], rows))
    for child in node.get("Plans", []):
        _walk(child, seen)


def board_reads(database_url: str, jwt_keys, issuer, entries: int) -> list[list[tuple]]:
    """The tables, scan types and rows each statement of one leaderboard request reads."""
    settings = settings_with(database_url, jwt_keys)
    app = create_app(settings)
    use_settings(settings)
    db = app.extensions["db"]
    try:
        seed(db, entries)
        with db.transaction() as session:
            ledger = session.scalar(sa.text("SELECT count(*) FROM points_ledger"))
        assert ledger == entries
        statements: list[tuple[str, Any]] = []

        def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:
            if statement.lstrip().upper().startswith(("SELECT", "WITH")):
                statements.append((statement, parameters))

        token, _ = issuer.issue(uuid.uuid4(), ["resident"], "群众")
        sa.event.listen(db.engine, "before_cursor_execute", capture)
        response = app.test_client().get(
            "/api/v1/leaderboard",
            query_string={"period": "month:2026-11", "limit": 20},
            headers={"Authorization": f"Bearer {token}"},
        )
        sa.event.remove(db.engine, "before_cursor_execute", capture)
        assert response.status_code == 200
        assert len(response.json["items"]) == 20
        reads = []
        with db.engine.connect() as conn:
            for statement, parameters in statements:
                assert "points_ledger" not in statement
                plan = conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters
                ).scalar_one()
                seen: list[tuple[str, str, float]] = []
                _walk(plan[0]["Plan"], seen)
                reads.append(seen)
        return reads
    finally:
        use_settings(None)
        db.dispose()


def test_leaderboard_reads_the_same_rows_at_1k_and_100k_ledger_entries(
    fresh_database, jwt_keys, issuer
) -> None:
    small = board_reads(fresh_database("scoring"), jwt_keys, issuer, 1_000)
    large = board_reads(fresh_database("scoring"), jwt_keys, issuer, 100_000)

    tables = {table for statement in large for table, _, _ in statement}
    assert "points_ledger" not in tables
    assert tables <= {"people", "score_totals", "villages"}
    assert small == large
