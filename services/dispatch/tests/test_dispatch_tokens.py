"""Dispatch refuses a signed token whose account intake has since disabled, demoted or
re-passworded, as told by the staff snapshot it keeps from ``account.upserted``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from dispatch_helpers import envelope

from dispatch.handlers import handle_account_upserted
from dispatch.models import Staff

QUEUE = "/api/v1/queue"


def upserted(db, person, revision: int, **changes) -> None:
    """Apply intake's ``account.upserted`` for ``person`` through the real handler."""
    data = {
        "user_id": str(person.id),
        "name": person.name,
        "roles": list(person.roles),
        "active": True,
        "revision": revision,
        "tokens_valid_after": None,
        **changes,
    }
    with db.transaction() as session:
        handle_account_upserted(session, envelope("account.upserted", data))


def assert_token_revoked(response) -> None:
    assert response.status_code == 401
    error = response.get_json()["error"]
    assert error["code"] == "token_revoked"
    assert error["message"] == "登录已失效，请重新登录。"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_disabled_admins_token_no_longer_reads_the_queue(client, db, person):
    admin = person("admin", name="乡管理员")
    assert client.get(QUEUE, headers=admin.headers).status_code == 200

    upserted(db, admin, 1, active=False)

    assert_token_revoked(client.get(QUEUE, headers=admin.headers))


def test_a_token_claiming_a_role_the_account_lost_is_refused(client, db, person):
    admin = person("admin", "grid_worker", name="乡管理员")

    upserted(db, admin, 1, roles=["grid_worker"])

    assert_token_revoked(client.get(QUEUE, headers=admin.headers))
    assert_token_revoked(client.get("/api/v1/tasks/mine", headers=admin.headers))


def test_a_token_issued_before_the_accounts_last_change_is_refused(client, db, person):
    admin = person("admin", name="乡管理员")
    changed_later = datetime.now(UTC) + timedelta(seconds=2)  # e.g. a new password

    upserted(db, admin, 1, tokens_valid_after=changed_later.isoformat())

    assert_token_revoked(client.get(QUEUE, headers=admin.headers))
    with db.transaction() as session:
        assert session.get(Staff, admin.id).tokens_valid_after == changed_later


def test_a_token_issued_after_the_accounts_last_change_is_let_in(client, db, person):
    admin = person("admin", name="乡管理员")
    changed_earlier = datetime.now(UTC) - timedelta(minutes=5)

    upserted(db, admin, 1, tokens_valid_after=changed_earlier.isoformat())

    assert client.get(QUEUE, headers=admin.headers).status_code == 200


def test_a_signed_token_of_an_account_dispatch_has_not_heard_of_yet_is_let_in(client, person):
    # The account.upserted of a brand-new account may still be on its way.
    newcomer = person("admin", name="新管理员", known=False)

    assert client.get(QUEUE, headers=newcomer.headers).status_code == 200


def test_a_stale_snapshot_does_not_bring_back_a_disabled_accounts_token(client, db, person):
    admin = person("admin", name="乡管理员")
    upserted(db, admin, 3, active=False)

    upserted(db, admin, 2, active=True)  # a retry delivered an older copy late

    assert_token_revoked(client.get(QUEUE, headers=admin.headers))


def test_a_refused_token_is_refused_on_every_route_not_only_admin_ones(client, db, person, town):
    worker = town.worker1
    upserted(db, worker, 1, active=False)

    for path in ("/api/v1/tasks/mine", f"/api/v1/issues/{uuid.uuid4()}"):
        assert_token_revoked(client.get(path, headers=worker.headers))
