"""A tiny service built with ``shared.web.create_service_app``, so the shared plumbing is tested
through HTTP exactly as every real service uses it (in-process and under a real gunicorn).

``create_app()`` reads its settings from the environment like a real service, for gunicorn:
``gunicorn 'shared.tests.tinyapp:create_app()'``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import sqlalchemy as sa
from flask import Flask, abort, request
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from shared.auth import AccountCheck, current_principal, require_roles
from shared.db import Database, UTCDateTime
from shared.pagination import keyset_page
from shared.settings import ServiceSettings, load_settings
from shared.web import create_service_app

log = logging.getLogger(__name__)

metadata = sa.MetaData()
things = sa.Table(
    "things",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

blp = Blueprint("things", __name__, url_prefix="/api/v1")


class TinySettings(ServiceSettings):
    service_name: str = "tiny"
    port: int = 8099
    tiny_hold_dir: Path | None = None


class ThingIn(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=64))


class PageArgs(Schema):
    cursor = fields.String(load_default=None)
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))


@blp.route("/things", methods=["GET"])
@blp.arguments(PageArgs, location="query")
def list_things(args: dict):
    """Keyset pages of things, oldest first (ties broken by id)."""
    db: Database = _db()
    with db.session() as session:
        rows, next_cursor = keyset_page(
            session,
            sa.select(things),
            order=[things.c.created_at.asc(), things.c.id.asc()],
            key=lambda row: [row.created_at, row.id],
            cursor=args["cursor"],
            limit=args["limit"],
            scalars=False,
        )
    return {"items": [{"id": str(r.id), "name": r.name} for r in rows], "next_cursor": next_cursor}


@blp.route("/things", methods=["POST"])
@blp.arguments(ThingIn)
def add_thing(body: dict):
    return {"name": body["name"]}, 201


@blp.route("/things/<int:thing_id>", methods=["GET"])
def get_thing(thing_id: int):
    """Answers with the worker's pid; ``?hold=<token>`` keeps this worker busy until released."""
    token = request.args.get("hold")
    if token:
        _hold(token)
    log.info("thing %s looked at", thing_id)
    return {"thing_id": thing_id, "pid": os.getpid()}


@blp.route("/me", methods=["GET"])
@require_roles()
def me():
    principal = current_principal()
    assert principal is not None
    return {"id": str(principal.id), "roles": sorted(principal.roles), "name": principal.name}


@blp.route("/township", methods=["GET"])
@require_roles("admin")
def township():
    return {"ok": True}


def _db() -> Database:
    from flask import current_app

    return current_app.extensions["db"]


def _hold(token: str) -> None:
    """Write ``<token>.held`` (with this pid), then wait for ``<token>.release`` (max 30 s)."""
    from flask import current_app

    folder = current_app.extensions["settings"].tiny_hold_dir
    if folder is None or not token.isalnum():
        abort(400)
    (folder / f"{token}.held").write_text(str(os.getpid()))
    deadline = time.monotonic() + 30
    while not (folder / f"{token}.release").exists():
        if time.monotonic() > deadline:
            abort(409)
        time.sleep(0.01)


def build_app(settings: TinySettings, account_check: AccountCheck | None = None) -> Flask:
    """The tiny service for given settings (tests build it in-process)."""
    db = Database(settings.sqlalchemy_url, metadata=metadata, producer=settings.service_name)
    app, api = create_service_app(settings, db, title="tiny", account_check=account_check)
    api.register_blueprint(blp)

    @app.get("/address")
    def address():
        return {"remote_addr": request.remote_addr, "scheme": request.scheme}

    @app.get("/boom")
    def boom():
        raise RuntimeError("password=hunter2 at /srv/secret/path.py line 42")

    return app


def create_app() -> Flask:
    """The gunicorn entry point: settings from the environment, as in a real service."""
    return build_app(load_settings(TinySettings))


def make_keys(folder: Path) -> tuple[Path, Path]:
    """A fresh Ed25519 pair in ``folder``: (private, public)."""
    from shared.auth import ensure_keypair

    private, public = folder / "jwt-private.pem", folder / "jwt-public.pem"
    ensure_keypair(private, public)
    return private, public
