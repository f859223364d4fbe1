"""Jobs and their trial slots.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tuner_jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("study_name", sa.String(100), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tuner_jobs"),
        sa.UniqueConstraint("study_name", name="uq_tuner_jobs_study_name"),
    )
    op.create_index("ix_tuner_jobs_status", "tuner_jobs", ["status"])
    op.create_table(
        "tuner_trial_slots",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=True),
        sa.Column("task_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["tuner_jobs.id"], ondelete="CASCADE",
            name="fk_tuner_trial_slots_job_id_tuner_jobs",
        ),
        sa.PrimaryKeyConstraint("job_id", "slot", name="pk_tuner_trial_slots"),
    )
    op.create_index("ix_tuner_trial_slots_state", "tuner_trial_slots", ["state"])


def downgrade() -> None:
    op.drop_index("ix_tuner_trial_slots_state", table_name="tuner_trial_slots")
    op.drop_table("tuner_trial_slots")
    op.drop_index("ix_tuner_jobs_status", table_name="tuner_jobs")
    op.drop_table("tuner_jobs")
