"""township departments: departments have a kind (township / county) and staff members

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.db

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WORKING = "state IN ('assigned', 'in_progress', 'reopened')"


def upgrade() -> None:
    with op.batch_alter_table("departments") as batch:
        # Every department known so far is a county department (the ledger's).
        batch.add_column(
            sa.Column("kind", sa.String(16), nullable=False, server_default=sa.text("'county'"))
        )
    op.create_table(
        "department_members",
        sa.Column("department_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("added_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["department_id"], ["departments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("department_id", "user_id"),
    )
    op.create_index(
        "ix_department_members_user_id", "department_members", ["user_id"], unique=False
    )
    op.create_index(
        "ix_issues_department",
        "issues",
        ["department_id", "due_at", "id"],
        unique=False,
        postgresql_where=sa.text(WORKING),
        sqlite_where=sa.text(WORKING),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_issues_department",
        table_name="issues",
        postgresql_where=sa.text(WORKING),
        sqlite_where=sa.text(WORKING),
    )
    op.drop_index("ix_department_members_user_id", table_name="department_members")
    op.drop_table("department_members")
    with op.batch_alter_table("departments") as batch:
        batch.drop_column("kind")
