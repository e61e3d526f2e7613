"""versions and revisions: the read model keeps dispatch's issue version; accounts count their
announcements and keep when their tokens stopped counting; villages keep dispatch's revision

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.db

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("revision", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(
            sa.Column("tokens_valid_after", shared.db.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("villages") as batch:
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=True))
    with op.batch_alter_table("issues") as batch:
        batch.add_column(sa.Column("dispatch_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.drop_column("dispatch_version")
    with op.batch_alter_table("villages") as batch:
        batch.drop_column("revision")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("tokens_valid_after")
        batch.drop_column("revision")
