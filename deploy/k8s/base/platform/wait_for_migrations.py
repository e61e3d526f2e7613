"""Wait until a service's database is at its Alembic head (init container of web and worker).

The migration Job (`python -m <service> migrate`) is the only writer of the schema; the web and
worker pods of a new release start only once the database carries every revision the image
knows, so no pod runs new code on an old schema.

    python wait_for_migrations.py intake     # DATABASE_URL from the environment

Exit 0 when the database is at head, 1 when `MIGRATIONS_WAIT_SECONDS` (600) pass first.
等待数据库迁移完成：迁移任务完成前，新版本的 web 与 worker 不启动。
"""

from __future__ import annotations

import os
import sys
import time

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from shared.migrations import alembic_config


def sqlalchemy_url(url: str) -> str:
    """The services' own rule: ``postgresql://`` means psycopg 3."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def missing_revisions(service: str, url: str) -> set[str]:
    """The head revisions of the service's scripts that the database does not carry yet."""
    heads = set(ScriptDirectory.from_config(alembic_config(service, url)).get_heads())
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()
    return heads - current


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: wait_for_migrations.py SERVICE", file=sys.stderr)
        return 2
    service = argv[1]
    url = sqlalchemy_url(os.environ["DATABASE_URL"])
    deadline = time.monotonic() + float(os.environ.get("MIGRATIONS_WAIT_SECONDS", "600"))
    delay = 1.0
    while True:
        try:
            missing = missing_revisions(service, url)
            reason = f"waiting for revisions {sorted(missing)}"
        except sa.exc.SQLAlchemyError as error:
            missing, reason = {"?"}, f"database not answering: {type(error).__name__}"
        if not missing:
            print(f"{service}: 数据库已是最新版本 / database at head", file=sys.stderr)
            return 0
        if time.monotonic() >= deadline:
            print(f"{service}: 等待数据库迁移超时 / gave up: {reason}", file=sys.stderr)
            return 1
        print(f"{service}: 等待数据库迁移 / {reason}", file=sys.stderr)
        time.sleep(delay)
        delay = min(delay * 2, 15.0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
