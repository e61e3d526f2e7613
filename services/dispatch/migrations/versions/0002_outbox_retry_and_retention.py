"""outbox: retry time for unroutable events; indexes for the retention purge

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 22:40:00
"""

from collections.abc import Sequence

from alembic import op

import shared.db

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    shared.db.upgrade_plumbing_0002(op)


def downgrade() -> None:
    shared.db.downgrade_plumbing_0002(op)
