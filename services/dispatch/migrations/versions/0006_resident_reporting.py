"""resident reporting: the report's contact phone (for callbacks), who submitted it on the
resident's behalf (代办), and the resident's urging (催办)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.db

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.add_column(sa.Column("contact_name", sa.String(64), nullable=True))
        batch.add_column(sa.Column("contact_phone", sa.String(32), nullable=True))
        batch.add_column(sa.Column("submitted_by", sa.Uuid(), nullable=True))
        batch.add_column(
            sa.Column("urge_count", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("last_urged_at", shared.db.UTCDateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.drop_column("last_urged_at")
        batch.drop_column("urge_count")
        batch.drop_column("submitted_by")
        batch.drop_column("contact_phone")
        batch.drop_column("contact_name")
