"""Backups: ``deploy/backup/backup.sh`` dumps a real migrated intake database holding a report,
``deploy/backup/restore.sh`` restores the dump into an empty database owned by the service's own
role, and intake's web process (the real gunicorn command) starts on the restored database and
answers the report to the same resident. A non-empty target is refused.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from urllib.parse import urlsplit

import requests

from tests.deploy.conftest import ROOT, require_tool
from tests.e2e.harness import Harness, ServiceSpec

INTAKE = ServiceSpec("intake", processes=("web",), env={"WECHAT_MODE": "dev"})


def _libpq_env(url: str) -> dict[str, str]:
    parts = urlsplit(url.replace("postgresql+psycopg://", "postgresql://"))
    env = dict(os.environ)
    env.update(
        PGHOST=parts.hostname or "127.0.0.1",
        PGPORT=str(parts.port or 5432),
        PGUSER=parts.username or "postgres",
        PGPASSWORD=parts.password or "",
    )
    return env


def _sh(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(ROOT / "deploy" / "backup" / script), *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_dump_restored_into_an_empty_database_serves_the_same_report(
    tmp_path, rabbit_server, migrated_database, jwt_keys
):
    for tool in ("pg_dump", "pg_restore", "psql"):
        require_tool(tool)
    source_url = migrated_database("intake", prefix="gw_backup_src")
    vhost = rabbit_server.create_vhost("backup")
    source = Harness(tmp_path / "source", lambda _s: source_url, vhost, jwt_keys, specs=(INTAKE,))
    try:
        source.command("intake", "seed-demo", timeout=120)
        source.start_all()
        base = source.url("intake")
        token = requests.post(
            base + "/api/v1/auth/wechat", json={"code": "backup-resident"}, timeout=15
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        village_id = requests.get(base + "/api/v1/villages", timeout=15).json()
        village_id = (village_id["items"] if isinstance(village_id, dict) else village_id)[0]["id"]
        created = requests.post(
            base + "/api/v1/issues",
            json={"category": "other", "description": "备份前的诉求，恢复后要还在。",
                  "village_id": village_id, "address": "村委会"},
            headers=headers, timeout=15,
        )  # fmt: skip
        assert created.status_code == 201, created.text
        issue_id = created.json()["id"]
    finally:
        source.stop_all()

    env = _libpq_env(source_url)
    source_db = urlsplit(source_url).path.lstrip("/")
    backups = tmp_path / "backups"
    dumped = _sh(
        "backup.sh", env={**env, "SERVICE365_DATABASES": source_db, "BACKUP_DIR": str(backups)}
    )
    assert dumped.returncode == 0, dumped.stderr
    (dump,) = backups.glob(f"{source_db}-*.dump")
    assert dump.stat().st_size > 0

    # The restored database belongs to a role of its own, like intake's role in compose.
    tag = uuid.uuid4().hex[:8]
    owner, target = f"gw_backup_owner_{tag}", f"gw_backup_dst_{tag}"
    psql = [require_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"]
    subprocess.run([*psql, "-c", f"CREATE ROLE {owner} LOGIN"], env=env, check=True, timeout=30)
    try:
        restored = _sh("restore.sh", str(dump), target, owner, env=env)
        assert restored.returncode == 0, restored.stderr
        assert "恢复完成" in restored.stdout
        owners = subprocess.run(
            [require_tool("psql"), "-X", "-tA", "-d", target, "-c",
             "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"],
            env=env, capture_output=True, text=True, check=True, timeout=30,
        ).stdout.split()  # fmt: skip
        assert owners == [owner]

        again = _sh("restore.sh", str(dump), target, owner, env=env)
        assert again.returncode == 3 and "不是空的" in again.stderr

        target_url = source_url.rsplit("/", 1)[0] + "/" + target
        restored_intake = Harness(
            tmp_path / "restored", lambda _s: target_url, vhost, jwt_keys, specs=(INTAKE,)
        )
        try:
            restored_intake.command("intake", "migrate")  # already at head: nothing to do
            restored_intake.start_all()  # waits for /readyz 200
            read = requests.get(
                restored_intake.url("intake") + f"/api/v1/issues/{issue_id}",
                headers=headers, timeout=15,
            )  # fmt: skip
            assert read.status_code == 200, read.text
            assert read.json()["description"] == "备份前的诉求，恢复后要还在。"
        finally:
            restored_intake.stop_all()
    finally:
        subprocess.run([*psql, "-c", f"DROP DATABASE IF EXISTS {target}"], env=env, timeout=30)
        subprocess.run([*psql, "-c", f"DROP ROLE IF EXISTS {owner}"], env=env, timeout=30)
