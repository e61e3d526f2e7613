"""Admins manage staff accounts; every change is announced as ``account.upserted``; the CLI."""

from __future__ import annotations

import argparse
import io
import uuid

import pytest
import sqlalchemy as sa

from intake.commands import COMMANDS, TOWNSHIP_FILE, load_township
from intake.models import User, Village
from shared.cli import Command

ACCOUNTS = "/api/v1/accounts"
NEW_STAFF = {
    "username": "worker07",
    "name": "孙丽",
    "phone": "13912345678",
    "roles": ["grid_worker"],
    "password": "grid-worker-7",
}


@pytest.fixture
def admin(make_user) -> dict[str, str]:
    _, headers = make_user(roles=["admin"], name="乡管理员")
    return headers


def test_admin_creates_a_staff_account_and_it_is_announced(client, admin, village, outbox_rows):
    response = client.post(
        ACCOUNTS, json={**NEW_STAFF, "village_id": str(village.id)}, headers=admin
    )

    assert response.status_code == 201
    body = response.get_json()
    assert body["username"] == "worker07" and body["roles"] == ["grid_worker"]
    assert body["village_id"] == str(village.id) and body["has_password"] is True
    assert "password" not in body and "password_hash" not in body
    [event] = outbox_rows("account.upserted")
    assert event["envelope"]["data"] == {
        "user_id": body["id"],
        "username": "worker07",
        "name": "孙丽",
        "roles": ["grid_worker"],
        "phone": "13912345678",
        "village_id": str(village.id),
        "active": True,
        "openid": None,
        "tokens_valid_after": None,
        "revision": 1,
    }


def test_a_created_account_signs_in_with_its_password(client, admin):
    client.post(ACCOUNTS, json=NEW_STAFF, headers=admin)

    response = client.post(
        "/api/v1/auth/login", json={"username": "worker07", "password": "grid-worker-7"}
    )

    assert response.status_code == 200


def test_an_account_without_a_password_cannot_sign_in_until_one_is_set(client, admin):
    created = client.post(ACCOUNTS, json={**NEW_STAFF, "password": None}, headers=admin).get_json()
    login = {"username": "worker07", "password": "grid-worker-7"}
    assert created["has_password"] is False
    assert client.post("/api/v1/auth/login", json=login).status_code == 401

    client.patch(f"{ACCOUNTS}/{created['id']}", json={"password": "grid-worker-7"}, headers=admin)

    assert client.post("/api/v1/auth/login", json=login).status_code == 200


def test_a_duplicate_username_is_409_and_announces_nothing(client, admin, outbox_rows):
    client.post(ACCOUNTS, json=NEW_STAFF, headers=admin)

    response = client.post(ACCOUNTS, json={**NEW_STAFF, "username": "Worker07"}, headers=admin)

    assert response.status_code == 409
    assert response.get_json()["error"]["message"] == "用户名 worker07 已被使用。"
    assert len(outbox_rows("account.upserted")) == 1


def test_an_unknown_village_is_refused_and_announces_nothing(client, admin, db, outbox_rows):
    response = client.post(
        ACCOUNTS, json={**NEW_STAFF, "village_id": str(uuid.uuid4())}, headers=admin
    )

    assert response.status_code == 422
    assert response.get_json()["error"]["details"] == {"village_id": ["所选村庄不存在。"]}
    assert outbox_rows() == []
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(User.id).where(User.username == "worker07")).first() is None


def test_a_short_password_and_an_unknown_role_are_refused_in_chinese(client, admin, outbox_rows):
    response = client.post(
        ACCOUNTS, json={**NEW_STAFF, "password": "short", "roles": ["mayor"]}, headers=admin
    )

    assert response.status_code == 422
    details = response.get_json()["error"]["details"]["json"]
    assert details["password"] == ["密码长度应在 8 到 256 个字符之间。"]
    assert details["roles"]["0"][0].startswith("角色应为以下之一")
    assert outbox_rows() == []


def test_admin_changes_roles_village_and_status_and_each_change_is_announced(
    client, admin, village, outbox_rows
):
    user_id = client.post(ACCOUNTS, json=NEW_STAFF, headers=admin).get_json()["id"]

    promoted = client.patch(
        f"{ACCOUNTS}/{user_id}",
        json={"roles": ["grid_leader", "party_member"], "village_id": str(village.id)},
        headers=admin,
    )
    disabled = client.patch(f"{ACCOUNTS}/{user_id}", json={"active": False}, headers=admin)

    assert promoted.status_code == disabled.status_code == 200
    assert promoted.get_json()["roles"] == ["grid_leader", "party_member"]
    events = [row["envelope"]["data"] for row in outbox_rows("account.upserted")]
    assert len(events) == 3
    assert events[1]["roles"] == ["grid_leader", "party_member"]
    assert events[1]["village_id"] == str(village.id)
    assert events[2]["active"] is False
    # Each change is a newer revision; a change of roles or active moves tokens_valid_after.
    assert [e["revision"] for e in events] == [1, 2, 3]
    assert events[0]["tokens_valid_after"] is None
    assert events[1]["tokens_valid_after"] < events[2]["tokens_valid_after"]
    login = {"username": "worker07", "password": "grid-worker-7"}
    assert client.post("/api/v1/auth/login", json=login).status_code == 401


