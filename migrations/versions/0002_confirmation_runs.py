"""Confirmation: a kind per slot, and the runs that re-train candidates with fresh seeds.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tuner_trial_slots") as batch:
        batch.add_column(sa.Column("kind", sa.String(8), nullable=False,
                                   server_default="search"))
    op.create_table(
        "tuner_confirm_runs",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("candidate", sa.Integer(), nullable=False),
        sa.Column("is_baseline", sa.Boolean(), nullable=False),
        sa.Column("source_trial", sa.Integer(), nullable=True),
        sa.Column("search_value", sa.Float(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["tuner_jobs.id"], ondelete="CASCADE",
            name="fk_tuner_confirm_runs_job_id_tuner_jobs",
        ),
        sa.PrimaryKeyConstraint("job_id", "slot", name="pk_tuner_confirm_runs"),
    )


def downgrade() -> None:
    op.drop_table("tuner_confirm_runs")
    with op.batch_alter_table("tuner_trial_slots") as batch:
        batch.drop_column("kind")
