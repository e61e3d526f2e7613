"""Alembic, once per service: each service has ``services/<svc>/migrations`` and its own history.

``env.py`` of a service is two lines::

    from intake.models import Base
    from shared.migrations import run_env
    run_env(Base.metadata)
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command, context
from alembic.config import Config

from shared.settings import PROJECT_ROOT


def service_dir(service: str) -> Path:
    return PROJECT_ROOT / "services" / service


def alembic_config(service: str, url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(service_dir(service) / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["service"] = service
    return config


def upgrade(service: str, url: str, revision: str = "heads") -> None:
    """Bring the service's database to ``revision`` (run before the web and worker start)."""
    command.upgrade(alembic_config(service, url), revision)


def autogenerate(service: str, url: str, message: str, rev_id: str | None = None) -> None:
    command.revision(
        alembic_config(service, url), message=message, autogenerate=True, rev_id=rev_id
    )


def run_env(metadata: sa.MetaData) -> None:
    """The body of every service's ``migrations/env.py`` (online mode only)."""
    config = context.config
    url = config.get_main_option("sqlalchemy.url")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            user_module_prefix="shared.db.",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