def test_a_change_that_changes_nothing_announces_nothing(client, admin, outbox_rows):
    user_id = client.post(ACCOUNTS, json=NEW_STAFF, headers=admin).get_json()["id"]

    response = client.patch(f"{ACCOUNTS}/{user_id}", json={"name": "孙丽"}, headers=admin)

    assert response.status_code == 200
    assert len(outbox_rows("account.upserted")) == 1


def test_a_new_password_lifts_the_delay_of_earlier_failures(client, admin, db, settings):
    settings.login_max_failures = 2
    user_id = client.post(ACCOUNTS, json=NEW_STAFF, headers=admin).get_json()["id"]
    for _ in range(2):
        client.post("/api/v1/auth/login", json={"username": "worker07", "password": "wrong-one"})
    held = client.post("/api/v1/auth/login", json={"username": "worker07", "password": "x1234567"})
    assert held.status_code == 429

    client.patch(f"{ACCOUNTS}/{user_id}", json={"password": "new-password-1"}, headers=admin)

    login = {"username": "worker07", "password": "new-password-1"}
    assert client.post("/api/v1/auth/login", json=login).status_code == 200


def test_unknown_fields_and_unknown_accounts_are_refused(client, admin):
    user_id = client.post(ACCOUNTS, json=NEW_STAFF, headers=admin).get_json()["id"]

    unknown_field = client.patch(f"{ACCOUNTS}/{user_id}", json={"username": "x"}, headers=admin)
    unknown_account = client.patch(f"{ACCOUNTS}/{uuid.uuid4()}", json={"name": "某"}, headers=admin)
    unknown_get = client.get(f"{ACCOUNTS}/{uuid.uuid4()}", headers=admin)

    assert unknown_field.status_code == 422
    assert unknown_account.status_code == unknown_get.status_code == 404
    assert unknown_get.get_json()["error"]["message"] == "未找到该账号。"


def test_admin_reads_one_account(client, admin):
    user_id = client.post(ACCOUNTS, json=NEW_STAFF, headers=admin).get_json()["id"]

    response = client.get(f"{ACCOUNTS}/{user_id}", headers=admin)

    assert response.status_code == 200
    assert response.get_json()["name"] == "孙丽"


def test_accounts_are_listed_newest_first_in_cursor_pages(client, admin):
    created = [
        client.post(
            ACCOUNTS, json={**NEW_STAFF, "username": f"worker{i:02d}"}, headers=admin
        ).get_json()["id"]
        for i in range(5)
    ]

    seen, cursor, pages = [], None, 0
    while True:
        query = {"role": "grid_worker", "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get(ACCOUNTS, query_string=query, headers=admin).get_json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break

    assert pages == 3
    assert seen == list(reversed(created))


def test_accounts_are_filtered_by_role_village_and_text(client, admin, village):
    client.post(ACCOUNTS, json=NEW_STAFF, headers=admin)
    client.post(
        ACCOUNTS,
        json={
            "username": "leader01",
            "name": "李秀英",
            "roles": ["grid_leader", "party_member"],
            "village_id": str(village.id),
        },
        headers=admin,
    )

    def usernames(**query) -> list[str]:
        response = client.get(ACCOUNTS, query_string=query, headers=admin)
        assert response.status_code == 200
        return sorted(item["username"] or "-" for item in response.get_json()["items"])

    assert usernames(role="grid_leader") == ["leader01"]
    assert usernames(role="party_member") == ["leader01"]
    assert usernames(role="grid_worker") == ["worker07"]
    assert usernames(village_id=str(village.id)) == ["leader01"]
    assert usernames(q="秀英") == ["leader01"]
    assert usernames(q="1391234") == ["worker07"]
    assert usernames(q="%") == []
    assert "-" in usernames()  # the admin made by the fixture has no username


def test_a_bad_cursor_is_400(client, admin):
    response = client.get(ACCOUNTS, query_string={"cursor": "not-a-cursor"}, headers=admin)

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_cursor"


ROUTES = [
    ("post", ACCOUNTS, NEW_STAFF),
    ("get", ACCOUNTS, None),
    ("get", f"{ACCOUNTS}/{uuid.uuid4()}", None),
    ("patch", f"{ACCOUNTS}/{uuid.uuid4()}", {"name": "某"}),
]


@pytest.mark.parametrize(("method", "url", "body"), ROUTES)
@pytest.mark.parametrize("roles", [["grid_leader", "supervisor"], ["resident"]])
def test_only_admins_may_manage_accounts(client, make_user, outbox_rows, method, url, body, roles):
    _, headers = make_user(roles=roles)

    response = getattr(client, method)(url, json=body, headers=headers)

    assert response.status_code == 403
    assert response.get_json()["error"]["message"] == "您没有权限进行此操作。"
    assert outbox_rows() == []


@pytest.mark.parametrize(("method", "url", "body"), ROUTES)
def test_managing_accounts_without_a_token_is_401(client, method, url, body):
    response = getattr(client, method)(url, json=body)

    assert response.status_code == 401


# --- commands ---------------------------------------------------------------------------------


def run_command(name: str, argv: list[str], settings) -> int:
    command: Command = COMMANDS[name]
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv), settings)


