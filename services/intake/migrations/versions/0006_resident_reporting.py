"""resident reporting: a confirmed contact phone on accounts; who submitted a report on a
resident's behalf (代办), and how often and when the resident urged it (催办)

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
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("contact_phone", sa.String(32), nullable=True))
        batch.add_column(sa.Column("contact_phone_source", sa.String(16), nullable=True))
        batch.add_column(
            sa.Column("contact_phone_confirmed_at", shared.db.UTCDateTime(timezone=True))
        )
    with op.batch_alter_table("issues") as batch:
        batch.add_column(sa.Column("submitted_by", sa.Uuid(), nullable=True))
        batch.add_column(
            sa.Column("urge_count", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("last_urged_at", shared.db.UTCDateTime(timezone=True)))
        batch.create_index("ix_issues_submitted_by", ["submitted_by", "reported_at"])


def downgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.drop_index("ix_issues_submitted_by")
        batch.drop_column("last_urged_at")
        batch.drop_column("urge_count")
        batch.drop_column("submitted_by")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("contact_phone_confirmed_at")
        batch.drop_column("contact_phone_source")
        batch.drop_column("contact_phone")
