"""The bare Flask reference apps the intake figures are compared with (``bench/http_intake.py``).

The same gunicorn settings as every service (``shared/gunicorn_conf.py`` through
``shared.cli.gunicorn_argv``: worker count and class, timeouts, logging), the same PostgreSQL
server, a database of its own: ``POST /reports`` inserts one row with SQLAlchemy and answers 201
with its id; ``GET /reports/<id>`` reads one row. No auth, no validation, no outbox, no logging
of its own: the floor a Flask + SQLAlchemy request on this machine costs.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/ref .venv/bin/python -m gunicorn \\
        --config shared/gunicorn_conf.py --bind 127.0.0.1:9001 'bench.reference_app:create_app()'
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from flask import Flask, abort, jsonify, request

metadata = sa.MetaData()
reports = sa.Table(
    "reference_reports",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("category", sa.String(32), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("village_id", sa.Uuid, nullable=False),
    sa.Column("idempotency_key", sa.String(128), nullable=True, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


def create_tables(url: str) -> None:
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    engine.dispose()


def create_app() -> Flask:
    """Built in each gunicorn worker after the fork (nothing is preloaded), like the services."""
    engine = sa.create_engine(os.environ["DATABASE_URL"], pool_size=5, pool_pre_ping=False)
    app = Flask("reference")

    @app.post("/reports")
    def create_report():
        body = request.get_json()
        row = {
            "id": uuid.uuid4(),
            "category": body["category"],
            "description": body.get("description") or "",
            "village_id": uuid.UUID(body["village_id"]),
            "idempotency_key": request.headers.get("Idempotency-Key"),
            "created_at": datetime.now(UTC),
        }
        with engine.begin() as conn:
            conn.execute(sa.insert(reports).values(**row))
        return jsonify({"id": str(row["id"])}), 201

    @app.get("/reports/<uuid:report_id>")
    def read_report(report_id: uuid.UUID):
        with engine.connect() as conn:
            row = conn.execute(sa.select(reports).where(reports.c.id == report_id)).first()
        if row is None:
            abort(404)
        return jsonify(
            {
                "id": str(row.id),
                "category": row.category,
                "description": row.description,
                "village_id": str(row.village_id),
                "created_at": row.created_at.isoformat(),
            }
        )

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app
