"""revisions: staff keep the account revision they applied; villages count their announcements

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("staff") as batch:
        # NULL: no revision known yet, so the next account.upserted is taken whatever it says.
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=True))
    with op.batch_alter_table("villages") as batch:
        batch.add_column(
            sa.Column("revision", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("villages") as batch:
        batch.drop_column("revision")
    with op.batch_alter_table("staff") as batch:
        batch.drop_column("revision")