def test_create_user_reads_the_password_from_stdin_and_announces_the_account(
    settings, client, outbox_rows, monkeypatch, capsys
):
    monkeypatch.setattr("sys.stdin", io.StringIO("township-admin-1\n"))

    code = run_command(
        "create-user",
        ["--username", "Admin2", "--role", "admin", "--role", "supervisor", "--name", "周强"],
        settings,
    )

    assert code == 0
    assert "admin2" in capsys.readouterr().out
    [event] = outbox_rows("account.upserted")
    assert event["envelope"]["data"]["roles"] == ["admin", "supervisor"]
    assert event["envelope"]["data"]["name"] == "周强"
    login = {"username": "admin2", "password": "township-admin-1"}
    assert client.post("/api/v1/auth/login", json=login).status_code == 200


def test_create_user_refuses_an_existing_username_in_both_languages(
    settings, outbox_rows, monkeypatch, capsys
):
    monkeypatch.setattr("sys.stdin", io.StringIO("township-admin-1\n"))
    run_command("create-user", ["--username", "admin2", "--role", "admin"], settings)
    monkeypatch.setattr("sys.stdin", io.StringIO("another-pass-2\n"))

    code = run_command("create-user", ["--username", "admin2", "--role", "admin"], settings)

    assert code == 1
    assert "用户名 admin2 已被使用。 / username admin2 already exists" in capsys.readouterr().err
    assert len(outbox_rows("account.upserted")) == 1


def test_create_user_refuses_a_short_password(settings, outbox_rows, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))

    code = run_command("create-user", ["--username", "admin2", "--role", "admin"], settings)

    assert code == 1
    assert "密码至少 8 个字符" in capsys.readouterr().err
    assert outbox_rows() == []


def test_seed_demo_twice_creates_the_township_once(settings, db, client, outbox_rows, capsys):
    first = run_command("seed-demo", [], settings)
    events_after_first = len(outbox_rows("account.upserted"))
    second = run_command("seed-demo", [], settings)

    assert first == second == 0
    villages = load_township(TOWNSHIP_FILE)
    with db.transaction() as session:
        stored = {v.id: v.name for v in session.scalars(sa.select(Village))}
        usernames = set(session.scalars(sa.select(User.username)))
    assert stored == {v["id"]: v["name"] for v in villages} and len(stored) == 26
    assert {"admin", "worker01", "leader01", "supervisor01", "publicist01", "area01"} <= usernames
    assert events_after_first == len(usernames)
    assert len(outbox_rows("account.upserted")) == events_after_first
    out = capsys.readouterr().out
    assert "新增 added 0" in out.split("村庄 villages")[-1]
    assert '{"code": "demo-resident-1"}' in out
    login = {"username": "worker01", "password": settings.demo_password}
    worker = client.post("/api/v1/auth/login", json=login).get_json()["user"]
    assert worker["village_id"] == str(villages[0]["id"])


def test_seed_demo_puts_back_a_demo_account_that_was_changed(settings, db, outbox_rows):
    run_command("seed-demo", [], settings)
    with db.transaction() as session:
        session.scalars(sa.select(User).where(User.username == "area01")).one().roles = ["resident"]
    before = len(outbox_rows("account.upserted"))

    run_command("seed-demo", [], settings)

    events = outbox_rows("account.upserted")
    assert len(events) == before + 1
    assert events[-1]["envelope"]["data"]["username"] == "area01"
    assert events[-1]["envelope"]["data"]["roles"] == ["area_leader"]


def test_seed_demo_refuses_to_run_in_production(settings, db, capsys):
    production = settings.model_copy(update={"app_env": "production", "wechat_mode": "real"})

    code = run_command("seed-demo", [], production)

    assert code == 2
    assert "生产环境不能写入演示数据" in capsys.readouterr().err
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Village)).scalar_one() == 0


def test_announce_accounts_sends_every_account_again(settings, make_user, outbox_rows, capsys):
    staff, _ = make_user(roles=["grid_worker"], name="王网格")
    resident, _ = make_user(name="张大爷")

    assert run_command("announce-accounts", [], settings) == 0

    announced = {row["envelope"]["data"]["user_id"] for row in outbox_rows("account.upserted")}
    assert announced == {str(staff.id), str(resident.id)}
    assert "2 accounts announced" in capsys.readouterr().out
