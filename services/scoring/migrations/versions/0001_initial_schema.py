"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28 23:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.db

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    shared.db.create_plumbing_tables(op)
    shared.db.upgrade_plumbing_0002(op)
    op.create_table(
        "assignments",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("issue_id", sa.Uuid(), nullable=False),
        sa.Column("assignee_id", sa.Uuid(), nullable=False),
        sa.Column("assigned_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("responded", sa.Boolean(), nullable=False),
        sa.Column("period_month", sa.String(length=7), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index(
        op.f("ix_assignments_assignee_id"), "assignments", ["assignee_id"], unique=False
    )
    op.create_index(
        "ix_assignments_issue_assignee", "assignments", ["issue_id", "assignee_id"], unique=False
    )
    op.create_index(
        op.f("ix_assignments_period_month"), "assignments", ["period_month"], unique=False
    )
    op.create_table(
        "board_publications",
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("published_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("period"),
    )
    op.create_table(
        "issues",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("ticket_no", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=True),
        sa.Column("level", sa.String(length=16), nullable=True),
        sa.Column("assignee_id", sa.Uuid(), nullable=True),
        sa.Column("grid_id", sa.Uuid(), nullable=True),
        sa.Column("village_id", sa.Uuid(), nullable=True),
        sa.Column("grid_leader_id", sa.Uuid(), nullable=True),
        sa.Column("difficulty", sa.Integer(), nullable=True),
        sa.Column("due_at", shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("assigned_at", shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("started_at", shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolution_no", sa.Integer(), nullable=True),
        sa.Column("rating", sa.String(length=24), nullable=True),
        sa.Column("reopen_count", sa.Integer(), nullable=False),
        sa.Column("callback_passed", sa.Boolean(), nullable=True),
        sa.Column("overdue_at", shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("closed_at", shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_issues_assignee_id"), "issues", ["assignee_id"], unique=False)
    op.create_table(
        "people",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("village_id", sa.Uuid(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("on_board", sa.Boolean(), nullable=False),
        sa.Column("account_known", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("tokens_valid_after", shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("grid_id", sa.Uuid(), nullable=True),
        sa.Column("grid_leader_id", sa.Uuid(), nullable=True),
        sa.Column("updated_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_people_grid_id"), "people", ["grid_id"], unique=False)
    op.create_index(op.f("ix_people_grid_leader_id"), "people", ["grid_leader_id"], unique=False)
    op.create_index(op.f("ix_people_village_id"), "people", ["village_id"], unique=False)
    op.create_table(
        "points_ledger",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("rule_code", sa.String(length=40), nullable=False),
        sa.Column("rule_version", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Uuid(), nullable=True),
        sa.Column("ticket_no", sa.String(length=32), nullable=True),
        sa.Column("resolution_no", sa.Integer(), nullable=True),
        sa.Column("source_event_id", sa.Uuid(), nullable=False),
        sa.Column("occurred_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("period_month", sa.String(length=7), nullable=False),
        sa.Column("created_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_event_id", "rule_code", name="uq_points_event_rule"),
    )
    op.create_index(op.f("ix_points_ledger_issue_id"), "points_ledger", ["issue_id"], unique=False)
    op.create_index(
        op.f("ix_points_ledger_period_month"), "points_ledger", ["period_month"], unique=False
    )
    op.create_index(
        "ix_points_user_time", "points_ledger", ["user_id", "occurred_at", "id"], unique=False
    )
    op.create_table(
        "resolutions",
        sa.Column("issue_id", sa.Uuid(), nullable=False),
        sa.Column("resolution_no", sa.Integer(), nullable=False),
        sa.Column("resolver_id", sa.Uuid(), nullable=False),
        sa.Column("difficulty", sa.Integer(), nullable=True),
        sa.Column("due_at", shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("on_time", sa.Boolean(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("rating", sa.String(length=24), nullable=True),
        sa.Column("reopened", sa.Boolean(), nullable=False),
        sa.Column("clawed_back", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("issue_id", "resolution_no"),
    )
    op.create_index(
        op.f("ix_resolutions_resolver_id"), "resolutions", ["resolver_id"], unique=False
    )
    op.create_table(
        "rules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=True),
        sa.Column("changed_by", sa.Uuid(), nullable=True),
        sa.Column("changed_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code", "effective_from"),
        sa.UniqueConstraint("code", "version"),
    )
    op.create_table(
        "score_totals",
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("resolved", sa.Integer(), nullable=False),
        sa.Column("resolved_on_time", sa.Integer(), nullable=False),
        sa.Column("rated", sa.Integer(), nullable=False),
        sa.Column("satisfied", sa.Integer(), nullable=False),
        sa.Column("reopened", sa.Integer(), nullable=False),
        sa.Column("callbacks", sa.Integer(), nullable=False),
        sa.Column("callbacks_passed", sa.Integer(), nullable=False),
        sa.Column("assigned", sa.Integer(), nullable=False),
        sa.Column("responded", sa.Integer(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("period", "user_id"),
    )
    op.create_index(
        "ix_score_totals_board",
        "score_totals",
        [
            "period",
            sa.literal_column("points DESC"),
            sa.literal_column("resolved_on_time DESC"),
            "user_id",
        ],
        unique=False,
    )
    op.create_table(
        "villages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("area_leader_id", sa.Uuid(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("updated_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_villages_area_leader_id"), "villages", ["area_leader_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_villages_area_leader_id"), table_name="villages")
    op.drop_table("villages")
    op.drop_index("ix_score_totals_board", table_name="score_totals")
    op.drop_table("score_totals")
    op.drop_table("rules")
    op.drop_index(op.f("ix_resolutions_resolver_id"), table_name="resolutions")
    op.drop_table("resolutions")
    op.drop_index("ix_points_user_time", table_name="points_ledger")
    op.drop_index(op.f("ix_points_ledger_period_month"), table_name="points_ledger")
    op.drop_index(op.f("ix_points_ledger_issue_id"), table_name="points_ledger")
    op.drop_table("points_ledger")
    op.drop_index(op.f("ix_people_village_id"), table_name="people")
    op.drop_index(op.f("ix_people_grid_leader_id"), table_name="people")
    op.drop_index(op.f("ix_people_grid_id"), table_name="people")
    op.drop_table("people")
    op.drop_index(op.f("ix_issues_assignee_id"), table_name="issues")
    op.drop_table("issues")
    op.drop_table("board_publications")
    op.drop_index(op.f("ix_assignments_period_month"), table_name="assignments")
    op.drop_index("ix_assignments_issue_assignee", table_name="assignments")
    op.drop_index(op.f("ix_assignments_assignee_id"), table_name="assignments")
    op.drop_table("assignments")
    shared.db.downgrade_plumbing_0002(op)
    shared.db.drop_plumbing_tables(op)
