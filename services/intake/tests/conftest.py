"""Fixtures for intake's tests: a fresh PostgreSQL database and vhost per test, signed tokens."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from intake.app import create_app
from intake.models import User, Village
from intake.settings import IntakeSettings
from shared.auth import TokenIssuer

VILLAGE_ID = uuid.UUID("5a3c0000-0000-4000-8000-000000000001")


@pytest.fixture
def settings(fresh_database, session_amqp_url, jwt_keys, tmp_path) -> IntakeSettings:
    """Intake's web app only writes outbox rows, so one vhost serves all these tests."""
    private, public = jwt_keys
    return IntakeSettings(
        app_env="test",
        database_url=fresh_database("intake"),
        rabbitmq_url=session_amqp_url,
        jwt_private_key_file=private,
        jwt_public_key_file=public,
        wechat_mode="dev",
        media_dir=tmp_path / "media",
        log_format="text",
    )


@pytest.fixture
def app(settings):
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["db"].dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def db(app):
    return app.extensions["db"]


@pytest.fixture
def village(db) -> Village:
    with db.transaction() as session:
        village = Village(id=VILLAGE_ID, name="沙口集村")
        session.add(village)
    return village


@pytest.fixture
def make_user(db, app) -> Callable[..., tuple[User, dict[str, str]]]:
    """``make_user(roles=["resident"])`` → (user, Authorization headers)."""
    issuer: TokenIssuer = app.extensions["token_issuer"]

    def make(roles=("resident",), name="张三", **fields) -> tuple[User, dict[str, str]]:
        with db.transaction() as session:
            user = User(
                name=name,
                roles=list(roles),
                openid=fields.pop("openid", f"openid-{uuid.uuid4().hex}"),
                **fields,
            )
            session.add(user)
        token, _ = issuer.issue(user.id, user.roles, user.name, user.village_id)
        return user, {"Authorization": f"Bearer {token}"}

    return make


@pytest.fixture
def outbox_rows(db) -> Callable[..., list[dict]]:
    """``outbox_rows("issue.reported")``: the outbox rows written so far, oldest first."""

    def read(event_type: str | None = None) -> list[dict]:
        table = db.metadata.tables["outbox"]
        stmt = sa.select(table).order_by(table.c.created_at)
        if event_type:
            stmt = stmt.where(table.c.event_type == event_type)
        with db.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    return read
